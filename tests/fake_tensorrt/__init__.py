"""A strict, test-only fake of TensorRT 10 and 11 and of cuda-python, injected through ``sys.modules``.

``install(monkeypatch, version, gpus)`` puts a fake ``tensorrt`` (see ``tensorrt_api``) and a fake
``cuda.bindings.runtime`` (see ``cuda_runtime``) in ``sys.modules`` over one fake machine: GPUs, and
the CUDA versions of its driver and of cuda-python's runtime. The fake engine runs its ONNX with ONNX
Runtime, so builds verify for real.
Never shipped: it lives under tests/.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from dataclasses import dataclass

import pytest

from .cuda_runtime import FakeCudaRuntime, FakeGpu, FakeMachine
from .tensorrt_api import FAKE_COMPUTE_MS, FakeCudaCrash, FakeTensorRT

A100 = FakeGpu("NVIDIA A100-SXM4-40GB", (8, 0))
H100 = FakeGpu("NVIDIA H100 80GB HBM3", (9, 0))
TRT10, TRT11 = "10.16.0.72", "11.1.0.106"

__all__ = ["A100", "FAKE_COMPUTE_MS", "H100", "TRT10", "TRT11", "FakeCudaCrash", "FakeGpu", "FakeInstall", "install"]


@dataclass
class FakeInstall:
    api: FakeTensorRT
    trt: types.ModuleType
    cudart: types.ModuleType

    @property
    def machine(self) -> FakeMachine:
        return self.api.machine

    @property
    def records(self):
        return self.api.records


def install(monkeypatch: pytest.MonkeyPatch, version: str = TRT10, gpus: tuple[FakeGpu, ...] = (A100,),
            driver: int = 12080, runtime: int = 12090) -> FakeInstall:
    """Replace tensorrt and cuda-python for the rest of the test (monkeypatch undoes it). ``driver`` and
    ``runtime``: CUDA versions as cudaDriverGetVersion and cudaRuntimeGetVersion encode them (12080: 12.8)."""
    machine = FakeMachine(gpus, driver=driver, runtime=runtime)
    api = FakeTensorRT(version, machine)
    trt, cudart = api.module(), FakeCudaRuntime(machine).module()
    cuda, bindings = types.ModuleType("cuda"), types.ModuleType("cuda.bindings")
    cuda.bindings, bindings.runtime = bindings, cudart  # type: ignore[attr-defined]
    for name, module in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                         ("cuda.bindings.runtime", cudart)):
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # importlib.util.find_spec needs one
        monkeypatch.setitem(sys.modules, name, module)
    return FakeInstall(api, trt, cudart)
