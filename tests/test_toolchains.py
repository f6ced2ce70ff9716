"""Vendor toolchains: the worker protocol's failure paths with tiny fake workers run by the real
mechanism (this interpreter stands in for a toolchain's), atomic and idempotent installs, and
what the CLI says when a toolchain is missing or broken."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import NARROW, one_line_error
from vncompile.core.errors import InputError, VncompileError
from vncompile.toolchains import (
    MalformedReply,
    NoDepsPackage,
    ToolchainInstallError,
    ToolchainMissing,
    ToolchainSpec,
    Worker,
    WorkerCrashed,
    WorkerRequestFailed,
    WorkerTimeout,
    install_spec,
    list_toolchains,
    locate,
    start_worker,
)
from vncompile.toolchains.canonical import (
    ENVIRONMENT_PATH_LENGTH,
    canonical_environ,
    canonical_interpreter,
    environment_name,
)
from vncompile.toolchains.installed import locate_spec, marker_document
from vncompile.toolchains.spec import RKNN, WORKERS_DIR

log = logging.getLogger("vncompile.tests")

PROTOCOL_WORKER = """
    import os, sys, time
    sys.path.insert(0, {workers!r})
    from vncompile_worker_protocol import serve

    def echo(args):
        print("from python print")
        os.write(1, b"from file descriptor 1\\n")
        sys.stderr.write("from stderr\\n")
        return {{"echo": args}}

    def crash(args):
        sys.stderr.write("boom: the vendor library died\\n")
        sys.stderr.flush()
        os._exit(7)

    def hang(args):
        time.sleep(60)

    def refuse(args):
        raise ValueError("Traceback (most recent call last):\\n  ...\\nValueError: the input is wrong")

    def start():
        {start}
        return {{"echo": echo, "crash": crash, "hang": hang, "refuse": refuse}}, {{"version": "0.1"}}

    serve(start)
"""

RAW_WORKER = """
    import sys
    {body}
"""


def script(tmp_path: Path, text: str, **fields: str) -> Path:
    path = tmp_path / "fake_worker.py"
    path.write_text(textwrap.dedent(text).format(**fields))
    return path


def protocol_worker(tmp_path: Path, start: str = "pass") -> Worker:
    path = script(tmp_path, PROTOCOL_WORKER, workers=str(WORKERS_DIR), start=start)
    return Worker("fake", [sys.executable, "-u", str(path)], log, cwd=tmp_path, label="the fake toolchain worker")


def raw_worker(tmp_path: Path, body: str) -> Worker:
    return Worker("fake", [sys.executable, "-u", str(script(tmp_path, RAW_WORKER, body=body))], log, cwd=tmp_path,
                  label="the fake toolchain worker")


def assert_one_line(exc: VncompileError, *fragments: str) -> str:
    message = str(exc)
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_a_request_gets_its_reply_and_the_output_printed_while_answering(tmp_path):
    with protocol_worker(tmp_path) as worker:
        assert worker.start(timeout=60)["version"] == "0.1"
        first = worker.request("echo", {"x": [1, 2]}, timeout=30)
        second = worker.request("echo", {"y": "z"}, timeout=30)
    assert first.result == {"echo": {"x": [1, 2]}} and second.result == {"echo": {"y": "z"}}
    for reply in (first, second):  # stdout noise went to the output, not into the replies
        assert {"from python print", "from file descriptor 1", "from stderr"} <= set(reply.output)
        assert len(reply.output) == 3


def test_a_crashing_worker_is_one_line_with_its_exit_code_and_last_words(tmp_path):
    worker = protocol_worker(tmp_path)
    worker.start(timeout=60)
    with pytest.raises(WorkerCrashed) as info:
        worker.request("crash", timeout=30)
    assert_one_line(info.value, "exited with status 7", "while answering 'crash'", "boom: the vendor library died")
    assert info.value.exit_code == 1
    with pytest.raises(WorkerCrashed):  # a dead worker stays dead
        worker.request("echo", timeout=30)


def test_a_worker_that_does_not_answer_in_time_is_stopped(tmp_path):
    worker = protocol_worker(tmp_path)
    worker.start(timeout=60)
    started = time.monotonic()
    with pytest.raises(WorkerTimeout) as info:
        worker.request("hang", timeout=1)
    assert time.monotonic() - started < 15
    assert_one_line(info.value, "did not answer 'hang' within 1 s", "stopped")
    assert not worker.running


def test_a_worker_that_does_not_start_in_time_is_stopped(tmp_path):
    worker = protocol_worker(tmp_path, start="time.sleep(60)")
    with pytest.raises(WorkerTimeout) as info:
        worker.start(timeout=1)
    assert_one_line(info.value, "did not start within 1 s")


@pytest.mark.parametrize("body,when", [
    ("print('Welcome to a chatty interpreter')", "start"),
    ("print('{\"ok\": true, \"ready\": true}', flush=True)\nfor line in sys.stdin:\n    print('<html>', flush=True)",
     "echo"),
], ids=["at-start", "to-a-request"])
def test_a_malformed_reply_is_one_line(tmp_path, body, when):
    worker = raw_worker(tmp_path, body)
    with pytest.raises(MalformedReply) as info:
        worker.start(timeout=60)
        worker.request("echo", timeout=30)
    assert_one_line(info.value, f"malformed reply to '{when}'")


def test_a_worker_that_cannot_import_its_sdk_says_why(tmp_path):
    worker = protocol_worker(tmp_path, start="import vendor_sdk_that_is_not_installed")
    with pytest.raises(WorkerCrashed) as info:
        worker.start(timeout=60)
    assert_one_line(info.value, "could not start", "No module named 'vendor_sdk_that_is_not_installed'")


def test_a_worker_script_that_dies_before_the_protocol_is_one_line(tmp_path):
    worker = raw_worker(tmp_path, "raise SystemExit('fatal: cannot run here')")
    with pytest.raises(WorkerCrashed) as info:
        worker.start(timeout=60)
    assert_one_line(info.value, "exited with status 1 while starting", "fatal: cannot run here")


def test_a_refused_request_keeps_the_worker_and_says_the_last_line(tmp_path):
    with protocol_worker(tmp_path) as worker:
        worker.start(timeout=60)
        with pytest.raises(WorkerRequestFailed) as info:
            worker.request("refuse", timeout=30)
        assert_one_line(info.value, "failed to refuse: ValueError: the input is wrong")
        assert any("Traceback" in line for line in info.value.output)  # the traceback went to the log
        with pytest.raises(WorkerRequestFailed, match="unknown request 'nope'"):
            worker.request("nope", timeout=30)
        assert worker.request("echo", timeout=30).result == {"echo": {}}


# ---------------------------------------------------------------------------- where toolchains live


def fake_installation(root: Path, spec: ToolchainSpec, python_script: str | None = None) -> Path:
    """A marker and an environment whose 'python' is this interpreter, or a given script."""
    home = root / spec.name
    bin_dir = home / "env-fake" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    if python_script is None:
        python.symlink_to(sys.executable)
    else:
        python.write_text(python_script)
        python.chmod(python.stat().st_mode | stat.S_IEXEC)
    (home / "toolchain.json").write_text(json.dumps(marker_document(spec, "env-fake", "9.9", sys.executable)))
    return home


def test_missing_and_stale_toolchains_name_the_install_command(tmp_path):
    missing = locate("rknn", tmp_path)
    assert not missing.installed and missing.path == tmp_path / "rknn"
    assert [t.as_dict() for t in list_toolchains(tmp_path)] == [
        {"name": name, "installed": False, "version": None, "path": str(tmp_path / name)}
        for name in ("rknn", "ethos-u")]
    with pytest.raises(ToolchainMissing) as info:
        start_worker("rknn", log, root=tmp_path)
    assert_one_line(info.value, "not installed", "vncompile toolchain install rknn")
    assert info.value.exit_code == 2
    home = fake_installation(tmp_path, RKNN)
    assert locate("rknn", tmp_path).installed and locate("rknn", tmp_path).version == "9.9"
    marker = json.loads((home / "toolchain.json").read_text())
    (home / "toolchain.json").write_text(json.dumps({**marker, "fingerprint": "an older spec"}))
    stale = locate("rknn", tmp_path)
    assert stale.stale and not stale.installed
    with pytest.raises(ToolchainMissing, match="another vncompile version; run `vncompile toolchain install rknn`"):
        start_worker("rknn", log, root=tmp_path)


def test_cli_without_the_toolchain(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("VNCOMPILE_TOOLCHAIN_DIR", str(tmp_path / "toolchains"))
    rows = {row["name"]: row for row in run_cli("targets", "--json").json()}
    assert not rows["rknn"]["available"] and "vncompile toolchain install rknn" in rows["rknn"]["reason"]
    listed = run_cli("toolchain", "list", "--json").json()
    assert listed == [{"name": name, "installed": False, "version": None,
                       "path": str(tmp_path / "toolchains" / name)} for name in ("rknn", "ethos-u")]
    assert not rows["ethos-u"]["available"] and "vncompile toolchain install ethos-u" in rows["ethos-u"]["reason"]
    out = tmp_path / "b"
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "rknn", "--precision",
                     "fp16", "-o", out)
    assert result.code == 2
    assert "vncompile toolchain install rknn" in one_line_error(result)
    assert not out.exists()


@pytest.mark.parametrize("python_script,message", [
    ("#!/bin/sh\necho 'fatal: broken interpreter' >&2\nexit 3\n",
     "toolchain worker exited with status 3 while starting (last output: fatal: broken interpreter)"),
    ("#!/bin/sh\necho 'Welcome!'\nexec sleep 30\n", "malformed reply to 'start': 'Welcome!'"),
], ids=["crashes", "chatters"])
def test_cli_with_a_broken_toolchain_is_one_line(tmp_path, run_cli, monkeypatch, python_script, message):
    root = tmp_path / "toolchains"
    fake_installation(root, RKNN, python_script)
    monkeypatch.setenv("VNCOMPILE_TOOLCHAIN_DIR", str(root))
    out = tmp_path / "b"
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "rknn", "--precision",
                     "fp16", "-o", out)
    assert result.code == 1
    assert message in one_line_error(result)
    assert not out.exists()


# ---------------------------------------------------------------------------- installing


BROKEN_SPEC = ToolchainSpec(
    name="broken", description="a toolchain whose requirement cannot be installed", distribution="pip",
    requirements=("/nonexistent/not_a_package-0.0.0-py3-none-any.whl",),
    no_deps=(NoDepsPackage("/nonexistent/neither-0.0.0-py3-none-any.whl"),),
    python_versions=(f"{sys.version_info.major}.{sys.version_info.minor}",), import_check="import pip",
    worker="none.py",
)


def test_a_failed_install_leaves_nothing_that_looks_installed(tmp_path):
    with pytest.raises(ToolchainInstallError) as info:
        install_spec(BROKEN_SPEC, tmp_path)
    assert_one_line(info.value, "installing the pinned requirements failed", "No such file", "install.log")
    home = tmp_path / "broken"
    assert not locate_spec(BROKEN_SPEC, home).installed
    assert sorted(p.name for p in home.iterdir()) == ["install.log"]  # no environment left behind


def test_a_failed_reinstall_keeps_the_previous_installation(tmp_path):
    home = fake_installation(tmp_path, BROKEN_SPEC)
    before = (home / "toolchain.json").read_text()
    assert locate_spec(BROKEN_SPEC, home).installed
    with pytest.raises(ToolchainInstallError):
        install_spec(BROKEN_SPEC, tmp_path, force=True)
    assert (home / "toolchain.json").read_text() == before
    assert sorted(p.name for p in home.iterdir()) == ["env-fake", "install.log", "toolchain.json"]
    assert install_spec(BROKEN_SPEC, tmp_path).version == "9.9"  # without --force: verified, kept


def test_an_interpreter_the_vendor_has_no_wheels_for_is_refused(tmp_path, monkeypatch):
    old = tmp_path / "python2"
    old.write_text("#!/bin/sh\necho 2.7\n")
    old.chmod(0o755)
    monkeypatch.setenv("VNCOMPILE_TOOLCHAIN_PYTHON", str(old))
    with pytest.raises(InputError, match="is Python 2.7; the broken toolchain needs Python"):
        install_spec(BROKEN_SPEC, tmp_path)
    assert not (tmp_path / "broken").exists() or not any((tmp_path / "broken").glob("env-*"))



def test_an_environment_lies_at_a_path_of_one_length_wherever_its_root_is(tmp_path):
    homes = [tmp_path / "h", tmp_path / "a-much-longer-home" / ".local" / "share" / "vncompile" / "rknn"]
    paths = [str(home.absolute() / environment_name(home, "0123abcd")) for home in homes]
    assert len(paths[0]) == len(paths[1]) == ENVIRONMENT_PATH_LENGTH
    assert all(Path(p).name.startswith("env-0123abcd") for p in paths)
    too_long = tmp_path / ("d" * ENVIRONMENT_PATH_LENGTH)
    assert environment_name(too_long, "0123abcd") == "env-0123abcd"


@pytest.mark.skipif(not (Path(sys.prefix) / "pyvenv.cfg").is_file(), reason="needs a virtual environment")
def test_the_canonical_interpreter_sees_only_paths_inside_its_directory(tmp_path):
    """This interpreter's venv (standing in for a toolchain's), run through links inside the worker's
    directory: its prefix, base prefix and their sys.path entries lie inside it (a .pth file's entries,
    such as an editable install's, are the environment's content)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    interpreter = canonical_interpreter(scratch, Path(sys.prefix) / "bin" / "python")
    code = "import json, sys; print(json.dumps([sys.prefix, sys.base_prefix, *sys.path[1:]]))"
    done = subprocess.run([str(interpreter), "-c", code], env=canonical_environ(scratch), capture_output=True,
                          text=True, check=True)
    prefix, base_prefix, *path = json.loads(done.stdout)
    assert prefix == str(scratch / "env") and base_prefix == str(scratch / "base")
    installed = (sys.prefix, sys.base_prefix, os.path.realpath(sys.base_prefix))
    assert path and not [entry for entry in path if entry.startswith(installed)]
