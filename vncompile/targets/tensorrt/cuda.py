"""cuda-python's runtime API: the calls vncompile makes, checked, and the probe for a usable GPU."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ...core.errors import VncompileError


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
