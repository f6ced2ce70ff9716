"""The build cache: directories keyed by the hash of everything that made them.

Three kinds of entry: ``reference`` holds the float64 reference outputs, shared by every
build of the same weights, shape and verification inputs (any target, precision or graph);
``onnx`` holds the target-independent stages (exported, simplified and target-ready ONNX,
the ONNX stages' errors), shared by every target that asks for the same graph; ``builds``
holds finished bundles.
An entry is trusted only if every artifact its manifest lists still has the recorded
size and sha256; an altered entry is dropped and rebuilt. A per-key file lock makes
two concurrent identical builds do the work once: the second waits, then hits.

The cache is bounded (``$VNCOMPILE_CACHE_MAX_SIZE``, default 20 GB; the README's profile
alone stores ~13 GB of full-size ONNX and artifacts): after each store, the entries used
longest ago are evicted until it fits, sparing any used within the last hour (a profile
measures a build after it is stored) and any another process holds: its key's lock (being built)
or its readers' lock (``reading``: a build reading its ONNX entry, a profile measuring a build, ci
copying one). Every vncompile command that builds holds the cache's shared "in use" lock while it
runs, so ``clear`` (which needs it exclusively) never pulls files from under a running build.
Writes a killed process left behind (``.<key>.tmp-*``, ``.<key>.evicted-*``) are removed by the next
trim once they are an hour old, and by ``clear``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InputError, VncompileError
from ..core.io import atomic_directory, file_lock, link_or_copy, try_file_lock
from ..core.units import megabytes, parse_memory_size
from .manifest import intact, read_manifest

log = logging.getLogger("vncompile")


def default_cache_root() -> Path:
    if os.environ.get("VNCOMPILE_CACHE_DIR"):
        return Path(os.environ["VNCOMPILE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vncompile"


KINDS = ("reference", "onnx", "builds")
MAX_SIZE_ENV = "VNCOMPILE_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = "20GB"
UNLIMITED = ("none", "unlimited")
IN_USE_LOCK = "in-use.lock"  # not a key's (keys are hex digests)
IN_USE_S = 3600.0  # an entry used this recently may still be read by the process that used it


class _FromEnvironment:
    """BuildCache's default bound: ``$VNCOMPILE_CACHE_MAX_SIZE``."""


FROM_ENVIRONMENT = _FromEnvironment()


def default_max_bytes() -> int | None:
    """``$VNCOMPILE_CACHE_MAX_SIZE`` (e.g. 20GB; none: unbounded) in bytes."""
    text = os.environ.get(MAX_SIZE_ENV, DEFAULT_MAX_SIZE).strip()
    if text.lower() in UNLIMITED:
        return None
    try:
        return math.ceil(parse_memory_size(text) * 1024)
    except ValueError:
        raise InputError(f"${MAX_SIZE_ENV} must be a memory size such as 20GB or 900MB, or 'none' for no bound; "
                         f"got '{text}'") from None


@dataclass(frozen=True)
class CacheEntry:
    kind: str
    key: str
    path: Path
    bytes: int
    last_used: float  # the entry directory's mtime: set when stored and on every hit


def reading(entry: Path) -> contextlib.AbstractContextManager[None]:
    """Held (shared) while a process reads ``entry``, a cache directory it looked up or stored: no other process
    evicts it meanwhile."""
    return file_lock(_readers_lock(entry), what="build cache lock", shared=True)


def _readers_lock(entry: Path) -> Path:
    return entry.parent.parent / "locks" / f"{entry.name}.readers.lock"


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a build directory's files into an (empty) directory; files that are hard links of one another stay so."""
    copied: dict[tuple[int, int], Path] = {}
    for item in src.iterdir():
        if item.is_dir():
            shutil.copytree(item, dst / item.name)
            continue
        stat = item.stat()
        first = copied.get((stat.st_dev, stat.st_ino)) if stat.st_nlink > 1 else None
        if first is not None:
            link_or_copy(first, dst / item.name)
        else:
            shutil.copy2(item, dst / item.name)
            copied[(stat.st_dev, stat.st_ino)] = dst / item.name


class BuildCache:
    def __init__(self, root: Path | None = None, max_bytes: int | None | _FromEnvironment = FROM_ENVIRONMENT,
                 in_use_s: float = IN_USE_S) -> None:
        self.root = Path(root) if root is not None else default_cache_root()
        self.max_bytes = default_max_bytes() if isinstance(max_bytes, _FromEnvironment) else max_bytes
        self.in_use_s = in_use_s

    def entry(self, key: str, kind: str = "builds") -> Path:
        return self.root / kind / key

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        return file_lock(self._key_lock(key), what="build cache lock")

    def _key_lock(self, key: str) -> Path:
        return self.root / "locks" / f"{key}.lock"

    def in_use(self) -> contextlib.AbstractContextManager[None]:
        """Held (shared) by every process that builds, for as long as it runs: ``clear`` waits for none of them."""
        return file_lock(self.root / "locks" / IN_USE_LOCK, what="build cache lock", shared=True)

    def lookup(self, key: str, kind: str = "builds") -> dict[str, Any] | None:
        """The cached manifest, or None (an altered entry is removed so it gets rebuilt)."""
        entry = self.entry(key, kind)
        if not entry.is_dir():
            return None
        manifest = read_manifest(entry)
        if manifest is not None and manifest.get("cache_key") == key and intact(entry, manifest):
            _touch(entry)
            return manifest
        log.warning("cache entry %s was altered; rebuilding", key[:12])
        shutil.rmtree(entry, ignore_errors=True)
        return None

    def store(self, key: str, directory: Path, kind: str = "builds") -> Path:
        """Copy ``directory`` into the cache; returns the entry."""
        entry = self.entry(key, kind)
        # Under the cache's root every directory is the cache's own.
        with atomic_directory(entry, lambda _: True, force=True, what="build cache entry") as tmp:
            copy_tree(directory, tmp)
        _touch(entry)
        self.trim(keep=entry)
        return entry

    def entries(self) -> list[CacheEntry]:
        """Every entry, the least recently used first."""
        found = []
        for kind in KINDS:
            with contextlib.suppress(FileNotFoundError):
                for path in (self.root / kind).iterdir():
                    if path.name.startswith(".") or not path.is_dir():  # another process's write in progress
                        continue
                    with contextlib.suppress(FileNotFoundError):  # evicted by another process meanwhile
                        found.append(CacheEntry(kind, path.name, path, _tree_bytes(path), path.stat().st_mtime))
        return sorted(found, key=lambda e: e.last_used)

    def leftovers(self) -> list[Path]:
        """Directories a write or an eviction left when its process was killed (and ones in progress)."""
        found = []
        for kind in KINDS:
            with contextlib.suppress(FileNotFoundError):
                found += [p for p in (self.root / kind).iterdir() if p.name.startswith(".") and p.is_dir()]
        return found

    def _remove_leftovers(self, older_than_s: float) -> None:
        now = time.time()
        for path in self.leftovers():
            with contextlib.suppress(FileNotFoundError):
                # An eviction renames an entry away keeping its (old) mtime: removing it twice is harmless.
                if ".evicted-" in path.name or now - path.stat().st_mtime >= older_than_s:
                    shutil.rmtree(path, ignore_errors=True)

    def trim(self, keep: Path | None = None) -> list[CacheEntry]:
        """Evict the least recently used entries until the cache fits ``max_bytes``; what was evicted."""
        self._remove_leftovers(older_than_s=self.in_use_s)
        if self.max_bytes is None:
            return []
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        evicted: list[CacheEntry] = []
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.path != keep and self.evict(entry, unused_for_s=self.in_use_s):
                total -= entry.bytes
                evicted.append(entry)
        if evicted:
            log.info("build cache over %s: evicted %d least recently used entries (%s)",
                     megabytes(self.max_bytes), len(evicted), megabytes(sum(e.bytes for e in evicted)))
        return evicted

    def evict(self, entry: CacheEntry, unused_for_s: float = 0.0) -> bool:
        """Remove one entry unless another process holds its lock or reads it, or it was used in the last
        ``unused_for_s`` seconds; whether it was removed. Renamed away first, so a lookup sees the whole entry
        or none."""
        with (try_file_lock(self._key_lock(entry.key), what="build cache lock") as locked,
              try_file_lock(_readers_lock(entry.path), what="build cache lock") as unread):
            if not (locked and unread):
                return False
            try:
                # Looked again under the locks: a process may have used it since the entries were listed.
                if time.time() - entry.path.stat().st_mtime < unused_for_s:
                    return False
                doomed = entry.path.parent / f".{entry.key}.evicted-{uuid.uuid4().hex[:8]}"
                os.rename(entry.path, doomed)
            except FileNotFoundError:  # another process evicted it first
                return False
        shutil.rmtree(doomed, ignore_errors=True)
        return True

    def clear(self) -> list[CacheEntry]:
        """Remove every entry, refused while another vncompile process builds; what was removed."""
        with try_file_lock(self.root / "locks" / IN_USE_LOCK, what="build cache lock") as alone:
            if not alone:
                raise VncompileError(f"the build cache {self.root} is in use by another vncompile process (a build, "
                                     "profile or ci run); clear it when that ends")
            removed = [entry for entry in self.entries() if self.evict(entry)]
            self._remove_leftovers(older_than_s=0.0)
            return removed


def _touch(entry: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache still serves; it only ages
        os.utime(entry)


def _tree_bytes(path: Path) -> int:
    """The bytes on disk, each hard-linked file once."""
    sizes = {}
    for f in path.rglob("*"):
        if f.is_file():
            stat = f.stat()
            sizes[(stat.st_dev, stat.st_ino)] = stat.st_size
    return sum(sizes.values())
