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


# The x86 instruction-set extensions that change what an artifact computes, as /proc/cpuinfo names them: without
# VNNI, int8 kernels sum u8 x s8 pairs in saturating 16 bits (vpmaddubsw); bf16 and fp16 arithmetic decide what
# OpenVINO's CPU plugin runs; AMX tiles are another int8 / bf16 path.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                "amx_int8", "amx_bf16")
VNNI = ("avx512_vnni", "avx_vnni")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where /proc/cpuinfo is not readable."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_features() -> list[str]:
    """Which of ``CPU_FEATURES`` this CPU has, in that order (what a manifest records an artifact was verified on)."""
    flags = cpu_flags()
    return [name for name in CPU_FEATURES if name in flags]


def has_vnni() -> bool:
    """Whether int8 dot products here accumulate without 16-bit saturation (AVX-512 VNNI or AVX-VNNI)."""
    return any(name in cpu_flags() for name in VNNI)


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
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "memory_gb": None if memory is None else round(memory / 2**30, 1),
        "gpu": ", ".join(gpus) or None,
        "os": f"{platform.system()} {platform.release()}",
    }
