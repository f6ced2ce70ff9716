"""Running an engine: the Session, its timings and device memory, and whether a built engine runs here."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...api.target import LatencyFigure, MemoryFigure, Session
from ...core.errors import VncompileError
from ...core.units import BYTES_PER_KB, KB_PER, kb
from .cuda import CudaRuntime
from .script import ENGINE
from .toolchain import Toolchain, forwarding_logger


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
    activations_source: str
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
                  f"({memory.activations_source}); weights {_mb(memory.weights)} ({memory.weights_source}); "
                  f"I/O buffers {_mb(memory.io_buffers)} (cudaMalloc); max: the larger of the delta and their sum")
        return MemoryFigure(kb(max(memory.delta, accounted)), "measured", kb(memory.weights), kb(memory.activations),
                            detail)

    def memory_breakdown(self) -> DeviceMemory:
        engine = self.engine
        if hasattr(engine, "device_memory_size_v2"):  # 10.1 and later
            activations, activations_source = engine.device_memory_size_v2, "ICudaEngine.device_memory_size_v2"
        else:  # 10.0 has only the name 10.1 deprecated
            activations, activations_source = engine.device_memory_size, "ICudaEngine.device_memory_size"
        weights, weights_source = self._weights(engine)
        return DeviceMemory(self._free_at_start - self._cuda.free_memory(), int(activations), activations_source,
                            weights, weights_source, sum(size for _pointer, size in self._buffers.values()))

    def _weights(self, engine: Any) -> tuple[int, str]:
        """TensorRT's weights statistic where it has a working one, else the plan's size (an upper bound)."""
        if not hasattr(engine, "get_engine_stat"):
            return self.plan_bytes, f"{ENGINE} size (an upper bound: no weights statistic before TensorRT 10.14)"
        try:
            weights = engine.get_engine_stat(self._trt.EngineStat.TOTAL_WEIGHTS_SIZE)
        except (TypeError, RuntimeError) as exc:  # 10.14's binding puts keep_alive on the int it returns
            return self.plan_bytes, (f"{ENGINE} size (an upper bound: get_engine_stat(TOTAL_WEIGHTS_SIZE) failed in "
                                     f"these bindings: {type(exc).__name__}: {exc})")
        return int(weights), "ICudaEngine.get_engine_stat(TOTAL_WEIGHTS_SIZE)"

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
    return f"{size / BYTES_PER_KB / KB_PER['mb']:.2f} MB"
