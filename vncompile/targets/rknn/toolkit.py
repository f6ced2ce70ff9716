"""Talking to rknn-toolkit2: the settings a build asks for, the worker's requests, a compile, and the
calibration dataset file.

rknn-toolkit2 pins numpy<=1.26.4, onnx<=1.18 and torch<=2.4, so it lives in its own environment
(``vncompile toolchain install rknn``) and is driven through a worker process
(``vncompile.toolchains``); nothing here imports it. Both precisions hand the toolkit the fp32
ONNX: it converts to fp16 itself, and for int8 it quantizes itself from the calibration inputs
(our Q/DQ graph would be a second, different quantization). The ONNX takes normalized inputs,
so the toolkit's own mean/std stay at 0/1.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...api.options import SYNTHETIC, TargetOptions
from ...api.request import BuildRequest, InputShape
from ...api.target import facts
from ...core.errors import VerificationError, VncompileError
from ...core.schema import Text, setting
from ...data.calibration import calibration_samples
from ...data.preprocess import preprocessing_from
from ...toolchains import Worker, WorkerReply, WorkerRequestFailed
from .compiler_output import CompilerReport, parse_layer_table, parse_memory_plan
from .platforms import DEFAULT_PLATFORM

RKNN_MODEL = "model.rknn"
BUILD_TIMEOUT_S, RUN_TIMEOUT_S = 3600.0, 600.0
TOOLKIT_ERROR = re.compile(r"^E (\w+): (.+)$")


@dataclass(frozen=True)
class RknnOptions:
    """The rknn target's own options (``Target.own_options``)."""

    platform: str | None = setting(Text("a platform name such as rk3588"), None, flag="--platform",
                                   help="rknn: Rockchip SoC (rk3588, rk3576, rk3568, rk3566, rk3562, rv1106, ...)  "
                                        "[default: rk3588]")
    quant_algorithm: str | None = setting(Text("a quantization algorithm name"), None, flag="--quant-algorithm",
                                          help="rknn int8: normal | mmse | kl_divergence")
    board: str | None = setting(Text("a board's device id"), None, flag="--rknn-target",
                                help="rknn: a connected board's device id, to measure on it")


@dataclass(frozen=True)
class RknnSettings:
    """What a build asks the toolkit for; recorded in the manifest so ``load`` can ask again."""

    platform: str
    precision: str
    quant_algorithm: str | None  # int8 only

    @classmethod
    def of_request(cls, request: BuildRequest, own: RknnOptions) -> RknnSettings:
        int8 = request.precision == "int8"
        return cls(own.platform or DEFAULT_PLATFORM, request.precision,
                   (own.quant_algorithm or "normal") if int8 else None)

    @classmethod
    def of_manifest(cls, manifest: dict[str, Any]) -> RknnSettings:
        recorded = facts(manifest)
        return cls(recorded["platform"], manifest["target"]["precision"], recorded.get("quant_algorithm"))


def request(worker: Worker, op: str, args: dict[str, Any] | None = None,
            timeout: float = RUN_TIMEOUT_S) -> WorkerReply:
    """One request to the toolkit's worker; a failure in the toolkit's own words (``toolkit_failure``)."""
    try:
        return worker.request(op, args, timeout=timeout)
    except WorkerRequestFailed as exc:
        raise toolkit_failure(exc) from None


def toolkit_failure(exc: WorkerRequestFailed) -> VncompileError:
    """A failed request in the toolkit's own words: the reason it logged (``E build: ...``) when it
    returned an error code, else the last line of the exception it raised (its log line is then
    only the word 'Traceback')."""
    said = [m for m in map(TOOLKIT_ERROR.match, (line.strip() for line in exc.output))
            if m and not m.group(2).startswith("Traceback")]
    step, reason = (said[-1].group(1), said[-1].group(2)) if said else (exc.op, exc.error)
    return VncompileError(f"rknn-toolkit2 failed to {step}: {reason}")


def compile_onnx(worker: Worker, onnx: Path, settings: RknnSettings, dataset: Path | None,
                 export: Path | None) -> CompilerReport:
    """Build ``onnx`` (and write the .rknn to ``export``). The toolkit reads and writes only paths inside
    the worker's directory, the same length for everyone: their lengths move its heap, whose addresses
    end up in the .rknn (see ``toolchains.worker``). ``dataset`` is written there already."""
    assert worker.scratch is not None, "start_worker gives every toolchain worker its directory"
    model, exported = worker.scratch / "model.onnx", worker.scratch / RKNN_MODEL
    shutil.copyfile(onnx, model)
    reply = request(worker, "build", {"onnx": str(model), "platform": settings.platform,
                                      "quantize": settings.precision == "int8",
                                      "quant_algorithm": settings.quant_algorithm,
                                      "dataset": None if dataset is None else str(dataset),
                                      "export": None if export is None else str(exported)}, BUILD_TIMEOUT_S)
    if export is not None:
        shutil.move(exported, export)
    layers = parse_layer_table(reply.output)
    if not layers:
        raise VncompileError("rknn-toolkit2 printed no per-layer table ('Network Layer Information Table'); "
                             "its output is in build.log")
    return CompilerReport(parse_memory_plan(reply.output), layers)


def write_dataset(samples: np.ndarray, batch: int, directory: Path) -> Path:
    """The toolkit's calibration list: one .npy per input batch, NCHW with the batch axis, as it requires."""
    count = max(1, len(samples) // batch)
    paths = []
    for i in range(count):
        chunk = samples[i * batch:(i + 1) * batch]
        if len(chunk) < batch:  # fewer samples than one batch: repeat them
            chunk = np.resize(chunk, (batch, *chunk.shape[1:]))
        path = directory / f"calibration_{i:04d}.npy"
        np.save(path, np.ascontiguousarray(chunk, dtype=np.float32))
        paths.append(str(path))
    dataset = directory / "dataset.txt"
    dataset.write_text("\n".join(paths) + "\n")
    return dataset


def calibration_identity(samples: np.ndarray, options: TargetOptions) -> dict[str, Any]:
    """What the simulator needs to quantize again with the same set: where it came from, how many, the
    preprocessing, and the samples' hash (to refuse a set that changed since)."""
    real = options.calibration is not None and options.calibration != SYNTHETIC
    return {"directory": str(Path(options.calibration).resolve()) if real else None, "samples": len(samples),
            "preprocessing": options.preprocessing(),
            "sha256": hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()}


def recorded_calibration(manifest: dict[str, Any]) -> np.ndarray:
    """The build's calibration set again (the same sample of a directory, or the seeded synthetic set),
    checked by hash."""
    recorded = facts(manifest)["calibration"]
    directory = None if recorded["directory"] is None else Path(recorded["directory"])
    samples = calibration_samples(directory, InputShape(*manifest["input_shape"]), recorded["samples"],
                                  preprocessing=preprocessing_from(recorded.get("preprocessing", {})))
    digest = hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()
    if digest != recorded["sha256"]:
        raise VerificationError(f"the calibration set {directory or '(synthetic)'} changed since the build; the "
                                "simulator must quantize with the same one (rebuild with --force)")
    return samples
