"""ONNX Runtime: the reference target (CPU execution provider; CUDA where present).

The artifact is the graph-optimized model ONNX Runtime writes for the chosen
provider at the extended level (constant folding, Conv+activation fusions). The
layout level (NCHWc blocking) is applied when the artifact is loaded, not saved:
ONNX Runtime itself warns that a saved layout-optimized model is tied to the
machine that wrote it, and its node names differ from run to run, which would
break byte-identical builds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..api.request import BuildRequest
from ..api.target import Artifact, Availability, CompileContext, CompileResult, Session, Target
from ..core.errors import InputError
from ..core.host import package_version
from ..onnxtools.run import onnx_feed

PROVIDERS = {"CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider"}
OPTIMIZED_MODEL = "model.optimized.onnx"


class OnnxRuntimeSession(Session):
    def __init__(self, session: Any) -> None:
        self._session = session
        self._feed = onnx_feed(session)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) for o in self._session.run(None, self._feed(x))]


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    description = "ONNX Runtime, the reference target (CPU; CUDA where present)"
    precisions = ("fp32", "fp16", "int8")
    devices = ("CPU", "CUDA")
    packages = ("onnxruntime",)

    def availability(self) -> Availability:
        version = package_version("onnxruntime") or package_version("onnxruntime-gpu")
        if version is None:
            return Availability(False, None, "onnxruntime is not installed: pip install onnxruntime")
        import onnxruntime as ort

        providers = ort.get_available_providers()
        devices = tuple(d for d, p in PROVIDERS.items() if p in providers)
        return Availability(True, version, "", devices)

    def onnx_form(self, precision: str):
        return {"fp16": "fp16", "int8": "int8-qdq"}.get(precision, "fp32")

    def check_request(self, request: BuildRequest) -> None:
        if request.precision not in self.precisions:
            raise InputError(f"onnxruntime builds {', '.join(self.precisions)}, not {request.precision}")
        device = request.options.device or self.default_device()
        available = self.availability().devices
        if device not in available:
            raise InputError(f"onnxruntime has no {device} provider here (available: {', '.join(available)})")

    @staticmethod
    def _session(model: Path, device: str, optimize_to: Path | None) -> Any:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if optimize_to is None:  # running: add the machine-specific layout optimizations
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        else:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            options.optimized_model_filepath = str(optimize_to)
        return ort.InferenceSession(str(model), options, providers=[PROVIDERS[device]])

    def compile(self, ctx: CompileContext) -> CompileResult:
        device = ctx.request.options.device or self.default_device()
        self._session(ctx.onnx_path, device, optimize_to=ctx.build_dir / OPTIMIZED_MODEL)
        ctx.log.info("onnxruntime: wrote %s for %s", OPTIMIZED_MODEL, PROVIDERS[device])
        return CompileResult([Artifact(OPTIMIZED_MODEL, "onnxruntime-optimized", primary=True)],
                             facts={"provider": PROVIDERS[device], "graph_optimization": "ORT_ENABLE_EXTENDED"})

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        device = manifest["target"]["device"]
        return OnnxRuntimeSession(self._session(build_dir / OPTIMIZED_MODEL, device, optimize_to=None))
