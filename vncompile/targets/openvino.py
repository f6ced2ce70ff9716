"""OpenVINO: IR (``model.xml`` / ``model.bin``) compiled for an Intel CPU, GPU or NPU.

The inference precision hint is pinned to the requested precision: OpenVINO's CPU
plugin otherwise picks bf16 on CPUs that have it (an error of ~5e-4 that would
fail fp32 verification), and silently substitutes bf16 for an f16 hint on CPUs
without fp16 arithmetic, which we refuse instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..api.request import BuildRequest
from ..api.target import Artifact, Availability, CompileContext, CompileResult, Session, Target, facts
from ..core.errors import InputError, VerificationError
from ..core.host import package_version

# Int8 lives in the graph as Q/DQ nodes; what is not quantized computes in f32.
PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
CAPABILITY = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8"}
IR_XML, IR_BIN = "model.xml", "model.bin"


class OpenVinoSession(Session):
    def __init__(self, compiled: Any) -> None:
        self._request = compiled.create_infer_request()
        self._outputs = compiled.outputs

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        results = self._request.infer({0: x})
        return [np.asarray(results[o], dtype=np.float32) for o in self._outputs]


class OpenVinoTarget(Target):
    name = "openvino"
    description = "Intel OpenVINO IR for CPU, GPU or NPU"
    precisions = ("fp32", "fp16", "bf16", "int8")
    devices = ("CPU", "GPU", "NPU")
    packages = ("openvino",)

    def availability(self) -> Availability:
        version = package_version("openvino")
        if version is None:
            return Availability(False, None, "OpenVINO is not installed: pip install 'vncompile[openvino]'")
        import openvino as ov

        return Availability(True, version, "", tuple(ov.Core().available_devices))

    def check_request(self, request: BuildRequest) -> None:
        import openvino as ov

        core = ov.Core()
        device = request.options.device or self.default_device()
        available = core.available_devices
        if not any(d == device or d.startswith(device + ".") for d in available):
            raise InputError(f"OpenVINO has no {device} device here (available: {', '.join(available)})")
        needed = CAPABILITY.get(request.precision)
        if needed and needed not in core.get_property(device, "OPTIMIZATION_CAPABILITIES"):
            name = core.get_property(device, "FULL_DEVICE_NAME")
            raise InputError(f"OpenVINO {device} ({name}) has no {request.precision} arithmetic "
                             f"(it would run another precision); choose another --precision or --device")

    def compile(self, ctx: CompileContext) -> CompileResult:
        import openvino as ov

        model = ov.convert_model(str(ctx.onnx_path))
        ov.save_model(model, str(ctx.build_dir / IR_XML), compress_to_fp16=ctx.request.precision == "fp16")
        hint = PRECISION_HINTS[ctx.request.precision]
        ctx.log.info("openvino: wrote %s/%s (inference precision hint %s)", IR_XML, IR_BIN, hint)
        return CompileResult([Artifact(IR_XML, "openvino-xml", primary=True), Artifact(IR_BIN, "openvino-bin")],
                             facts={"inference_precision_hint": hint, "performance_hint": "LATENCY"})

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        import openvino as ov

        hint = facts(manifest)["inference_precision_hint"]
        compiled = ov.Core().compile_model(
            str(build_dir / IR_XML), manifest["target"]["device"],
            {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"},
        )
        effective = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if effective != hint:
            raise VerificationError(f"OpenVINO compiled for {effective}, not the requested {hint}")
        return OpenVinoSession(compiled)
