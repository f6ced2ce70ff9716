"""Where and how a toolchain worker starts, the same for every user: reproducible artifacts.

Some SDKs (rknn-toolkit2) write heap addresses into their artifacts. With address-space
randomization off (``setarch -R``) the heap still moves with everything the process starts
with, and with the length of every path it is handed or finds: the size of its environment,
its argv (the interpreter's and the worker script's paths), its working directory, the paths
in its requests, and where its packages physically are (some resolve their own location with
``realpath`` and load libraries from there). Only lengths matter, not contents. So two users
(another $HOME, cache, $TMPDIR, checkout, toolchain directory) got different .rknn bytes.

Hence a worker starts in a directory of fixed-length path (``/tmp/vncompile-<name>-XXXXXXXX``)
holding its interpreter as a virtual environment of links (``env``, onto the installed
environment's packages, its base Python through ``base``), copies of the worker scripts
(``worker``), and whatever files the caller hands the toolchain; with an environment built from
scratch with fixed values; and the installed environment itself lies at a path of fixed length
(``environment_name`` pads its directory's name).
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from pathlib import Path

from .spec import WORKERS_DIR, ToolchainSpec

PROTOCOL_SCRIPT = "vncompile_worker_protocol.py"
CANONICAL_TMP = Path("/tmp")  # not $TMPDIR: a parent of the same length for everyone
CANONICAL_PATH = "/usr/local/bin:/usr/bin:/bin"
# The length of an installed environment's absolute path: room for a long $HOME under the default
# root (~/.local/share/vncompile/toolchains/<name>/), far below the file system's limits.
ENVIRONMENT_PATH_LENGTH = 160


def environment_name(home: Path, unique: str) -> str:
    """The directory name of a new environment in ``home``: ``env-<unique>``, padded so that its absolute
    path is ``ENVIRONMENT_PATH_LENGTH`` long (unpadded where ``home`` is too long for that)."""
    name = f"env-{unique}"
    padding = ENVIRONMENT_PATH_LENGTH - len(str(Path(home).absolute() / name))
    return name + "-" + "x" * (padding - 1) if padding > 1 else name


def canonical_scratch(name: str) -> Path:
    """A new directory ``/tmp/vncompile-<name>-XXXXXXXX``: the same path length for every user.

    Where /tmp is not writable, the usual temporary directory (builds work, but their artifacts may
    then differ from other users')."""
    parent = CANONICAL_TMP if os.access(CANONICAL_TMP, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix=f"vncompile-{name}-", dir=parent))


def canonical_command(scratch: Path, python: Path, spec: ToolchainSpec) -> list[str]:
    """The worker's command, naming paths inside ``scratch`` only (and no address randomization where the
    spec asks for reproducible artifacts)."""
    scripts = scratch / "worker"
    scripts.mkdir()
    for script in (spec.worker, *spec.helpers, PROTOCOL_SCRIPT):
        shutil.copyfile(WORKERS_DIR / script, scripts / script)
    command = [str(canonical_interpreter(scratch, python)), "-u", str(scripts / spec.worker)]
    return fixed_address_command(command) if spec.fixed_addresses else command


def canonical_interpreter(scratch: Path, python: Path) -> Path:
    """The installed environment's interpreter as ``scratch/env/bin/python``: a virtual environment of links
    onto the installed one's site-packages, with its base Python as ``scratch/base``, so that ``sys.prefix``,
    ``sys.base_prefix`` and ``sys.path`` have the same length wherever the two are installed."""
    venv = python.parents[1]  # <venv>/bin/python
    config = read_venv_config(venv / "pyvenv.cfg")
    site = sorted(venv.glob("lib/python3*/site-packages"))
    env = scratch / "env"
    if not config.get("home") or len(site) != 1:  # a layout we do not know: the environment itself, linked
        env.symlink_to(venv, target_is_directory=True)
        return env / "bin" / python.name
    home = Path(config["home"])
    prefix = Path(os.path.realpath(home.parent))  # <base prefix>/bin
    base = scratch / "base"
    base.symlink_to(prefix, target_is_directory=True)
    packages = env / site[0].relative_to(venv)
    packages.parent.mkdir(parents=True)
    packages.symlink_to(site[0], target_is_directory=True)
    real = Path(os.path.realpath(python))
    interpreter = env / "bin" / "python"
    interpreter.parent.mkdir()
    interpreter.symlink_to(base / real.relative_to(prefix) if real.is_relative_to(prefix) else real)
    (env / "pyvenv.cfg").write_text(f"home = {base / home.name}\ninclude-system-site-packages = false\n"
                                    f"version = {config.get('version', '')}\n")
    return interpreter


def read_venv_config(path: Path) -> dict[str, str]:
    """``pyvenv.cfg``'s ``key = value`` lines; empty where there is none."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {key.strip(): value.strip() for key, sep, value in (line.partition("=") for line in lines) if sep}


def canonical_environ(scratch: Path) -> dict[str, str]:
    """The worker's whole environment: fixed values only, so nothing of the user's (their $HOME,
    $PYTHONPATH, the SDK's own RKNN_* switches, thread limits) reaches the toolchain."""
    return {"PATH": CANONICAL_PATH, "HOME": str(scratch), "TMPDIR": str(scratch), "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def fixed_address_command(command: list[str]) -> list[str]:
    """``command`` with address-space randomization off (``setarch -R``), where the system has setarch.

    With the same addresses on every run (and Python's hash seed fixed) two builds of the same
    input are byte-identical.
    """
    setarch = shutil.which("setarch")
    if setarch is None or platform.system() != "Linux":
        return command
    return [setarch, platform.machine(), "-R", *command]
