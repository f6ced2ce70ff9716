"""Where toolchains live and what is installed there, read without running anything.

``<root>/<name>/`` holds ``toolchain.json`` (the marker, written last by an install)
and the virtual environment it names. No marker, a marker for another spec, or a
missing interpreter: not installed. So a failed or interrupted install never looks
installed, and checking costs one small file read.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spec import TOOLCHAINS, ToolchainSpec, get_spec

MARKER = "toolchain.json"


def default_root() -> Path:
    """``$VNCOMPILE_TOOLCHAIN_DIR``, else the per-user data directory."""
    if os.environ.get("VNCOMPILE_TOOLCHAIN_DIR"):
        return Path(os.environ["VNCOMPILE_TOOLCHAIN_DIR"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "vncompile" / "toolchains"


def toolchain_home(name: str, root: Path | None = None) -> Path:
    return Path(root if root is not None else default_root()) / name


def venv_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


@dataclass(frozen=True)
class InstalledToolchain:
    name: str
    path: Path  # the toolchain's home, ``<root>/<name>``
    installed: bool
    version: str | None = None  # the vendor package's version
    python: Path | None = None  # the environment's interpreter
    stale: bool = False  # installed for an older spec: reinstall

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "installed": self.installed, "version": self.version, "path": str(self.path)}

    @property
    def fix(self) -> str:
        return f"vncompile toolchain install {self.name}"


def read_marker(home: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((home / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def locate(name: str, root: Path | None = None) -> InstalledToolchain:
    """What ``<root>/<name>`` holds; cheap (no subprocess)."""
    return locate_spec(get_spec(name), toolchain_home(name, root))


def locate_spec(spec: ToolchainSpec, home: Path) -> InstalledToolchain:
    marker = read_marker(home)
    if marker is None or not isinstance(marker.get("env"), str):
        return InstalledToolchain(spec.name, home, installed=False)
    python = venv_python(home / marker["env"])
    if not python.exists():
        return InstalledToolchain(spec.name, home, installed=False)
    stale = marker.get("fingerprint") != spec.fingerprint()
    return InstalledToolchain(spec.name, home, installed=not stale, version=marker.get("version"), python=python,
                              stale=stale)


def marker_document(spec: ToolchainSpec, env_name: str, version: str, base_python: str) -> dict[str, Any]:
    return {"name": spec.name, "version": version, "env": env_name, "fingerprint": spec.fingerprint(),
            "base_python": base_python}


def list_toolchains(root: Path | None = None) -> list[InstalledToolchain]:
    """Every known toolchain, installed or not."""
    return [locate(name, root) for name in TOOLCHAINS]
