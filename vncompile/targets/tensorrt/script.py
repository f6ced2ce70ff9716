"""The deferred bundle's ``build_engine.sh``: the trtexec command equivalent to what ``compile`` builds."""

from __future__ import annotations

import shlex

from ... import __version__
from ...api.request import BuildRequest
from .profile import INPUT_NAME, Shape4, ShapeProfile, TensorRTOptions

ENGINE, SCRIPT, ONNX = "model.engine", "build_engine.sh", "model.onnx"


def _dims(shape: Shape4) -> str:
    return "x".join(map(str, shape))


def trtexec_arguments(request: BuildRequest, own: TensorRTOptions, profile: ShapeProfile | None) -> list[str]:
    """trtexec's flags for what ``compile`` builds with the Python API (TensorRT 10 and 11 both take them)."""
    arguments = [f"--onnx={ONNX}", f"--saveEngine={ENGINE}", "--stronglyTyped"]  # 11 ignores it: always typed
    if request.precision == "fp32":
        arguments.append("--noTF32")
    if own.workspace_mb is not None:
        # no unit suffix: every trtexec from 10.0 to 11.x reads a bare number as MiB, while 10.0.x applied
        # a suffix and then read the product as MiB again (256M: a 256 TiB limit)
        arguments.append(f"--memPoolSize=workspace:{own.workspace_mb}")
    if profile is not None:
        arguments += [f"--{kind}Shapes={INPUT_NAME}:{_dims(shape)}"
                      for kind, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max))]
    return [*arguments, "--skipInference"]


PRECISION_NOTES = {
    "fp32": "fp32 weights and compute; --noTF32 keeps convolutions in full fp32",
    "fp16": "fp16 weights and compute, as the ONNX holds them",
    "int8": "int8 as the ONNX's Q/DQ nodes, from calibration",
}


def build_script(request: BuildRequest, own: TensorRTOptions, profile: ShapeProfile | None,
                 outputs: list[str] | None = None) -> str:
    """``build_engine.sh``: only the request decides its text (the timing cache is the runner's, by name);
    ``outputs``: the ONNX's output names (a backbone's maps), which the engine keeps as its bindings."""
    command = " ".join(['exec "$TRTEXEC"', *map(shlex.quote, trtexec_arguments(request, own, profile)),
                        '"--timingCacheFile=$TIMING_CACHE"'])
    shapes = (f"min {_dims(profile.min)}, opt {_dims(profile.opt)}, max {_dims(profile.max)}" if profile
              else f"static {request.shape.label}")
    return "\n".join([
        "#!/bin/sh",
        f"# Builds {ENGINE} from {ONNX} with trtexec (TensorRT 10 or 11) on the device that will run it:",
        "# an engine runs only on the GPU model and TensorRT version that built it.",
        f"# Written by vncompile {__version__}: {request.precision} ({PRECISION_NOTES[request.precision]});",
        f"# input '{INPUT_NAME}' {shapes}. TensorRT 10 keeps the ONNX's types with --stronglyTyped;",
        "# TensorRT 11 networks are always strongly typed and it ignores the flag.",
        *([f"# outputs (the engine's output bindings, as the ONNX names them): {', '.join(outputs)}."]
          if outputs else []),
        "# TRTEXEC: the trtexec binary (default: trtexec on PATH).",
        "# TIMING_CACHE: a timing cache file reused across builds (default, and relative to: this directory).",
        "# A timing cache holds one GPU model's timings for one TensorRT version: keep one per kind of device",
        "# (e.g. TIMING_CACHE=orin-trt10.cache); trtexec does not refuse another GPU's cache.",
        "set -eu",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-trtexec}"',
        'TIMING_CACHE="${TIMING_CACHE:-timing.cache}"',
        'command -v "$TRTEXEC" >/dev/null 2>&1 || { echo "build_engine.sh: $TRTEXEC not found: install TensorRT'
        ' or set TRTEXEC" >&2; exit 127; }',
        command,
        "",
    ])
