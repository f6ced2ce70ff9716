"""The build cache: directories keyed by the hash of everything that made them.

Two kinds of entry: ``onnx`` holds the target-independent stages (exported,
simplified and target-ready ONNX, the float64 reference outputs), shared by every
target built from the same network and shape; ``builds`` holds finished bundles.
An entry is trusted only if every artifact its manifest lists still has the recorded
size and sha256; an altered entry is dropped and rebuilt. A per-key file lock makes
two concurrent identical builds do the work once: the second waits, then hits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from ..core.io import atomic_directory, file_lock
from .manifest import intact, read_manifest

log = logging.getLogger("vncompile")


def default_cache_root() -> Path:
    if os.environ.get("VNCOMPILE_CACHE_DIR"):
        return Path(os.environ["VNCOMPILE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vncompile"


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a build directory's files into an (empty) directory."""
    for item in src.iterdir():
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)


class BuildCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_root()

    def entry(self, key: str, kind: str = "builds") -> Path:
        return self.root / kind / key

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.root / "locks" / f"{key}.lock", what="build cache lock")

    def lookup(self, key: str, kind: str = "builds") -> dict[str, Any] | None:
        """The cached manifest, or None (an altered entry is removed so it gets rebuilt)."""
        entry = self.entry(key, kind)
        if not entry.is_dir():
            return None
        manifest = read_manifest(entry)
        if manifest is not None and manifest.get("cache_key") == key and intact(entry, manifest):
            return manifest
        log.warning("cache entry %s was altered; rebuilding", key[:12])
        shutil.rmtree(entry, ignore_errors=True)
        return None

    def store(self, key: str, directory: Path, kind: str = "builds") -> Path:
        """Copy ``directory`` into the cache; returns the entry."""
        entry = self.entry(key, kind)
        with atomic_directory(entry, force=True, what="build cache entry") as tmp:
            copy_tree(directory, tmp)
        return entry
