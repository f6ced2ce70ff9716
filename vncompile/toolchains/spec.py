"""Toolchain specs as data: what a vendor SDK's own virtual environment holds.

A vendor SDK that pins old packages (rknn-toolkit2: numpy<=1.26.4, onnx<=1.18,
torch<=2.4) cannot share vncompile's environment. Its spec lists the pinned
requirements pip resolves normally, the packages installed ``--no-deps`` (the SDK
itself, whose metadata would drag in what we replace, and any wheel that must
come from a special index), the Python versions its wheels exist for, and how
to check and read the installed version. Adding the next vendor is one more spec
and one worker script under ``workers/``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import InputError

WORKERS_DIR = Path(__file__).parent / "workers"


@dataclass(frozen=True)
class NoDepsPackage:
    """A requirement installed with ``pip install --no-deps`` (optionally from an extra index)."""

    requirement: str
    extra_index_url: str | None = None


@dataclass(frozen=True)
class ToolchainSpec:
    name: str
    description: str
    distribution: str  # the vendor package; its version is the toolchain's version
    requirements: tuple[str, ...]  # installed together, with their dependencies
    no_deps: tuple[NoDepsPackage, ...]  # installed afterwards, one by one, without dependencies
    python_versions: tuple[str, ...]  # "3.12", "3.11", ...: the interpreters the vendor wheels exist for
    import_check: str  # a Python statement that must succeed in the environment
    worker: str  # file name under ``workers/``, run by the environment's python
    fixed_addresses: bool = False  # run the worker without address randomization (reproducible artifacts)
    helpers: tuple[str, ...] = ()  # modules under ``workers/`` the worker imports, copied beside it
    # installed first, one by one, without dependencies: what the requirements depend on but must come from
    # a special index (the CPU torch), so that pip's resolver then finds it satisfied and keeps it
    first: tuple[NoDepsPackage, ...] = ()

    @property
    def worker_path(self) -> Path:
        return WORKERS_DIR / self.worker

    def fingerprint(self) -> str:
        """Hash of what an installation depends on: a changed spec makes old installations stale."""
        ignored = ("description", "worker", "fixed_addresses", "helpers")
        install = {k: v for k, v in asdict(self).items() if k not in ignored}
        return hashlib.sha256(json.dumps(install, sort_keys=True).encode()).hexdigest()[:16]


# rknn-toolkit2 2.5.0 declares torch<=2.4, onnx<=1.18, protobuf<=4.25.4, numpy<=1.26.4.
# - torch: its quantizer imports torch.nn at import time (gdq_quant), so the SDK does not import
#   without one. We install the CPU build of the torch vncompile itself uses, --no-deps (never the
#   CUDA packages a PyPI torch pulls in); the ONNX path we use (fp16, and int8 with normal, mmse
#   and kl_divergence) was measured to work with it. Its own dependencies are pinned below.
# - setuptools<81: the SDK imports pkg_resources; torch wants >=77.0.3.
# - opencv-python-headless instead of the declared opencv-python: same cv2 module, without the
#   libGL the GUI build needs on a server.
# - scipy/networkx: the newest releases that still install on Python 3.10.
RKNN = ToolchainSpec(
    name="rknn",
    description="Rockchip rknn-toolkit2: ONNX -> .rknn for Rockchip NPUs, with an x86 simulator",
    distribution="rknn-toolkit2",
    requirements=(
        "numpy==1.26.4",
        "onnx==1.18.0",
        "protobuf==4.25.4",
        "setuptools==80.9.0",
        "onnxruntime==1.20.1",
        "scipy==1.13.1",
        "opencv-python-headless==4.11.0.86",
        "psutil==7.0.0",
        "ruamel.yaml==0.18.10",
        "tqdm==4.67.1",
        "fast-histogram==0.14",
        "filelock==3.18.0",
        "typing-extensions==4.13.2",
        "sympy==1.14.0",
        "networkx==3.4.2",
        "jinja2==3.1.6",
        "fsspec==2025.3.2",
    ),
    no_deps=(
        NoDepsPackage("rknn-toolkit2==2.5.0"),
        NoDepsPackage("torch==2.13.0+cpu", extra_index_url="https://download.pytorch.org/whl/cpu"),
    ),
    python_versions=("3.12", "3.11", "3.10"),
    import_check="from rknn.api import RKNN",
    worker="rknn_worker.py",
    # A .rknn's header holds heap addresses: with randomization off (and the worker's canonical
    # environment and paths, see canonical.py), two builds are byte-identical.
    fixed_addresses=True,
)

# litert-torch 0.10 (torch.export -> PT2E int8 -> TFLite, no TensorFlow) and ethos-u-vela 5.2 (TFLite ->
# Ethos-U command stream, with its SRAM/DRAM plan and cycle estimate). litert-torch takes any torch >= 2.4:
# the CPU build vncompile uses, installed first from PyTorch's CPU index (pip then finds it satisfied; a bare
# "torch" would pull the CUDA build), its own dependencies pinned with the rest. What
# its conversion runs through is pinned too (torchao's PT2E, the TFLite converter and quantizer, jax,
# numpy), so an install made later converts the same way. onnx reads the verified graph the worker
# rebuilds in torch (``workers/onnx_as_torch.py``).
ETHOS_U = ToolchainSpec(
    name="ethos-u",
    description="Arm Ethos-U: litert-torch int8 TFLite, compiled by vela (SRAM/DRAM plan, cycle estimate)",
    distribution="ethos-u-vela",
    first=(NoDepsPackage("torch==2.13.0+cpu", extra_index_url="https://download.pytorch.org/whl/cpu"),),
    requirements=(
        "litert-torch==0.10.0",
        "ethos-u-vela==5.2.0",
        "onnx==1.23.2",
        "torchao==0.18.0",
        "litert-converter==0.5.0",
        "ai-edge-litert==2.3.0",
        "ai-edge-quantizer==0.10.0",
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "numpy==2.4.6",
        "ml-dtypes==0.6.0",
        "flatbuffers==25.12.19",
        "protobuf==7.36.2",
        # torch's own
        "filelock==4.2.12",
        "fsspec==2026.9.0",
        "jinja2==3.1.6",
        "networkx==3.6.1",
        "setuptools==84.2.1",
        "sympy==1.14.0",
        "typing-extensions==4.12.2",
    ),
    no_deps=(),
    python_versions=("3.11", "3.12"),
    import_check="import litert_torch, ethosu.vela, ai_edge_litert.interpreter",
    worker="ethos_u_worker.py",
    helpers=("onnx_as_torch.py",),
)

TOOLCHAINS: dict[str, ToolchainSpec] = {spec.name: spec for spec in (RKNN, ETHOS_U)}


def get_spec(name: str) -> ToolchainSpec:
    if name not in TOOLCHAINS:
        raise InputError(f"unknown toolchain '{name}'; choose from {', '.join(TOOLCHAINS)}")
    return TOOLCHAINS[name]
