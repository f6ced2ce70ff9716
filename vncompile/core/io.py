"""Writing outputs atomically: a temporary sibling, renamed into place on success.

A failure at any point leaves the destination as it was (absent, or the old output),
and an existing output is replaced only when the caller says so (``--force``). The
OS's refusals (no space, no permission, a read-only file system, a file where a
directory should be) become one ``OutputError`` naming what could not be written.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError, OutputError, OutputExists


def _sibling(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# Failures that say the disk is full even when the OS names no file (a plain write()).
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_WORDS = {errno.EPERM: "permission denied"}  # EPERM's own words ("operation not permitted") hide the cause


def _why(exc: OSError, path: Path) -> str:
    """The reason a write failed, in the words a user acts on."""
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if exc.errno in (errno.ENOTDIR, errno.EEXIST) and blocking is not None:
        return f"{blocking} is a file, not a directory"
    if exc.errno in _WORDS:
        return _WORDS[exc.errno]
    if exc.errno is not None:
        return os.strerror(exc.errno).lower()
    return str(exc)


def output_error(exc: OSError, path: Path, what: str = "output") -> OutputError:
    return OutputError(f"cannot write {what} {path}: {_why(exc, Path(path))}")


def _concerns(exc: OSError, *paths: Path) -> bool:
    """Whether ``exc`` is a failure to write at, under or above ``paths`` (not, say, an unreadable input)."""
    names = [Path(n) for n in (exc.filename, getattr(exc, "filename2", None)) if n is not None]
    if not names:
        return exc.errno in _NO_SPACE
    return any(n == p or p in n.parents or n in p.parents for n in names for p in paths)


def _make_parents(path: Path) -> list[Path]:
    """Create ``path``'s missing parent directories; returns those it created, outermost first."""
    missing = [p for p in reversed(path.parents) if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(directories: list[Path]) -> None:
    for directory in reversed(directories):
        try:
            directory.rmdir()
        except OSError:
            return  # not empty (someone else wrote there meanwhile) or gone: leave it


def refuse_existing(path: Path, force: bool, ours: Callable[[Path], bool] | None = None) -> None:
    """Refuse to write over ``path`` unless ``force``. A directory output (``ours``: whether a directory holds what
    vncompile writes there) is replaced only when it is empty or ``ours`` says so, with or without ``force``:
    ``-o ~ --force`` must not empty a home directory."""
    if not path.exists() and not path.is_symlink():
        return
    if ours is not None:
        refuse_foreign(path, ours)
    if not force:
        raise OutputExists(f"{path} exists; pass --force to replace it")


def refuse_foreign(path: Path, ours: Callable[[Path], bool]) -> None:
    """Refuse ``path`` as a directory output to replace unless it is an empty directory or one ``ours`` recognizes."""
    if path.is_symlink():
        what = "a symbolic link"
    elif not path.is_dir():
        what = "a file"
    elif not any(path.iterdir()) or ours(path):
        return
    else:
        what = "a directory vncompile did not write"
    raise OutputExists(f"{path} is {what}; an output replaces only an empty directory or one vncompile wrote: choose "
                       "another output, or remove it yourself")


def holds_document(directory: Path, name: str, *keys: str) -> bool:
    """Whether ``directory`` holds the JSON object vncompile writes as ``name``, with its ``keys`` (what marks a
    directory as an output of vncompile's)."""
    try:
        document = json.loads((directory / name).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(document, dict) and all(key in document for key in keys)


@contextmanager
def _written(path: Path, what: str, tmp: Path) -> Iterator[list[Path]]:
    """Translate the OS's refusal to write ``path`` (via ``tmp``) into an ``OutputError``.

    Yields a list for the parent directories the writer creates: a failed write removes
    them again, so it leaves nothing behind.
    """
    created: list[Path] = []
    try:
        yield created
    except OSError as exc:
        _remove_empty(created)
        if _concerns(exc, path, tmp, *created):
            raise output_error(exc, path, what) from None
        raise
    except BaseException:
        _remove_empty(created)
        raise


@contextmanager
def atomic_file(path: Path, *, force: bool = False, what: str = "output") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it becomes ``path``.

    ``what`` names the output in the error a failed write raises ("cannot write <what> <path>: ...").
    """
    path = Path(path)
    refuse_existing(path, force)
    tmp = _sibling(path, "tmp")
    with _written(path, what, tmp) as created:
        created += _make_parents(path)
        try:
            yield tmp
            refuse_existing(path, force)  # another process may have written it meanwhile
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_directory(path: Path, ours: Callable[[Path], bool], *, force: bool = False,
                     what: str = "output") -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path``; on success it becomes ``path``.

    Replacing an existing directory (``force``) is two renames, so readers never see a mix of the
    old and new contents; the old one is deleted afterwards. Only an empty directory or one that
    ``ours`` recognizes as vncompile's is ever replaced (``refuse_existing``).
    """
    path = Path(path)
    refuse_existing(path, force, ours)
    tmp = _sibling(path, "tmp")
    with _written(path, what, tmp) as created:
        created += _make_parents(path)
        tmp.mkdir()
        try:
            yield tmp
            refuse_existing(path, force, ours)
            if path.exists():
                old = _sibling(path, "old")
                os.rename(path, old)
                try:
                    os.rename(tmp, path)
                except OSError:
                    os.rename(old, path)  # put the old output back: a failed write leaves it as it was
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


# A work directory's lock is created an instant before it is taken: one this old and free was left by a killed run.
ABANDONED_AFTER_S = 60.0


def work_root() -> Path:
    """Where this user's work directories live (under the system's temporary directory)."""
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    return Path(tempfile.gettempdir()) / f"vncompile{user}"


@contextmanager
def work_directory(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A scratch directory under ``parent`` (``work_root()``), removed on any exit.

    Its lock (``<name>.lock`` beside it) is held while it is in use. A run killed before it could remove its
    directory (SIGKILL, a lost machine) leaves a free lock: the next call removes what it guarded (full-size
    builds leave gigabytes of partial graphs).
    """
    parent = parent or work_root()
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, parent, "work directory") from None
    _remove_abandoned(parent, prefix)
    name = f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lock, directory = parent / f"{name}.lock", parent / name
    with file_lock(lock, what="work directory lock"):
        try:
            directory.mkdir()
            yield directory
        except OSError as exc:
            if _concerns(exc, directory):
                raise output_error(exc, directory, "work directory") from None
            raise
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            lock.unlink(missing_ok=True)


def _remove_abandoned(parent: Path, prefix: str) -> None:
    now = time.time()
    for lock in parent.glob(f"{prefix}*.lock"):
        try:
            if now - lock.stat().st_mtime < ABANDONED_AFTER_S:
                continue
            with try_file_lock(lock, what="work directory lock") as free:
                if free:
                    shutil.rmtree(lock.with_suffix(""), ignore_errors=True)
                    lock.unlink(missing_ok=True)
        except (OSError, OutputError):  # removed by another run meanwhile, or not ours to remove
            continue


@contextmanager
def file_lock(path: Path, what: str = "lock file", *, shared: bool = False) -> Iterator[None]:
    """An exclusive lock between processes, held while the block runs (flock on ``path``); ``shared``: one that
    any number of processes hold at once, excluding only the exclusive one."""
    with _flock(path, what, wait=True, shared=shared):
        yield


@contextmanager
def try_file_lock(path: Path, what: str = "lock file") -> Iterator[bool]:
    """``file_lock`` without waiting: yields whether the lock was free (and is now held)."""
    with _flock(path, what, wait=False) as held:
        yield held


# A directory nobody may write to (a read-only cache): no process can change what the lock guards.
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


@contextmanager
def _flock(path: Path, what: str, wait: bool, shared: bool = False) -> Iterator[bool]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - closed below, after the translation of its failure
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise output_error(exc, path, what) from None
        # Read-only: lock the existing file through a read handle (flock needs no write access); with none to
        # lock, nobody can write what it guards, so there is nothing to exclude.
        try:
            handle = open(path)  # noqa: SIM115
        except OSError:
            yield True
            return
    with handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process lock
            yield True
            return
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            fcntl.flock(handle, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` as a hard link to ``src`` (an identical file stored once), or a copy where links are not possible."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def read_user_text(path: Path) -> str:
    """A text file the user hands over (a label file, a config): UTF-8 (a byte-order mark is dropped), or one line
    naming the file, the line and the byte that is not."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8") from None


def json_text(document: Any) -> str:
    """``document`` as strict JSON, indented: a NaN or an infinity (which only Python's parser reads back) is a bug,
    raised here rather than written."""
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


def write_json(path: Path, document: Any) -> None:
    path.write_text(json_text(document))
