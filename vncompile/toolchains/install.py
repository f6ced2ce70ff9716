"""``vncompile toolchain install NAME``: a pinned virtual environment for a vendor SDK.

The environment is created beside the marker as ``env-<random>`` (padded to a path of fixed
length: ``canonical.environment_name``) and becomes the
installed one only when ``toolchain.json`` is replaced at the very end, after the
SDK imported. A failure or an interrupt removes the new environment and leaves any
previous installation as it was. A second install verifies the existing one (the
SDK imports) and returns. Concurrent installs of one toolchain (two test workers)
serialize on a lock file; the second finds the first's result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from ..core.errors import InputError, VncompileError
from ..core.io import atomic_file, file_lock, write_json
from .canonical import environment_name
from .installed import MARKER, InstalledToolchain, locate_spec, marker_document, toolchain_home, venv_python
from .spec import NoDepsPackage, ToolchainSpec, get_spec

PYTHON_OVERRIDE = "VNCOMPILE_TOOLCHAIN_PYTHON"
INSTALL_LOG = "install.log"


class ToolchainInstallError(VncompileError):
    """Creating or verifying a toolchain environment failed."""


def toolchain_environ() -> dict[str, str]:
    """The environment the installer's pip and import check run in: nothing of ours leaks into their imports.
    (A worker gets a canonical environment instead: ``canonical.canonical_environ``.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"  # ~/.local site-packages would shadow the pinned ones
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def install(name: str, root: Path | None = None, force: bool = False, console: Any = None) -> InstalledToolchain:
    """Create (or verify) the toolchain ``name`` under ``root``; ``console``: a rich Console for progress."""
    return install_spec(get_spec(name), root, force=force, console=console)


def install_spec(spec: ToolchainSpec, root: Path | None = None, force: bool = False,
                 console: Any = None) -> InstalledToolchain:
    home = toolchain_home(spec.name, root)
    display = _Display(console)
    with file_lock(home.parent / f".{spec.name}.lock"):
        current = locate_spec(spec, home)
        if current.installed and current.python is not None and not force:
            with display.step(f"verify {spec.name} {current.version}") as step:
                if _import_check(spec, current.python) is not None:
                    return current
                step.fail(f"{spec.distribution} does not import in {home}; reinstalling")
        return _fresh_install(spec, home, display)


def _fresh_install(spec: ToolchainSpec, home: Path, display: _Display) -> InstalledToolchain:
    home.mkdir(parents=True, exist_ok=True)
    env = home / environment_name(home, uuid.uuid4().hex[:8])
    log_path = home / INSTALL_LOG
    try:
        with open(log_path, "w") as log:
            base_python, base_version = find_python(spec)
            version = _build_environment(spec, env, base_python, base_version, log, log_path, display)
        with atomic_file(home / MARKER, force=True, what="toolchain marker") as tmp:
            write_json(tmp, marker_document(spec, env.name, version, base_python))
    except BaseException:
        shutil.rmtree(env, ignore_errors=True)
        raise
    _remove_other_environments(home, keep=env.name)
    return locate_spec(spec, home)


def _build_environment(spec: ToolchainSpec, env: Path, base_python: str, base_version: str, log: IO[str],
                       log_path: Path, display: _Display) -> str:
    with display.step(f"create the environment (Python {base_version})") as step:
        _run([base_python, "-m", "venv", str(env)], log, step, "creating the virtual environment", log_path)
    python = str(venv_python(env))
    pip = [python, "-m", "pip", "install", "--no-input", "--progress-bar", "off"]

    def install_no_deps(packages: tuple[NoDepsPackage, ...]) -> None:
        for package in packages:
            index = ["--extra-index-url", package.extra_index_url] if package.extra_index_url else []
            with display.step(f"install {package.requirement} (--no-deps)") as step:
                _run([*pip, "--no-deps", *index, package.requirement], log, step,
                     f"installing {package.requirement}", log_path)

    install_no_deps(spec.first)
    with display.step(f"install {len(spec.requirements)} pinned requirements") as step:
        _run([*pip, *spec.requirements], log, step, "installing the pinned requirements", log_path)
    install_no_deps(spec.no_deps)
    with display.step(f"import {spec.distribution}"):
        version = _import_check(spec, Path(python), log)
    if version is None:
        raise ToolchainInstallError(f"{spec.distribution} was installed but does not import in {env}; "
                                    f"see {log_path}")
    return version


def _import_check(spec: ToolchainSpec, python: Path, log: IO[str] | None = None) -> str | None:
    """The vendor package's version if it imports in the environment, else None."""
    code = f"{spec.import_check}\nimport importlib.metadata as m\nprint(m.version({spec.distribution!r}))"
    try:
        done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300,
                              env=toolchain_environ())
    except (OSError, subprocess.TimeoutExpired) as exc:
        if log is not None:
            log.write(f"import check failed: {exc}\n")
        return None
    if log is not None:
        log.write(done.stdout + done.stderr)
    lines = done.stdout.split()
    return lines[-1] if done.returncode == 0 and lines else None


def _run(command: list[str], log: IO[str], step: _Step, what: str, log_path: Path) -> None:
    """Run ``command``, its output into the install log and the last line onto the display."""
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    tail: deque[str] = deque(maxlen=50)
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=toolchain_environ())
    except OSError as exc:
        raise ToolchainInstallError(f"{what} failed: {exc}") from None
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            log.write(line)
            if line.strip():
                tail.append(line.strip())
                step.update(line.strip())
    log.flush()
    if proc.returncode != 0:
        raise ToolchainInstallError(f"{what} failed (exit {proc.returncode}): {_failure_line(tail)}; "
                                    f"full log: {log_path}")


def _failure_line(tail: deque[str]) -> str:
    errors = [line for line in tail if line.startswith("ERROR:") or "Error" in line.split(":")[0]]
    return (errors or list(tail) or ["no output"])[-1]


def _remove_other_environments(home: Path, keep: str) -> None:
    for path in home.glob("env-*"):
        if path.name != keep:
            shutil.rmtree(path, ignore_errors=True)


def find_python(spec: ToolchainSpec) -> tuple[str, str]:
    """An interpreter the vendor's wheels exist for: ``$VNCOMPILE_TOOLCHAIN_PYTHON``, this one, or pythonX.Y."""
    override = os.environ.get(PYTHON_OVERRIDE)
    if override:
        version = _python_version(override)
        if version not in spec.python_versions:
            raise InputError(f"{PYTHON_OVERRIDE}={override} is Python {version or '?'}; the {spec.name} toolchain "
                             f"needs Python {', '.join(spec.python_versions)}")
        return override, version  # type: ignore[return-value]
    candidates = [sys.executable, *(shutil.which(f"python{v}") for v in spec.python_versions)]
    for candidate in candidates:
        version = _python_version(candidate) if candidate else None
        if version in spec.python_versions:
            return candidate, version  # type: ignore[return-value]
    raise InputError(f"the {spec.name} toolchain needs Python {', '.join(spec.python_versions)} (its wheels exist "
                     f"only for those) and none was found; install one (e.g. python{spec.python_versions[0]}) or "
                     f"set {PYTHON_OVERRIDE}")


def _python_version(python: str) -> str | None:
    try:
        done = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


class _Step:
    """One step on the display: its spinner shows the command's last line; ``fail`` replaces the tick."""

    def __init__(self, title: str, status: Any = None) -> None:
        self.title, self._status, self.failure = title, status, ""

    def update(self, line: str) -> None:
        if self._status is not None:
            from rich.markup import escape

            self._status.update(f"[bold]{escape(self.title)}[/] {escape(line[:100])}")

    def fail(self, message: str) -> None:
        self.failure = message


class _Display:
    """Progress on a rich Console (or nowhere): a spinner per step, then a tick and its time."""

    def __init__(self, console: Any) -> None:
        self._console = console

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[_Step]:
        start = time.perf_counter()
        if self._console is None:
            yield _Step(title)
            return
        from rich.markup import escape

        with self._console.status(f"[bold]{escape(title)}[/]") as status:
            step = _Step(title, status)
            yield step
        if step.failure:
            self._console.print(f"[yellow]✗[/] {escape(title)}: {escape(step.failure)}")
        else:
            self._console.print(f"[green]✓[/] {escape(title)} ({time.perf_counter() - start:.1f} s)")
