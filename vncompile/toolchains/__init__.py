"""Vendor toolchains that pin old packages, each in its own virtual environment.

A spec (``spec.py``) says what an environment holds; ``install`` creates it under
``$VNCOMPILE_TOOLCHAIN_DIR`` (default: the per-user data directory), ``locate`` and
``list_toolchains`` say what is there without running anything, and ``start_worker``
runs the toolchain's worker script in it, spoken to through a small JSON protocol
(``worker.py``), because the vendor SDK cannot be imported into vncompile's own
environment.
"""

from __future__ import annotations

from .install import ToolchainInstallError, install, install_spec
from .installed import InstalledToolchain, default_root, list_toolchains, locate, toolchain_home
from .spec import TOOLCHAINS, NoDepsPackage, ToolchainSpec, get_spec
from .worker import (
    MalformedReply,
    ToolchainError,
    ToolchainMissing,
    Worker,
    WorkerCrashed,
    WorkerReply,
    WorkerRequestFailed,
    WorkerTimeout,
    missing_message,
    start_worker,
)

__all__ = [
    "TOOLCHAINS", "InstalledToolchain", "MalformedReply", "NoDepsPackage", "ToolchainError", "ToolchainInstallError",
    "ToolchainMissing", "ToolchainSpec", "Worker", "WorkerCrashed", "WorkerReply", "WorkerRequestFailed",
    "WorkerTimeout", "default_root", "get_spec", "install", "install_spec", "list_toolchains", "locate",
    "missing_message", "start_worker", "toolchain_home",
]
