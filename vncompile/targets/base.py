"""The target plugin protocol: what every backend tells and does.

A target says whether it can run here (and why not), which ONNX it wants for a
precision, compiles that ONNX into its artifacts in a build directory, and loads
them back into a ``Session`` that runs one input. Third parties register a
``Target`` subclass under the ``vncompile.targets`` entry-point group.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from ..pipeline.request import BuildRequest, TargetOptions

OnnxForm = Literal["fp32", "fp16", "int8-qdq"]
MemorySource = Literal["measured", "compiler", "estimated"]


@dataclass(frozen=True)
class Availability:
    available: bool
    version: str | None = None
    reason: str = ""  # why not, with the command that fixes it
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to the build directory
    role: str  # e.g. "onnx", "openvino-xml", "engine", "rknn"


@dataclass(frozen=True)
class CompileResult:
    artifacts: list[Artifact]
    status: Literal["ok", "deferred"] = "ok"  # deferred: the artifact is built on the device itself
    info: dict[str, Any] = field(default_factory=dict)  # target facts for the manifest
    notice: str = ""  # one line for the user (e.g. why a build was deferred)


@dataclass(frozen=True)
class MemoryFigure:
    """Max memory in KB and where the figure comes from."""

    max_kb: float
    source: MemorySource
    weights_kb: float | None = None
    activations_kb: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class LatencyFigure:
    """Latency samples in ms, when a target estimates rather than times (e.g. NPU cycles)."""

    samples_ms: list[float]
    source: Literal["measured", "estimated"]
    detail: str = ""


class Session(Protocol):
    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run one input batch (NCHW float32) and return the outputs as float32 arrays."""
        ...


@dataclass
class CompileContext:
    onnx_path: Path  # the target-ready ONNX (already in the form ``onnx_form`` asked for)
    build_dir: Path  # write artifacts here; paths in ``Artifact`` are relative to it
    request: BuildRequest
    log: logging.Logger
    calibration: np.ndarray | None = None  # int8: preprocessed NCHW samples


class Target(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    devices: ClassVar[tuple[str, ...]] = ("CPU",)
    packages: ClassVar[tuple[str, ...]] = ()  # distributions whose versions key the build cache
    executes: ClassVar[bool] = True  # False: nothing to run (the analytic memory planner)

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Cheap: whether the toolchain imports and has a device, without building anything."""

    def onnx_form(self, precision: str) -> OnnxForm:
        """Which ONNX the pipeline hands to ``compile`` for ``precision``."""
        return "int8-qdq" if precision == "int8" else "fp32"

    def default_device(self) -> str:
        return self.devices[0]

    def default_precision(self, options: TargetOptions) -> str:
        """The precision built when none is asked for: fp32 where the target computes it."""
        return "fp32" if "fp32" in self.precisions else self.precisions[0]

    def cache_identity(self) -> dict[str, str | None]:
        """Facts besides package versions that decide what ``compile`` writes (e.g. the GPU an engine is
        for); they join the build's cache key."""
        return {}

    def check_request(self, request: BuildRequest) -> None:  # noqa: B027 - optional hook
        """Raise ``InputError`` for options this target cannot honour (before any work)."""

    @abc.abstractmethod
    def compile(self, ctx: CompileContext) -> CompileResult:
        """Turn the ONNX into this target's artifacts inside ``ctx.build_dir``."""

    @abc.abstractmethod
    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        """A session over a finished build's artifacts."""

    def compiler_memory(self, build_dir: Path, manifest: dict[str, Any]) -> MemoryFigure | None:
        """The compiler's own memory plan, where the target has one."""
        return None

    def estimated_latency(self, build_dir: Path, manifest: dict[str, Any]) -> LatencyFigure | None:
        """A latency the toolchain estimates without running (e.g. from NPU cycle counts)."""
        return None

    def measure_latency(self, session: Session, x: np.ndarray, warmup: int, runs: int) -> LatencyFigure | None:
        """Target-specific timing (e.g. CUDA events); None: the profiler's wall-clock loop."""
        return None

    def measured_memory(self, session: Session) -> MemoryFigure | None:
        """Memory the runtime measures itself (e.g. GPU device memory); None: the worker's peak RSS."""
        return None
