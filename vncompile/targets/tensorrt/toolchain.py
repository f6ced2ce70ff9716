"""TensorRT and cuda-python here: what is missing, and a toolchain safe to create TensorRT objects with."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .cuda import CudaRuntime, GpuFacts, import_cudart

log = logging.getLogger("vncompile")

OLDEST_MAJOR = 10
INSTALL_HINT = "pip install 'vncompile[tensorrt-cu12]', or tensorrt-cu13 with a CUDA 13 driver"


def major_version(version: str) -> int:
    return int(version.split(".")[0])


def import_tensorrt() -> ModuleType | str:
    """The tensorrt module, or why it cannot be used (importing creates no TensorRT object)."""
    try:
        trt = importlib.import_module("tensorrt")
    except ModuleNotFoundError as exc:
        if exc.name != "tensorrt":
            return f"TensorRT does not import ({exc})"
        return f"TensorRT is not installed (on a GPU machine: {INSTALL_HINT})"
    except (ImportError, OSError) as exc:  # a wheel without its libraries, or a broken system install
        return f"TensorRT does not import ({type(exc).__name__}: {exc})"
    if major_version(trt.__version__) < OLDEST_MAJOR:
        return f"TensorRT {trt.__version__} is older than {OLDEST_MAJOR}, the oldest vncompile builds with"
    return trt


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
    """What a real build lacks here, given ``trt`` (the module, or why not): a GPU CUDA can use, TensorRT,
    cuda-python. Creates no TensorRT object. Empty when nothing."""
    cudart = import_cudart()
    if cudart is None:
        missing = [f"cuda-python is not installed ({INSTALL_HINT})"]  # and without it, no CUDA probe either
    else:
        unusable = CudaRuntime(cudart).missing_device()
        missing = [unusable] if unusable else []
    if isinstance(trt, str):
        missing.append(trt)
    return missing


def probe_toolchain() -> Toolchain | str:
    """A usable toolchain, or why there is none (the build is then deferred to the device)."""
    trt = import_tensorrt()
    missing = missing_pieces(trt)
    if missing or isinstance(trt, str):
        return "; ".join(missing)
    cuda = CudaRuntime(import_cudart())  # type: ignore[arg-type]
    return Toolchain(trt, cuda, cuda.current_gpu())


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
