"""cuda-python's runtime API: the calls vncompile makes, checked, and the probe for a usable GPU.

The probe is CUDA's own ``cudaGetDeviceCount``, not nvidia-smi: JetPack 5 has no nvidia-smi and
JetPack 6's lists little, while the runtime works on every device TensorRT does. It also tells a
missing GPU apart from a driver older than cuda-python's runtime (cuda-python 13 on a CUDA 12
driver), which needs another cuda-python, not another machine.

cuda-python (NVIDIA/cuda-python, cuda_bindings/cuda/bindings/runtime.pyx.in, 12.9 and 13.x): every
call returns ``(cudaError_t, *values)``, the values ``None`` when the call failed.
"""

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


# pyproject's extras, by the CUDA major of the driver: each pins the cuda-python (runtime) major to it
CUDA_EXTRAS = {12: "tensorrt-cu12", 13: "tensorrt-cu13"}


def cuda_version(encoded: int) -> str:
    """CUDA's 1000 * major + 10 * minor encoding (12040) as "12.4"."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


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
        if error == self.api.cudaError_t.cudaSuccess:
            return "" if count > 0 else "no NVIDIA GPU here (CUDA finds none)"
        name = self.error_name(error)
        if name == "cudaErrorNoDevice":
            return f"no NVIDIA GPU here (CUDA finds none: {name})"
        if name == "cudaErrorInsufficientDriver":
            return self.driver_too_old(name)
        return f"CUDA cannot use the GPU here ({name})"

    def driver_too_old(self, error_name: str) -> str:
        """cudaErrorInsufficientDriver: no driver at all, or one older than cuda-python's runtime."""
        driver = self.api.cudaDriverGetVersion()[1] or 0  # 0: no driver is installed
        if driver == 0:
            return f"no NVIDIA GPU here (no NVIDIA driver: {error_name})"
        runtime = self.api.cudaRuntimeGetVersion()[1] or 0
        problem = f"CUDA runtime {cuda_version(runtime)} needs a newer driver than {cuda_version(driver)}: {error_name}"
        driver_major = driver // 1000
        if runtime // 1000 > driver_major and driver_major in CUDA_EXTRAS:
            return (f"{problem}; install cuda-python<{driver_major + 1} "
                    f"(pip install 'vncompile[{CUDA_EXTRAS[driver_major]}]')")
        return f"{problem}; update the NVIDIA driver"

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
