"""Facts about this machine and its toolchains, read without importing the heavy packages."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version

CORE_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime")


def package_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def toolchain_versions(*extra: str) -> dict[str, str | None]:
    """Python and the core packages, plus ``extra`` distributions (a target's, a simplifier)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in (*CORE_PACKAGES, *extra):
        versions[name] = package_version(name)
    return versions


def proc_kb(path: str, field: str) -> int | None:
    """A ``Field:  N kB`` line of a Linux /proc file (meminfo, self/status); None elsewhere."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def total_memory_bytes() -> int | None:
    kb = proc_kb("/proc/meminfo", "MemTotal")
    return None if kb is None else kb * 1024


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def nvidia_gpus() -> tuple[str, ...]:
    """GPU names from nvidia-smi, for machine_info: extra information only, never a check that a GPU is
    usable (JetPack 5 has no nvidia-smi; targets ask CUDA itself)."""
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def machine_info() -> dict[str, object]:
    memory = total_memory_bytes()
    gpus = nvidia_gpus()
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gb": None if memory is None else round(memory / 2**30, 1),
        "gpu": ", ".join(gpus) or None,
        "os": f"{platform.system()} {platform.release()}",
    }
