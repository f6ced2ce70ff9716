"""The target plugin API: what every backend tells and does.

A target says whether it can run here (and why not), which ONNX it wants for a
precision, compiles that ONNX into its artifacts in a build directory, and loads
them back into a ``Session`` that runs one input. Third parties register a
``Target`` subclass under the ``vncompile.targets`` entry-point group.

The contract, typed:
- ``compile`` returns its artifacts, exactly one of them ``primary`` (the file a device
  loads; its hash identifies the build in profiles and CI indexes), and its own facts,
  which the manifest keeps under ``target.facts`` where they cannot overwrite the
  pipeline's keys; ``load`` reads them back from there.
- every memory figure says where it comes from (``measured`` / ``compiler`` / ``estimated``),
  in KB (``core.units``: 1 KB = 1024 bytes);
- a ``Session`` is a context manager and is closed after use; runtimes that time or
  measure themselves (CUDA events, device memory) override ``time_runs`` / ``device_memory``;
- ``layer_profile`` gives what the runtime or compiler itself reports per layer (``LayerRecord``), each
  row labelled with the network's own name for it (``onnxtools.blocks``) and its source.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from ..core.errors import VncompileError
from .request import BuildRequest

OnnxForm = Literal["fp32", "fp16", "int8-qdq"]
MemorySource = Literal["measured", "compiler", "estimated"]
LatencySource = Literal["measured", "estimated"]


@dataclass(frozen=True)
class Availability:
    available: bool
    version: str | None = None
    reason: str = ""  # why not, with the command that fixes it
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Artifact:
    path: str  # relative to the build directory
    role: str  # e.g. "openvino-xml", "engine", "rknn"
    primary: bool = False  # the artifact a device loads; exactly one per build


@dataclass(frozen=True)
class CompileResult:
    artifacts: list[Artifact]
    status: Literal["ok", "deferred"] = "ok"  # deferred: the artifact is built on the device itself
    facts: dict[str, Any] = field(default_factory=dict)  # the target's own facts: manifest["target"]["facts"]
    notice: str = ""  # one line for the user (e.g. why a build was deferred)

    def __post_init__(self) -> None:
        primaries = [a.path for a in self.artifacts if a.primary]
        if len(primaries) != 1:
            raise VncompileError(f"a target must mark exactly one artifact primary, got {primaries or 'none'}")

    @property
    def primary(self) -> Artifact:
        return next(a for a in self.artifacts if a.primary)


@dataclass(frozen=True)
class MemoryFigure:
    """Max memory in KB and where the figure comes from; the manifest's and a profile row's ``memory``."""

    max_kb: float
    source: MemorySource
    weights_kb: float | None = None
    activations_kb: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LatencyFigure:
    """Latency samples in ms and where they come from (timed on a runtime, or estimated by a compiler)."""

    samples_ms: list[float]
    source: LatencySource
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The manifest's and a profile row's ``latency``: statistics over the samples."""
        ordered = sorted(self.samples_ms)
        n = len(ordered)

        def percentile(q: float) -> float:
            return float(np.percentile(ordered, q))

        return {"median_ms": float(np.median(ordered)), "mean_ms": float(np.mean(ordered)),
                "p90_ms": percentile(90), "p99_ms": percentile(99), "min_ms": ordered[0], "max_ms": ordered[-1],
                "runs": n, "source": self.source, "detail": self.detail}


@dataclass(frozen=True)
class LayerRecord:
    """One layer as a runtime or compiler reports it; None where it reports no such figure. What each figure is
    depends on the reporter (README, "Per-layer profiles"): a runtime's measured mean time, a compiler's cycles,
    the bytes it attributes to the layer."""

    name: str  # the reporter's own name for the layer (a runtime's node, a compiler's op)
    block: str  # the network's name for it (``stages.0.conv``; an external graph's node name); "" when unknown
    op: str
    source: MemorySource
    time_ms: float | None = None
    memory_bytes: int | None = None
    cycles: int | None = None
    exec_type: str | None = None  # the kernel, engine or placement that ran it (``brgconv_avx512_1x1_f32``, NPU)
    precision: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Session(abc.ABC):
    """A loaded artifact that runs inputs; close it (or use it as a context manager) when done."""

    @abc.abstractmethod
    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """Run one input batch (NCHW float32) and return the outputs as float32 arrays."""

    def close(self) -> None:  # noqa: B027 - sessions without resources have nothing to release
        """Release what the session holds (worker processes, device memory, scratch files)."""

    def time_runs(self, x: np.ndarray, warmup: int, runs: int) -> LatencyFigure | None:
        """Target-specific timing (e.g. CUDA events); None: the profiler's wall-clock loop."""
        return None

    def device_memory(self) -> MemoryFigure | None:
        """Memory the runtime measures itself (e.g. GPU device memory); None: the process's peak RSS."""
        return None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class NoOptions:
    """A target without options of its own."""


@dataclass(frozen=True)
class ReferenceIO:
    """What verification runs the target's stage on, for a target that verifies on the device itself (a deferred
    bundle carries them): the input batches, the float64 reference's outputs for them, and how they are judged."""

    inputs: np.ndarray  # (batches, N, C, H, W) float32: seeded noise, then real images where the build has some
    outputs: list[list[np.ndarray]]  # per batch, per output: the float64 reference
    names: list[str]  # the outputs' names, in order
    judged_from: int  # the first batch judged (a quantized build with real images: those alone)
    classifier: bool  # a single output of logits: top-1 agreement too
    tolerance: dict[str, float]  # the precision's tolerance (``Tolerance.as_dict``)


@dataclass
class CompileContext:
    onnx_path: Path  # the target-ready ONNX (already in the form ``onnx_form`` asked for)
    build_dir: Path  # write artifacts here; paths in ``Artifact`` are relative to it
    request: BuildRequest  # as resolved: its precision is the one built
    log: logging.Logger
    calibration: np.ndarray | None = None  # int8: preprocessed NCHW samples
    own: Any = NoOptions()  # the target's own options (an instance of its ``own_options``)
    reference: ReferenceIO | None = None  # with verification: its inputs and the reference's outputs


class Target(abc.ABC):
    name: ClassVar[str]
    description: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    devices: ClassVar[tuple[str, ...]] = ("CPU",)
    packages: ClassVar[tuple[str, ...]] = ()  # distributions whose versions key the build cache
    executes: ClassVar[bool] = True  # False: nothing to run (the analytic memory planner)
    quantizes: ClassVar[bool] = True  # False: int8/int16 are element sizes only, no calibration (the planner)
    latency_here: ClassVar[bool] = True  # False: what runs here is a simulator, whose wall clock is no latency
    # The --runtime-profile values it has session settings for (``options.RUNTIME_PROFILES``). Without any, the
    # pipeline refuses all but the default, saying ``why_no_runtime_profiles``.
    runtime_profiles: ClassVar[tuple[str, ...]] = ()
    # The exact graph passes (``onnxtools.passes``) its ONNX gets unless --graph-passes says otherwise: those
    # measured to help its compiler.
    graph_passes: ClassVar[tuple[str, ...]] = ()
    why_no_runtime_profiles: ClassVar[str] = "it has no session settings to choose"
    # The bits of a Q/DQ int8 graph's weights (``onnxtools.quantize``): 7 for an artifact any x86 CPU runs alike.
    # Without VNNI, x86 int8 kernels (ONNX Runtime's, oneDNN's) sum pairs of u8 x s8 products in saturating 16 bits,
    # which 7-bit weights cannot reach (2 x 255 x 64 < 2**15). Measured on the digits model at 64 (test_real_data),
    # cosine to the float64 reference: 8-bit weights 0.9984 with VNNI, 0.9892 (ONNX Runtime) / 0.9915 (OpenVINO) on
    # an AVX2-only CPU (qemu-x86_64 -cpu Haswell); 7-bit weights 0.9973 on both, the same outputs either way.
    int8_weight_bits: ClassVar[int] = 8
    # The precisions at which an ONNX detector's head runs on the host by default (``--detect-head``): where one
    # quantized output would carry pixel coordinates and 0..1 scores at one scale and round the scores to zero
    # (Rockchip's NPUs: ultralytics#13566), each level's box and class maps leave the device separately.
    host_head_precisions: ClassVar[tuple[str, ...]] = ("int8", "int16")
    # False: its verification runs the whole graph elsewhere (a deferred bundle on the device), so the head stays on it.
    runs_host_head: ClassVar[bool] = True
    # Its own options: a frozen dataclass of ``core.schema.setting`` fields, each declaring its flag, help and
    # what it affects (the cache keys). The command line's flags, device configs' validation and the refusal of
    # options another target owns all derive from it; the build hands the values over as an instance.
    own_options: ClassVar[type] = NoOptions

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Cheap: whether the toolchain imports and has a device, without building anything."""

    def onnx_form(self, precision: str) -> OnnxForm:
        """Which ONNX the pipeline hands to ``compile`` for ``precision``."""
        return "int8-qdq" if precision == "int8" else "fp32"

    def default_device(self) -> str:
        return self.devices[0]

    def default_precision(self, own: Any) -> str:
        """The precision built when none is asked for: fp32 where the target computes it."""
        return "fp32" if "fp32" in self.precisions or not self.precisions else self.precisions[0]

    def cache_identity(self) -> dict[str, str | None]:
        """Facts besides package versions that decide what ``compile`` writes (e.g. the GPU an engine is
        for); they join the build's cache key."""
        return {}

    def check_request(self, request: BuildRequest, own: Any) -> None:  # noqa: B027 - optional hook
        """Raise ``InputError`` for a request or options this target cannot honour (before any work)."""

    def dynamic_sizes(self, own: Any) -> tuple[int, ...] | None:
        """The square sizes a --dynamic artifact is built for, where its options fix them (tensorrt's
        optimization profile): verification checks the far end too."""
        return None

    @abc.abstractmethod
    def compile(self, ctx: CompileContext) -> CompileResult:
        """Turn the ONNX into this target's artifacts inside ``ctx.build_dir``."""

    @abc.abstractmethod
    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        """A session over a finished build's artifacts (its facts: ``manifest["target"]["facts"]``)."""

    def compiler_memory(self, build_dir: Path, manifest: dict[str, Any]) -> MemoryFigure | None:
        """The compiler's own memory plan (or an estimate), where the target has one without running."""
        return None

    def estimated_latency(self, build_dir: Path, manifest: dict[str, Any]) -> LatencyFigure | None:
        """A latency the toolchain estimates without running (e.g. from NPU cycle counts)."""
        return None

    def layer_profile(self, build_dir: Path, manifest: dict[str, Any], x: np.ndarray,
                      runs: int) -> list[LayerRecord] | None:
        """Per-layer figures as the runtime or compiler reports them, in execution order (a runtime times ``runs``
        runs of ``x`` after one warm-up); None: it reports none. Called in the measuring process, like ``load``."""
        return None

    plans_memory: ClassVar[bool] = False  # True: ``planned_memory`` asks the compiler itself

    def planned_memory(self, onnx_path: Path, request: BuildRequest, own: Any) -> MemoryFigure:
        """The compiler's memory figure for this graph without keeping an artifact (``plans_memory``
        targets): ``--fit-memory`` asks it of each candidate tiling, since a compiler may schedule and
        allocate the strips otherwise than the analytic plan assumes."""
        raise NotImplementedError(f"{self.name} has no memory plan of its own")


def facts(manifest: dict[str, Any]) -> dict[str, Any]:
    """A build's target facts (what its ``compile`` returned)."""
    return manifest["target"]["facts"]
