"""TensorRT: a serialized engine for the GPU that builds it, or a deferred bundle for the device.

With TensorRT, cuda-python and an NVIDIA GPU here, ``compile`` parses the pipeline's ONNX
into a strongly typed network and writes ``model.engine``. Without them the build still
succeeds: the verified, TensorRT-ready ``model.onnx`` and ``build_engine.sh`` (the equivalent
``trtexec`` command) go to the device's own CI runner, which builds the engine there. Either
way, because an engine runs only on the GPU model and TensorRT version that built it.

Precision lives in the ONNX, not in builder flags. TensorRT 11 removed the fp16/int8 flags and
the int8 calibrator: networks are always strongly typed. TensorRT 10 builds the same network
when it is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (its fp16/int8 flags
are deprecated since 10.12, and would let it pick per-layer precisions the ONNX never had), so
one ONNX gives the same types on both majors and its ONNX Runtime verification speaks for
them. fp32 builds clear TF32, which rounds convolution inputs to 10-bit mantissas and would
miss fp32's 1e-4 tolerance.

No TensorRT object is created before nvidia-smi and CUDA have both confirmed a GPU: TensorRT
without a usable GPU logs a CUDA error and then crashes the process at exit.

API sources (NVIDIA/TensorRT, tags v10.16 and v11.1): python/src/infer/pyCore.cpp and
python/docstrings/infer/pyCoreDoc.h for names and signatures, python/src/parsers/pyOnnx.cpp,
samples/python/common_runtime.py for cuda-python, samples/common/sampleOptions.cpp for trtexec.
"""

from __future__ import annotations

import importlib
import logging
import shlex
import weakref
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .. import __version__
from ..api.request import BuildRequest
from ..api.target import (
    Artifact,
    Availability,
    CompileContext,
    CompileResult,
    LatencyFigure,
    MemoryFigure,
    OnnxForm,
    Session,
    Target,
    facts,
)
from ..core.errors import InputError, TargetUnavailable, VncompileError
from ..core.host import nvidia_gpus
from ..core.io import atomic_file
from ..core.units import kb
from ..onnxtools.run import output_names as onnx_output_names

log = logging.getLogger("vncompile")

ENGINE, SCRIPT, ONNX = "model.engine", "build_engine.sh", "model.onnx"
INPUT_NAME = "input"  # export_onnx names the network's one input so
ONNX_FORMS: dict[str, OnnxForm] = {"fp32": "fp32", "fp16": "fp16", "int8": "int8-qdq"}
OLDEST_MAJOR = 10
SMALLEST_SIDE = 32  # no network vncompile builds takes a smaller input
INSTALL_HINT = "pip install tensorrt cuda-python"  # no brackets: the CLI prints notices as Rich markup
Shape4 = tuple[int, int, int, int]


# ---------------------------------------------------------------------------- shapes and the trtexec command


@dataclass(frozen=True)
class ShapeProfile:
    """An optimization profile for the NCHW input: the engine takes min..max and is tuned for opt."""

    min: Shape4
    opt: Shape4
    max: Shape4

    def covers(self, shape: Shape4) -> bool:
        return all(low <= size <= high for low, size, high in zip(self.min, shape, self.max, strict=True))

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def shape_profile(request: BuildRequest) -> ShapeProfile | None:
    """None for a static input. With --dynamic: batch 1..N tuned for N, and square --profile-sizes
    min,opt,max, or by default half to twice the requested height and width, tuned for them."""
    if not request.dynamic:
        return None
    n, c, h, w = request.shape.as_tuple()
    sizes = request.options.profile_sizes
    if sizes is None:
        return ShapeProfile((1, c, max(SMALLEST_SIDE, h // 2), max(SMALLEST_SIDE, w // 2)), (n, c, h, w),
                            (n, c, 2 * h, 2 * w))
    low, opt, high = sizes
    return ShapeProfile((1, c, low, low), (n, c, opt, opt), (n, c, high, high))


def _dims(shape: Shape4) -> str:
    return "x".join(map(str, shape))


def trtexec_arguments(request: BuildRequest, profile: ShapeProfile | None) -> list[str]:
    """trtexec's flags for what ``compile`` builds with the Python API (TensorRT 10 and 11 both take them)."""
    arguments = [f"--onnx={ONNX}", f"--saveEngine={ENGINE}", "--stronglyTyped"]  # 11 ignores it: always typed
    if request.precision == "fp32":
        arguments.append("--noTF32")
    if request.options.workspace_mb is not None:
        arguments.append(f"--memPoolSize=workspace:{request.options.workspace_mb}M")
    if profile is not None:
        arguments += [f"--{kind}Shapes={INPUT_NAME}:{_dims(shape)}"
                      for kind, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max))]
    return [*arguments, "--skipInference"]


PRECISION_NOTES = {
    "fp32": "fp32 weights and compute; --noTF32 keeps convolutions in full fp32",
    "fp16": "fp16 weights and compute, as the ONNX holds them",
    "int8": "int8 as the ONNX's Q/DQ nodes, from calibration",
}


def build_script(request: BuildRequest, profile: ShapeProfile | None, outputs: list[str] | None = None) -> str:
    """``build_engine.sh``: only the request decides its text (the timing cache is the runner's, by name);
    ``outputs``: the ONNX's output names (a backbone's maps), which the engine keeps as its bindings."""
    command = " ".join(['exec "$TRTEXEC"', *map(shlex.quote, trtexec_arguments(request, profile)),
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
        "set -eu",
        'cd "$(dirname "$0")"',
        'TRTEXEC="${TRTEXEC:-trtexec}"',
        'TIMING_CACHE="${TIMING_CACHE:-timing.cache}"',
        'command -v "$TRTEXEC" >/dev/null 2>&1 || { echo "build_engine.sh: $TRTEXEC not found: install TensorRT'
        ' or set TRTEXEC" >&2; exit 127; }',
        command,
        "",
    ])


# ---------------------------------------------------------------------------- the toolchain here


def _major(version: str) -> int:
    return int(version.split(".")[0])


def import_tensorrt() -> ModuleType | str:
    """The tensorrt module, or why it cannot be used (importing creates no TensorRT object)."""
    try:
        trt = importlib.import_module("tensorrt")
    except ModuleNotFoundError as exc:
        if exc.name != "tensorrt":
            return f"TensorRT does not import ({exc})"
        return f"TensorRT is not installed ({INSTALL_HINT} on a GPU machine)"
    except (ImportError, OSError) as exc:  # a wheel without its libraries, or a broken system install
        return f"TensorRT does not import ({type(exc).__name__}: {exc})"
    if _major(trt.__version__) < OLDEST_MAJOR:
        return f"TensorRT {trt.__version__} is older than {OLDEST_MAJOR}, the oldest vncompile builds with"
    return trt


def import_cudart() -> ModuleType | None:
    """cuda-python's runtime API: cuda.bindings.runtime (12.6 and later, 13), cuda.cudart before."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


@dataclass(frozen=True)
class GpuFacts:
    name: str
    compute_capability: str  # "8.6"


class CudaRuntime:
    """cuda-python's runtime calls return (cudaError_t, *values); this returns the values or raises one line."""

    def __init__(self, api: ModuleType) -> None:
        self.api = api

    def __call__(self, function: str, *args: Any) -> Any:
        error, *values = getattr(self.api, function)(*args)
        if error != self.api.cudaError_t.cudaSuccess:
            raise VncompileError(f"CUDA {function} failed: {self.error_name(error)}")
        return values[0] if len(values) == 1 else tuple(values) or None

    def error_name(self, error: Any) -> str:
        name = self.api.cudaGetErrorName(error)[1]
        return name.decode() if isinstance(name, bytes) else str(name)

    def missing_device(self) -> str:
        """Why CUDA cannot use a GPU here, or "" when it can."""
        error, count = self.api.cudaGetDeviceCount()
        if error != self.api.cudaError_t.cudaSuccess:
            return f"CUDA sees no usable GPU ({self.error_name(error)})"
        return "" if count > 0 else "CUDA sees no GPU"

    def current_gpu(self) -> GpuFacts:
        device = self("cudaGetDevice")
        name = self("cudaGetDeviceProperties", device).name
        attribute = self.api.cudaDeviceAttr
        major = self("cudaDeviceGetAttribute", attribute.cudaDevAttrComputeCapabilityMajor, device)
        minor = self("cudaDeviceGetAttribute", attribute.cudaDevAttrComputeCapabilityMinor, device)
        text = name.split(b"\0")[0].decode() if isinstance(name, bytes) else str(name)
        return GpuFacts(text, f"{major}.{minor}")

    def free_memory(self) -> int:
        free, _total = self("cudaMemGetInfo")
        return int(free)


@dataclass(frozen=True)
class Toolchain:
    """TensorRT and CUDA with a GPU that CUDA has confirmed: safe to create TensorRT objects."""

    trt: ModuleType
    cuda: CudaRuntime
    gpu: GpuFacts

    @property
    def version(self) -> str:
        return self.trt.__version__


def missing_pieces(trt: ModuleType | str) -> list[str]:
    """What a real build lacks here, given ``trt`` (the module, or why not), cheaply: no CUDA call and no
    TensorRT object. Empty when nothing."""
    missing = [] if nvidia_gpus() else ["no NVIDIA GPU here (nvidia-smi lists none)"]
    if isinstance(trt, str):
        missing.append(trt)
    if import_cudart() is None:
        missing.append(f"cuda-python is not installed ({INSTALL_HINT})")
    return missing


def probe_toolchain() -> Toolchain | str:
    """A usable toolchain, or why there is none (the build is then deferred to the device)."""
    trt = import_tensorrt()
    missing = missing_pieces(trt)
    if missing or isinstance(trt, str):
        return "; ".join(missing)
    cuda = CudaRuntime(import_cudart())  # type: ignore[arg-type]
    unusable = cuda.missing_device()
    if unusable:
        return unusable
    return Toolchain(trt, cuda, cuda.current_gpu())


# ---------------------------------------------------------------------------- building the engine


def forwarding_logger(trt: ModuleType) -> Any:
    """A TensorRT ILogger writing to build.log (not the terminal) that keeps errors for one-line messages."""
    severity = trt.ILogger.Severity
    levels = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR,
              severity.WARNING: logging.WARNING, severity.INFO: logging.DEBUG}  # VERBOSE is dropped

    class ForwardingLogger(trt.ILogger):  # type: ignore[name-defined, misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # the ILogger docs: a subclass must initialize the base explicitly
            self.errors: list[str] = []

        def log(self, level: Any, msg: str) -> None:
            if levels.get(level) == logging.ERROR:
                self.errors.append(msg)
            if level in levels:
                log.log(levels[level], "tensorrt: %s", msg)

        def last_error(self) -> str:
            return self.errors[-1] if self.errors else "TensorRT logged no error (see build.log)"

    return ForwardingLogger()


def network_flags(trt: ModuleType) -> int:
    """STRONGLY_TYPED on TensorRT 10; 11 networks are always strongly typed and the flag is deprecated."""
    if _major(trt.__version__) >= 11:
        return 0
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def parser_failure(parser: Any) -> str:
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    for error in errors:
        log.error("tensorrt parser: %s", error)
    if not errors:
        return f"TensorRT could not parse {ONNX} (see build.log)"
    first = errors[0]
    node = f" at node '{first.node_name()}' ({first.node_operator()})" if first.node_name() else ""
    more = f"; {len(errors) - 1} more in build.log" if len(errors) > 1 else ""
    return f"TensorRT could not parse {ONNX}{node}: {first.desc()}{more}"


def configure(trt: ModuleType, builder: Any, network: Any, config: Any, request: BuildRequest,
              profile: ShapeProfile | None) -> None:
    """Workspace limit, TF32 off for fp32, and the --dynamic optimization profile."""
    if request.options.workspace_mb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.options.workspace_mb << 20)
    if request.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    if profile is None:
        return
    optimization = builder.create_optimization_profile()
    name = network.get_input(0).name
    try:
        optimization.set_shape(name, profile.min, profile.opt, profile.max)
    except RuntimeError as exc:
        raise VncompileError(f"TensorRT rejected the optimization profile for '{name}': {exc}") from None
    if config.add_optimization_profile(optimization) < 0:
        raise VncompileError(f"TensorRT rejected the optimization profile {profile.as_dict()} for '{name}'")


def _read_timing_cache(path: Path) -> bytes:
    try:
        return path.read_bytes() if path.exists() else b""
    except OSError as exc:
        raise InputError(f"cannot read the timing cache {path}: {exc.strerror}") from None


def attach_timing_cache(config: Any, path: Path) -> str:
    """Reuse the cache in ``path`` when TensorRT accepts it; replace a corrupt one, or one from another GPU
    or TensorRT version, with a new cache and return a warning (a build never fails on its cache)."""
    blob = _read_timing_cache(path)
    warning = ""
    if blob:
        try:
            cache = config.create_timing_cache(blob)  # None: TensorRT could not read it
        except (RuntimeError, ValueError):  # undocumented either way: treat a raise like None
            cache = None
        # ignore_mismatch False: TensorRT says another device's timings "may lead to functional/performance bugs"
        if cache is not None and config.set_timing_cache(cache, False):
            log.info("tensorrt: reusing the timing cache %s (%d bytes)", path, len(blob))
            return ""
        warning = f"the timing cache {path} was corrupt or from another GPU or TensorRT version; rebuilt it"
        log.warning("tensorrt: %s", warning)
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, False):
        raise VncompileError("TensorRT could not create a timing cache")
    return warning


def save_timing_cache(config: Any, path: Path) -> None:
    """Write the config's (grown) timing cache back, atomically: a concurrent reader never sees half a file."""
    serialized = bytes(config.get_timing_cache().serialize())
    try:
        with atomic_file(path, force=True) as tmp:
            tmp.write_bytes(serialized)
    except OSError as exc:
        raise InputError(f"cannot write the timing cache {path}: {exc.strerror}") from None
    log.info("tensorrt: wrote the timing cache %s (%d bytes)", path, len(serialized))


@dataclass(frozen=True)
class BuiltEngine:
    plan: bytes
    hardware_compatibility_level: str  # NONE: this GPU model only
    warning: str  # for the user: a timing cache that had to be rebuilt


def build_engine(toolchain: Toolchain, onnx_path: Path, request: BuildRequest,
                 profile: ShapeProfile | None) -> BuiltEngine:
    trt = toolchain.trt
    logger = forwarding_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise VncompileError(parser_failure(parser))
    config = builder.create_builder_config()
    configure(trt, builder, network, config, request, profile)
    cache_path = request.options.timing_cache
    warning = attach_timing_cache(config, Path(cache_path)) if cache_path is not None else ""
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise VncompileError(f"TensorRT could not build the engine: {logger.last_error()}")
    if cache_path is not None:
        save_timing_cache(config, Path(cache_path))
    return BuiltEngine(bytes(plan), config.hardware_compatibility_level.name, warning)


# ---------------------------------------------------------------------------- running it


@dataclass(frozen=True)
class RunTiming:
    """One run's CUDA-event times in ms: input copy, engine execution, output copies."""

    to_device_ms: float
    compute_ms: float
    to_host_ms: float

    @property
    def total_ms(self) -> float:
        return self.to_device_ms + self.compute_ms + self.to_host_ms


@dataclass(frozen=True)
class DeviceMemory:
    """Bytes, each from its own source (see ``TensorRTSession.device_memory``)."""

    delta: int
    activations: int
    weights: int
    weights_source: str
    io_buffers: int


def _release(cuda: CudaRuntime, trt_objects: list[Any], buffers: dict[str, tuple[int, int]], stream: Any) -> None:
    """Context before engine before runtime before logger (each must outlive what it made), then CUDA memory.

    Best effort, unchecked: this also runs at interpreter exit, where an error would print a traceback.
    """
    while trt_objects:
        trt_objects.pop()
    for pointer, _size in buffers.values():
        cuda.api.cudaFree(pointer)
    buffers.clear()
    cuda.api.cudaStreamDestroy(stream)


class TensorRTSession(Session):
    """One engine on the current GPU: its own stream, and device buffers grown to the largest input seen.

    Host arrays are pageable numpy memory (what callers pass), so copies are slower than trtexec's
    pinned ones; timings keep them apart from the engine's own execution.
    """

    def __init__(self, toolchain: Toolchain, plan: bytes) -> None:
        trt, cuda = toolchain.trt, toolchain.cuda
        self._trt, self._cuda, self.plan_bytes = trt, cuda, len(plan)
        self._free_at_start = cuda.free_memory()
        logger = forwarding_logger(trt)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise VncompileError(f"TensorRT could not deserialize {ENGINE}: {logger.last_error()}")
        context = engine.create_execution_context()
        if context is None:
            raise VncompileError(f"TensorRT could not create an execution context: {logger.last_error()}")
        self._logger = logger
        self._objects = [logger, runtime, engine, context]  # released in reverse by _release
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, bytes)
        self._stream = cuda("cudaStreamCreate")
        self._finalizer = weakref.finalize(self, _release, cuda, self._objects, self._buffers, self._stream)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise VncompileError(f"{ENGINE} has {len(inputs)} inputs; vncompile's networks have one")
        self._input, self._outputs = inputs[0], [n for n in names if n != inputs[0]]

    def close(self) -> None:
        self._finalizer()

    def _live(self, index: int) -> Any:
        if not self._objects:
            raise VncompileError("the TensorRT session is closed")
        return self._objects[index]

    @property
    def engine(self) -> Any:
        return self._live(2)

    @property
    def _context(self) -> Any:
        return self._live(3)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        host_input, host_outputs = self._bind(x)
        self._enqueue(host_input, host_outputs)
        self._cuda("cudaStreamSynchronize", self._stream)
        return [np.asarray(o, dtype=np.float32) for o in host_outputs]

    def run_timings(self, x: np.ndarray, warmup: int, runs: int) -> list[RunTiming]:
        """CUDA events around each copy and the execution, after ``warmup`` untimed runs."""
        host_input, host_outputs = self._bind(x)
        for _ in range(warmup):
            self._enqueue(host_input, host_outputs)
        self._cuda("cudaStreamSynchronize", self._stream)
        events = [self._cuda("cudaEventCreate") for _ in range(4)]
        try:
            timings = []
            for _ in range(runs):
                self._enqueue(host_input, host_outputs, events)
                self._cuda("cudaEventSynchronize", events[-1])
                spans = [self._cuda("cudaEventElapsedTime", a, b) for a, b in zip(events, events[1:], strict=False)]
                timings.append(RunTiming(*(float(ms) for ms in spans)))
        finally:
            for event in events:
                self._cuda("cudaEventDestroy", event)
        return timings

    def time_runs(self, x: np.ndarray, warmup: int, runs: int) -> LatencyFigure:
        """Samples: the engine's GPU compute per run (trtexec's "GPU Compute Time"); copies in the detail."""
        timings = self.run_timings(x, warmup, runs)
        spans = {"GPU compute (the samples)": [t.compute_ms for t in timings],
                 "host-to-device copy": [t.to_device_ms for t in timings],
                 "device-to-host copies": [t.to_host_ms for t in timings],
                 "end to end": [t.total_ms for t in timings]}
        detail = f"CUDA events after {warmup} warm-up runs: " + "; ".join(
            f"{what} {_percentiles(values)}" for what, values in spans.items())
        return LatencyFigure([t.compute_ms for t in timings], "measured", detail)

    def device_memory(self) -> MemoryFigure:
        """The device-memory delta since the session began, beside TensorRT's own figures."""
        memory = self.memory_breakdown()
        accounted = memory.activations + memory.weights + memory.io_buffers
        detail = (f"device-memory delta {_mb(memory.delta)} (cudaMemGetInfo before deserializing vs now, with "
                  f"TensorRT's runtime allocations); activations {_mb(memory.activations)} "
                  f"(ICudaEngine.device_memory_size_v2); weights {_mb(memory.weights)} ({memory.weights_source}); "
                  f"I/O buffers {_mb(memory.io_buffers)} (cudaMalloc); max: the larger of the delta and their sum")
        return MemoryFigure(kb(max(memory.delta, accounted)), "measured", kb(memory.weights), kb(memory.activations),
                            detail)

    def memory_breakdown(self) -> DeviceMemory:
        engine = self.engine
        activations = getattr(engine, "device_memory_size_v2", None)
        if activations is None:  # TensorRT 10.0 only has the deprecated name
            activations = engine.device_memory_size
        if hasattr(engine, "get_engine_stat"):  # TensorRT 10.14 and later
            weights = engine.get_engine_stat(self._trt.EngineStat.TOTAL_WEIGHTS_SIZE)
            weights_source = "ICudaEngine.get_engine_stat(TOTAL_WEIGHTS_SIZE)"
        else:
            weights, weights_source = self.plan_bytes, f"{ENGINE} size (an upper bound: no statistic before 10.14)"
        return DeviceMemory(self._free_at_start - self._cuda.free_memory(), int(activations), int(weights),
                            weights_source, sum(size for _pointer, size in self._buffers.values()))

    def _bind(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Set the input shape, size the device buffers and give TensorRT their addresses."""
        engine, context, nptype = self.engine, self._context, self._trt.nptype
        host_input = np.ascontiguousarray(x, dtype=nptype(engine.get_tensor_dtype(self._input)))
        if not context.set_input_shape(self._input, host_input.shape):
            raise VncompileError(f"{ENGINE} does not take an input of {'x'.join(map(str, host_input.shape))} "
                                 f"(its input: {tuple(engine.get_tensor_shape(self._input))}, -1 within its profile)")
        self._address(self._input, host_input.nbytes)
        host_outputs = []
        for name in self._outputs:
            output = np.empty(tuple(context.get_tensor_shape(name)), dtype=nptype(engine.get_tensor_dtype(name)))
            self._address(name, output.nbytes)
            host_outputs.append(output)
        return host_input, host_outputs

    def _address(self, name: str, nbytes: int) -> None:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                self._cuda("cudaFree", pointer)
                del self._buffers[name]
            pointer, size = int(self._cuda("cudaMalloc", nbytes)), nbytes
            self._buffers[name] = (pointer, size)
        if not self._context.set_tensor_address(name, pointer):
            raise VncompileError(f"TensorRT refused the address of '{name}': {self._logger.last_error()}")

    def _enqueue(self, host_input: np.ndarray, host_outputs: list[np.ndarray], events: list[Any] | None = None) -> None:
        cuda, stream, kind = self._cuda, self._stream, self._cuda.api.cudaMemcpyKind
        marks = iter(events or [])

        def mark() -> None:
            event = next(marks, None)
            if event is not None:
                cuda("cudaEventRecord", event, stream)

        mark()
        cuda("cudaMemcpyAsync", self._buffers[self._input][0], host_input.ctypes.data, host_input.nbytes,
             kind.cudaMemcpyHostToDevice, stream)
        mark()
        if not self._context.execute_async_v3(stream_handle=int(stream)):
            raise VncompileError(f"TensorRT could not run the engine: {self._logger.last_error()}")
        mark()
        for name, output in zip(self._outputs, host_outputs, strict=True):
            cuda("cudaMemcpyAsync", output.ctypes.data, self._buffers[name][0], output.nbytes,
                 kind.cudaMemcpyDeviceToHost, stream)
        mark()


def engine_mismatch(built: dict[str, Any], toolchain: Toolchain) -> str:
    """Why an engine built as ``built`` (the manifest's target facts) cannot run here; "" when it can."""
    version, gpu = toolchain.version, toolchain.gpu
    if built.get("tensorrt_version") != version:
        return f"{ENGINE} was built with TensorRT {built.get('tensorrt_version')} and this is TensorRT {version}"
    level, capability = built.get("hardware_compatibility_level", "NONE"), built.get("compute_capability")
    if level == "AMPERE_PLUS":
        runs = tuple(map(int, gpu.compute_capability.split("."))) >= (8, 0)
    elif level == "SAME_COMPUTE_CAPABILITY":
        runs = gpu.compute_capability == capability
    else:
        runs = gpu.name == built.get("gpu") and gpu.compute_capability == capability
    if runs:
        return ""
    return (f"{ENGINE} was built on {built.get('gpu')} (compute capability {capability}) and this GPU is "
            f"{gpu.name} ({gpu.compute_capability})")


def _percentiles(values: list[float]) -> str:
    median, p90, p99 = np.percentile(values, [50, 90, 99])
    return f"median {median:.3f} p90 {p90:.3f} p99 {p99:.3f} ms"


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f} MB"


# ---------------------------------------------------------------------------- the target


class TensorRTTarget(Target):
    name = "tensorrt"
    description = "NVIDIA TensorRT engine (10.x, 11.x) for the GPU that builds it; a trtexec bundle elsewhere"
    precisions = ("fp32", "fp16", "int8")
    devices = ("GPU",)
    packages = ("tensorrt",)

    def availability(self) -> Availability:
        trt = import_tensorrt()
        version = None if isinstance(trt, str) else trt.__version__
        missing = missing_pieces(trt)
        if missing:
            return Availability(True, version, f"deferred: {'; '.join(missing)}; builds write the verified {ONNX} "
                                               f"and {SCRIPT} (its trtexec command) for the device to build its engine")
        return Availability(True, version, "", self.devices)

    def onnx_form(self, precision: str) -> OnnxForm:
        return ONNX_FORMS.get(precision, "fp32")

    def cache_identity(self) -> dict[str, str | None]:
        """A deferred bundle must not be served once a GPU is here, nor an engine for another GPU."""
        toolchain = probe_toolchain()
        if isinstance(toolchain, str):
            return {"tensorrt_engine": "deferred"}
        gpu = toolchain.gpu
        return {"tensorrt_engine": f"{toolchain.version} on {gpu.name} ({gpu.compute_capability})"}

    def check_request(self, request: BuildRequest) -> None:
        if request.precision not in self.precisions:
            raise InputError(f"tensorrt builds {', '.join(self.precisions)}, not {request.precision}")
        if request.options.device not in (None, "GPU"):
            raise InputError(f"tensorrt runs on the GPU (--device GPU), not {request.options.device}")
        workspace = request.options.workspace_mb
        if workspace is not None and workspace < 1:
            raise InputError(f"--workspace takes a positive number of MiB, got {workspace}")
        _check_profile_sizes(request)

    def compile(self, ctx: CompileContext) -> CompileResult:
        request = ctx.request
        profile = shape_profile(request)
        script = ctx.build_dir / SCRIPT
        outputs = onnx_output_names(ctx.onnx_path)
        script.write_text(build_script(request, profile, outputs))
        script.chmod(0o755)
        info: dict[str, Any] = {
            "strongly_typed": True, "workspace_mb": request.options.workspace_mb,
            "profile": profile.as_dict() if profile else None,
            "trtexec": shlex.join(["trtexec", *trtexec_arguments(request, profile)]), "outputs": outputs,
        }
        toolchain = probe_toolchain()
        if isinstance(toolchain, str):
            notice = (f"{toolchain}: deferred the engine; run {SCRIPT} on the device to build {ENGINE} from the "
                      f"verified {ONNX} (verification covered the ONNX stages)")
            ctx.log.info("tensorrt: %s", notice)
            return CompileResult([Artifact(SCRIPT, "trtexec-script", primary=True)], "deferred",
                                 {**info, "deferred_because": toolchain}, notice)
        built = build_engine(toolchain, ctx.onnx_path, request, profile)
        (ctx.build_dir / ENGINE).write_bytes(built.plan)
        ctx.log.info("tensorrt %s: wrote %s (%d bytes) on %s", toolchain.version, ENGINE, len(built.plan),
                     toolchain.gpu.name)
        info.update(gpu=toolchain.gpu.name, compute_capability=toolchain.gpu.compute_capability,
                    tensorrt_version=toolchain.version, hardware_compatibility_level=built.hardware_compatibility_level)
        return CompileResult([Artifact(ENGINE, "engine", primary=True), Artifact(SCRIPT, "trtexec-script")], facts=info,
                             notice=built.warning)

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        if manifest.get("status") == "deferred":
            raise TargetUnavailable(f"{build_dir} is a deferred TensorRT bundle without an engine: run its {SCRIPT} "
                                    "on the device")
        toolchain = probe_toolchain()
        if isinstance(toolchain, str):
            raise TargetUnavailable(f"cannot run {ENGINE} here: {toolchain}")
        mismatch = engine_mismatch(facts(manifest), toolchain)  # before deserializing: a foreign plan can crash
        if mismatch:
            raise TargetUnavailable(f"{mismatch}; an engine runs only on the GPU model and TensorRT version that "
                                    f"built it: rebuild it here (vncompile build --target tensorrt --force) or run "
                                    f"{SCRIPT}")
        return TensorRTSession(toolchain, (build_dir / ENGINE).read_bytes())


def _check_profile_sizes(request: BuildRequest) -> None:
    sizes = request.options.profile_sizes
    if sizes is None:
        return
    given = ",".join(map(str, sizes))
    if not request.dynamic:
        raise InputError("--profile-sizes shapes a --dynamic build's optimization profile; add --dynamic")
    if len(sizes) != 3 or not sizes[0] <= sizes[1] <= sizes[2]:
        raise InputError(f"--profile-sizes takes min,opt,max in increasing order, e.g. 256,384,512; got {given}")
    profile = shape_profile(request)
    assert profile is not None
    for shape in request.verify_shapes() if request.verify else [request.shape]:
        if not profile.covers(shape.as_tuple()):
            raise InputError(f"--profile-sizes {given} must cover {shape.height}x{shape.width}, a size this build "
                             "verifies the engine at")
