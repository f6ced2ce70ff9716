"""LiteRT (TensorFlow Lite) for Android: a .tflite verified and measured on the LiteRT interpreter with XNNPACK.

The toolchain is the ethos-u one (``vncompile toolchain install ethos-u``: litert-torch, ai-edge-litert and
ai-edge-quantizer, pinned, with the CPU torch): its worker rebuilds the verified ONNX in torch node for node
and litert-torch converts it (fp32; fp16: float16 weights; int8: fully int8, quantized by litert-torch's PT2E
quantizer on the shared calibration set, symmetric per-channel weights), with NHWC input (``--input-layout``,
default) or NCHW. The interpreter runs it with XNNPACK, its default delegate on Android's CPU as here: the
operators XNNPACK leaves to the interpreter's own kernels are named in the build log and the manifest.
Latency and peak memory are measured here, on this x86 CPU (``interpreter``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...api.request import BuildRequest
from ...api.target import Artifact, Availability, CompileContext, CompileResult, OnnxForm, Session, Target, facts
from ...core.errors import InputError, VncompileError
from ...core.schema import OneOf, PositiveInt, setting
from ...toolchains import WorkerRequestFailed, get_spec, locate, missing_message, start_worker
from ..rebuilt import check_rebuilt
from .interpreter import LiteRtInterpreterSession

__all__ = ["LiteRtInterpreterSession", "LiteRtOptions", "LiteRtTarget"]

TOOLCHAIN = "ethos-u"  # litert-torch and the LiteRT interpreter live in the ethos-u toolchain's environment
CONVERT_TIMEOUT_S = 3600.0
LAYOUTS = ("nhwc", "nchw")
QUANTIZATION = {
    "fp32": "none: float32 weights and compute",
    "fp16": "float16 weights (ai-edge-quantizer float casting), float32 compute",
    "int8": "full-integer int8 (int8 input and output), PT2E symmetric, per-channel weights (litert-torch), "
            "calibrated on the shared calibration set",
}


@dataclass(frozen=True)
class LiteRtOptions:
    """The litert target's own options (``Target.own_options``)."""

    input_layout: str = setting(
        OneOf(LAYOUTS), "nhwc", flag="--input-layout",
        help="litert: the .tflite's input layout: nhwc (LiteRT's own; no transpose inside) or nchw  [default: nhwc]")
    threads: int = setting(
        PositiveInt("a positive number of threads"), 1, flag="--threads",
        help="litert: interpreter threads for verification and profiling (recorded)  [default: 1]")


def _toolchain_pin(distribution: str) -> str | None:
    """A package's version as the toolchain spec pins it."""
    pins = (r.split("==") for r in get_spec(TOOLCHAIN).requirements)
    return next((version for name, version in pins if name == distribution), None)


class LiteRtTarget(Target):
    name = "litert"
    description = ("LiteRT (TensorFlow Lite) for Android: .tflite from litert-torch, verified and measured on the "
                   "LiteRT interpreter with XNNPACK")
    precisions = ("fp32", "fp16", "int8")
    devices = ("CPU",)
    own_options = LiteRtOptions
    why_no_runtime_profiles = "the interpreter has no session settings vncompile chooses besides --threads"

    def availability(self) -> Availability:
        installed = locate(TOOLCHAIN)
        version = _toolchain_pin("ai-edge-litert")
        if not installed.installed:
            return Availability(False, version, f"needs litert-torch and the LiteRT interpreter: "
                                                f"{missing_message(installed)}")
        return Availability(True, version, "", self.devices)

    def cache_identity(self) -> dict[str, str | None]:
        return {"litert-toolchain": get_spec(TOOLCHAIN).fingerprint()}

    def onnx_form(self, precision: str) -> OnnxForm:
        return "fp32"  # fp16 weights and int8 are made in the toolchain, from the float graph

    def check_request(self, request: BuildRequest, own: LiteRtOptions) -> None:
        if request.precision not in self.precisions:
            raise InputError(f"litert builds fp32, fp16 (float16 weights) or int8 (full-integer), not "
                             f"{request.precision}")
        check_rebuilt(self.name, request, static_because="XNNPACK plans for one input size",
                      batch_1_because="a phone classifies one frame at a time")
        device = request.options.device
        if device not in (None, *self.devices):
            raise InputError(f"litert runs on the LiteRT interpreter's CPU (XNNPACK) here, not --device {device}")

    def compile(self, ctx: CompileContext) -> CompileResult:
        precision, own = ctx.request.precision, ctx.own
        assert precision is not None
        tflite_name = f"model_{precision}.tflite"
        with start_worker(TOOLCHAIN, ctx.log) as worker:
            assert worker.scratch is not None
            onnx, tflite = worker.scratch / "model.onnx", worker.scratch / tflite_name
            shutil.copyfile(ctx.onnx_path, onnx)
            args: dict[str, Any] = {"onnx": str(onnx), "output": str(tflite), "precision": precision,
                                    "layout": own.input_layout}
            if precision == "int8":
                assert ctx.calibration is not None, "the pipeline passes calibration inputs for int8"
                args["calibration"] = str(worker.scratch / "calibration.npy")
                np.save(args["calibration"], np.ascontiguousarray(ctx.calibration, dtype=np.float32))
            else:  # the converter traces one example input; its values do not matter
                args["example"] = str(worker.scratch / "example.npy")
                np.save(args["example"], np.zeros(ctx.request.shape.as_tuple(), dtype=np.float32))
            try:
                worker.request("convert", args, timeout=CONVERT_TIMEOUT_S)
                loaded = worker.request("load", {"tflite": str(tflite), "threads": own.threads,
                                                 "layout": own.input_layout}).result
            except WorkerRequestFailed as exc:
                raise VncompileError(f"litert could not convert the graph to a {precision} TFLite: {exc.error}") \
                    from None
            versions = dict(worker.facts)
            shutil.move(tflite, ctx.build_dir / tflite_name)
        cpu_ops = loaded["cpu_operators"]
        if cpu_ops:
            named = ", ".join(f"{op['op']} (node {op['index']})" for op in cpu_ops)
            ctx.log.warning("litert: XNNPACK leaves %d of %d operators to the interpreter's own kernels: %s",
                            len(cpu_ops), loaded["operators"], named)
        else:
            ctx.log.info("litert: XNNPACK takes all %d operators (%d partition(s))", loaded["operators"],
                         loaded["delegate_partitions"])
        info = {
            "input_layout": own.input_layout, "threads": own.threads, "input": loaded["inputs"][0],
            "outputs_tflite": loaded["outputs"], "quantization": QUANTIZATION[precision], "delegate": "XNNPACK",
            "xnnpack": {"operators": loaded["operators"], "partitions": loaded["delegate_partitions"],
                        "cpu_operators": cpu_ops,
                        "how": "each DELEGATE node of the interpreter's graph stands for the operators between its "
                               "inputs and outputs; the rest run on the interpreter's own kernels"},
            "toolkit": f"litert-torch {versions.get('litert_torch')}, ai-edge-litert {versions.get('ai_edge_litert')}",
            "verified_on": f"LiteRT interpreter, XNNPACK, x86 CPU, {own.threads} thread(s)",
        }
        return CompileResult([Artifact(tflite_name, f"tflite-{precision}", primary=True)], facts=info)

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        target = facts(manifest)
        return LiteRtInterpreterSession.open(build_dir / f"model_{manifest['target']['precision']}.tflite",
                                             threads=target["threads"], layout=target["input_layout"])
