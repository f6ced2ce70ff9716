"""A strict fake of the cuda-python runtime calls vncompile's TensorRT target makes, over a fake machine.

Conventions copied from cuda-python (``cuda.bindings.runtime``; NVIDIA/cuda-python,
cuda_bindings/cuda/bindings/runtime.pyx.in and its .pyi; NVIDIA/TensorRT
samples/python/common_runtime.py): every call returns a tuple whose first element is a
``cudaError_t``, and the values are ``None`` when the call failed; handles (``cudaStream_t``,
``cudaEvent_t``) are objects that ``int()`` turns into their address; device pointers are ints.
Enum values are the CUDA headers'. Versions as CUDA encodes them (12040: 12.4); a runtime needs a
driver of its major or later (minor-version compatibility), else cudaErrorInsufficientDriver.

The "device" memory is host memory (ctypes buffers) whose addresses serve as device
pointers, so copies are real ``memmove``s and the fake engine computes real outputs. What a
real GPU would reject (a freed pointer, a copy past an allocation, a kind that does not match
the pointers, an event read before it completed) returns the CUDA error it would.
"""

from __future__ import annotations

import ctypes
import enum
import types
from dataclasses import dataclass, field
from typing import Any

COPY_MS_PER_BYTE = 1e-7  # 10 GB/s
COPY_LATENCY_MS = 0.005


class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorInvalidDevicePointer = 17
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorNotReady = 600


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaDeviceAttr(enum.IntEnum):  # noqa: N801
    cudaDevAttrComputeCapabilityMajor = 75
    cudaDevAttrComputeCapabilityMinor = 76


class _Handle:
    """cuda-python's opaque handle types: ``int(handle)`` is the address."""

    def __init__(self, address: int) -> None:
        self._address = address

    def __int__(self) -> int:
        return self._address

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 0x{self._address:x}>"


class cudaStream_t(_Handle):  # noqa: N801
    pass


class cudaEvent_t(_Handle):  # noqa: N801
    pass


@dataclass
class FakeGpu:
    name: str
    capability: tuple[int, int]
    memory: int = 16 << 30


@dataclass
class _Event:
    stream: int | None = None
    time_ms: float | None = None
    order: int = 0  # when it was recorded: a stream completes its work in this order
    complete: bool = False


@dataclass
class FakeMachine:
    """The GPUs and the state CUDA and the fake TensorRT share: allocations, streams, events, clocks."""

    gpus: tuple[FakeGpu, ...]
    driver: int = 12080  # the CUDA version the driver supports, as cudaDriverGetVersion encodes it; 0: no driver
    runtime: int = 12090  # cuda-python's CUDA runtime (cudaRuntimeGetVersion): 13xxx for cuda-python 13
    allocations: dict[int, Any] = field(default_factory=dict)  # pointer -> ctypes buffer
    freed: set[int] = field(default_factory=set)
    reserved: dict[int, int] = field(default_factory=dict)  # TensorRT's own device memory, by owner id
    streams: dict[int, float] = field(default_factory=dict)  # stream handle -> its clock in ms
    events: dict[int, _Event] = field(default_factory=dict)
    trt_objects_created: int = 0
    _next_handle: int = 0x1000

    @property
    def driver_too_old(self) -> bool:
        """CUDA's minor-version compatibility: a runtime runs on any driver of its major or later, not earlier."""
        return self.driver // 1000 < self.runtime // 1000

    @property
    def gpu(self) -> FakeGpu | None:
        return self.gpus[0] if self.gpus and not self.driver_too_old else None

    def handle(self) -> int:
        self._next_handle += 0x10
        return self._next_handle

    def used(self) -> int:
        return sum(len(b) for b in self.allocations.values()) + sum(self.reserved.values())

    def allocation(self, pointer: int, nbytes: int) -> bool:
        """Whether [pointer, pointer + nbytes) lies inside one live allocation."""
        return any(start <= pointer and pointer + nbytes <= start + len(buffer)
                   for start, buffer in self.allocations.items())

    def advance(self, stream: int, ms: float) -> None:
        self.streams[stream] += ms


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _strict(function: str, **arguments: tuple[Any, Any]) -> None:
    """A Cython signature's TypeError for an argument of the wrong type."""
    for name, (value, kinds) in arguments.items():
        if kinds is int and not _is_int(value) or kinds is not int and not isinstance(value, kinds):
            raise TypeError(f"{function}(): argument '{name}' has incorrect type (got {type(value).__name__})")


class FakeCudaRuntime:
    """The functions; ``module()`` exposes them as ``cuda.bindings.runtime``."""

    def __init__(self, machine: FakeMachine) -> None:
        self.machine = machine

    def module(self) -> types.ModuleType:
        runtime = types.ModuleType("cuda.bindings.runtime")
        for name in ("cudaError_t", "cudaMemcpyKind", "cudaDeviceAttr", "cudaStream_t", "cudaEvent_t"):
            setattr(runtime, name, globals()[name])
        for name in dir(self):
            if name.startswith("cuda"):
                setattr(runtime, name, getattr(self, name))
        return runtime

    def _unusable(self) -> cudaError_t | None:
        """The error every device call returns when CUDA cannot use a GPU, or None when it can."""
        if self.machine.driver_too_old:  # also what a machine without a driver reports
            return cudaError_t.cudaErrorInsufficientDriver
        return cudaError_t.cudaErrorNoDevice if self.machine.gpu is None else None

    # -------------------------------------------------------------- devices

    def cudaGetErrorName(self, error: cudaError_t) -> tuple[cudaError_t, bytes]:  # noqa: N802
        _strict("cudaGetErrorName", error=(error, cudaError_t))
        return cudaError_t.cudaSuccess, error.name.encode()

    def cudaDriverGetVersion(self) -> tuple[cudaError_t, int]:  # noqa: N802 - works without a usable GPU
        return cudaError_t.cudaSuccess, self.machine.driver

    def cudaRuntimeGetVersion(self) -> tuple[cudaError_t, int]:  # noqa: N802 - the runtime's own, no driver needed
        return cudaError_t.cudaSuccess, self.machine.runtime

    def cudaGetDeviceCount(self) -> tuple[cudaError_t, int | None]:  # noqa: N802
        error = self._unusable()
        return (error, None) if error else (cudaError_t.cudaSuccess, len(self.machine.gpus))

    def cudaGetDevice(self) -> tuple[cudaError_t, int | None]:  # noqa: N802
        error = self._unusable()
        return (error, None) if error else (cudaError_t.cudaSuccess, 0)

    def cudaGetDeviceProperties(self, device: int) -> tuple[cudaError_t, Any]:  # noqa: N802
        _strict("cudaGetDeviceProperties", device=(device, int))
        error = self._unusable() or (cudaError_t.cudaErrorInvalidDevice if device >= len(self.machine.gpus) else None)
        if error:
            return error, None
        gpu = self.machine.gpus[device]
        # cudaDeviceProp.name is the C char[256]: bytes, NUL-padded
        return cudaError_t.cudaSuccess, types.SimpleNamespace(name=gpu.name.encode() + b"\0" * 4,
                                                              major=gpu.capability[0], minor=gpu.capability[1],
                                                              totalGlobalMem=gpu.memory)

    def cudaDeviceGetAttribute(self, attr: cudaDeviceAttr, device: int) -> tuple[cudaError_t, int | None]:  # noqa: N802
        _strict("cudaDeviceGetAttribute", attr=(attr, cudaDeviceAttr), device=(device, int))
        error = self._unusable()
        if error:
            return error, None
        major, minor = self.machine.gpus[device].capability
        return cudaError_t.cudaSuccess, major if attr == cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor else minor

    def cudaMemGetInfo(self) -> tuple[cudaError_t, int | None, int | None]:  # noqa: N802
        gpu, error = self.machine.gpu, self._unusable()
        if gpu is None or error:
            return error or cudaError_t.cudaErrorNoDevice, None, None
        return cudaError_t.cudaSuccess, gpu.memory - self.machine.used(), gpu.memory

    # -------------------------------------------------------------- memory

    def cudaMalloc(self, size: int) -> tuple[cudaError_t, int | None]:  # noqa: N802
        _strict("cudaMalloc", size=(size, int))
        error = self._unusable()
        if error:
            return error, None
        buffer = ctypes.create_string_buffer(max(size, 1))
        pointer = ctypes.addressof(buffer)
        self.machine.allocations[pointer] = buffer
        self.machine.freed.discard(pointer)
        return cudaError_t.cudaSuccess, pointer

    def cudaFree(self, devPtr: int) -> tuple[cudaError_t]:  # noqa: N802, N803
        _strict("cudaFree", devPtr=(devPtr, int))
        if devPtr not in self.machine.allocations:
            return (cudaError_t.cudaErrorInvalidDevicePointer,)
        del self.machine.allocations[devPtr]
        self.machine.freed.add(devPtr)
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: cudaMemcpyKind,  # noqa: N802
                        stream: Any) -> tuple[cudaError_t]:
        _strict("cudaMemcpyAsync", dst=(dst, int), src=(src, int), count=(count, int), kind=(kind, cudaMemcpyKind),
                stream=(stream, (cudaStream_t, int)))
        handle = int(stream)
        device, host = {cudaMemcpyKind.cudaMemcpyHostToDevice: (dst, src),
                        cudaMemcpyKind.cudaMemcpyDeviceToHost: (src, dst)}.get(kind, (None, None))
        if device is None or handle not in self.machine.streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        if not self.machine.allocation(device, count) or self.machine.allocation(host, 1):
            return (cudaError_t.cudaErrorInvalidValue,)  # not device memory, past its end, or host is device
        ctypes.memmove(dst, src, count)
        self.machine.advance(handle, COPY_LATENCY_MS + count * COPY_MS_PER_BYTE)
        return (cudaError_t.cudaSuccess,)

    # -------------------------------------------------------------- streams and events

    def cudaStreamCreate(self) -> tuple[cudaError_t, cudaStream_t | None]:  # noqa: N802
        error = self._unusable()
        if error:
            return error, None
        handle = self.machine.handle()
        self.machine.streams[handle] = 0.0
        return cudaError_t.cudaSuccess, cudaStream_t(handle)

    def cudaStreamDestroy(self, stream: cudaStream_t) -> tuple[cudaError_t]:  # noqa: N802
        _strict("cudaStreamDestroy", stream=(stream, (cudaStream_t, int)))
        if self.machine.streams.pop(int(stream), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: cudaStream_t) -> tuple[cudaError_t]:  # noqa: N802
        _strict("cudaStreamSynchronize", stream=(stream, (cudaStream_t, int)))
        if int(stream) not in self.machine.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        for event in self.machine.events.values():
            if event.stream == int(stream):
                event.complete = True
        return (cudaError_t.cudaSuccess,)

    def cudaEventCreate(self) -> tuple[cudaError_t, cudaEvent_t | None]:  # noqa: N802
        error = self._unusable()
        if error:
            return error, None
        handle = self.machine.handle()
        self.machine.events[handle] = _Event()
        return cudaError_t.cudaSuccess, cudaEvent_t(handle)

    def cudaEventRecord(self, event: cudaEvent_t, stream: Any) -> tuple[cudaError_t]:  # noqa: N802
        _strict("cudaEventRecord", event=(event, cudaEvent_t), stream=(stream, (cudaStream_t, int)))
        record, handle = self.machine.events.get(int(event)), int(stream)
        if record is None or handle not in self.machine.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        record.stream, record.time_ms, record.complete = handle, self.machine.streams[handle], False
        record.order = self.machine.handle()
        return (cudaError_t.cudaSuccess,)

    def cudaEventSynchronize(self, event: cudaEvent_t) -> tuple[cudaError_t]:  # noqa: N802
        _strict("cudaEventSynchronize", event=(event, cudaEvent_t))
        record = self.machine.events.get(int(event))
        if record is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        for other in self.machine.events.values():  # stream order: what was recorded before has completed too
            if record.time_ms is not None and other.stream == record.stream and other.order <= record.order:
                other.complete = True
        return (cudaError_t.cudaSuccess,)

    def cudaEventElapsedTime(self, start: cudaEvent_t, end: cudaEvent_t) -> tuple[cudaError_t, float | None]:  # noqa: N802
        _strict("cudaEventElapsedTime", start=(start, cudaEvent_t), end=(end, cudaEvent_t))
        first, last = self.machine.events.get(int(start)), self.machine.events.get(int(end))
        if first is None or last is None:
            return cudaError_t.cudaErrorInvalidResourceHandle, None
        if not (first.complete and last.complete):  # CUDA: the events must have completed
            return cudaError_t.cudaErrorNotReady, None
        return cudaError_t.cudaSuccess, float(last.time_ms - first.time_ms)  # type: ignore[operator]

    def cudaEventDestroy(self, event: cudaEvent_t) -> tuple[cudaError_t]:  # noqa: N802
        _strict("cudaEventDestroy", event=(event, cudaEvent_t))
        if self.machine.events.pop(int(event), None) is None:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)
