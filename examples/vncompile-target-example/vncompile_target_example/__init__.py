"""A complete third-party vncompile target: ONNX Runtime's graph optimizations applied offline.

``--target ort-offline`` writes ``model.ort.onnx``, the graph ONNX Runtime itself optimized at the
level its own option ``--ort-level`` names (the graph a device then loads without optimizing again),
and runs it for verification and profiling. What it shows a target author:

- ``own_options``: a frozen dataclass of ``vncompile.core.schema.setting`` fields. Each declares its
  command-line flag, help, how to parse it and what it affects (here the artifact: ``affects="build"``,
  so the build's cache key moves with it). vncompile derives the ``--ort-level`` flag, the device-config
  key ``options: {ort_level: ...}``, the refusal by other targets and the cache key from it.
- ``check_request(request, own)``: refuse what the target cannot honour, in one line, before any work.
- ``compile(ctx)``: write artifacts into ``ctx.build_dir``, exactly one of them primary; ``ctx.own`` is the
  typed options instance, ``ctx.request`` the request with its precision resolved.
- ``load(build_dir, manifest)``: a ``Session`` that runs one NCHW float32 batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vncompile.api.request import BuildRequest
from vncompile.api.target import Artifact, Availability, CompileContext, CompileResult, Session, Target, facts
from vncompile.core.errors import InputError
from vncompile.core.schema import OneOf, setting

ARTIFACT = "model.ort.onnx"
LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


@dataclass(frozen=True)
class OrtOfflineOptions:
    ort_level: str = setting(OneOf(tuple(LEVELS)), "extended", flag="--ort-level", affects="build",
                             help="ort-offline: the graph optimization level applied offline  [default: extended]")


class OrtOfflineSession(Session):
    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # optimized offline already
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) for o in self._session.run(None, {self._input: x})]


class OrtOfflineTarget(Target):
    name = "ort-offline"
    description = "ONNX Runtime graph optimized offline (a third-party example target)"
    precisions = ("fp32",)
    devices = ("CPU",)
    packages = ("onnxruntime",)  # its version keys the build cache
    own_options = OrtOfflineOptions

    def availability(self) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError:
            return Availability(False, None, "onnxruntime is not installed: pip install onnxruntime")
        return Availability(True, ort.__version__, "", self.devices)

    def check_request(self, request: BuildRequest, own: OrtOfflineOptions) -> None:
        if request.precision not in self.precisions:
            raise InputError(f"ort-offline builds fp32, not {request.precision}")

    def compile(self, ctx: CompileContext) -> CompileResult:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[ctx.own.ort_level])
        options.optimized_model_filepath = str(ctx.build_dir / ARTIFACT)
        ort.InferenceSession(str(ctx.onnx_path), options, providers=["CPUExecutionProvider"])
        ctx.log.info("ort-offline: optimized at level %s -> %s", ctx.own.ort_level, ARTIFACT)
        return CompileResult([Artifact(ARTIFACT, "onnx-optimized", primary=True)],
                             facts={"ort_level": ctx.own.ort_level, "onnxruntime": ort.__version__})

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        assert facts(manifest)["ort_level"] in LEVELS
        return OrtOfflineSession(build_dir / ARTIFACT)
