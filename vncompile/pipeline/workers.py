"""Child processes that contain what a runtime can do wrong: crash, hang, or exhaust memory.

``BuildWorker`` is one long-lived process that builds cells one after another
(torch is imported once); if it dies or overruns its timeout it is killed, the cell
fails with one line, and the next cell starts a fresh process. ``measure`` runs one
measurement per process (``profile_worker``), so memory is counted from a clean
baseline. Profile and ci run every cell through these; the parent never imports torch.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import VncompileError
from .request import BuildRequest


def describe_exit(code: int) -> str:
    if code < 0:
        name = signal.Signals(-code).name
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    return f"exited with status {code}"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


class BuildWorker:
    """Builds requests in a child process: ``build(request) -> (manifest, cache directory)``."""

    def __init__(self, timeout_s: float = 1800.0, env: dict[str, str] | None = None) -> None:
        self.timeout_s = timeout_s
        self._env = env
        self._process: subprocess.Popen[str] | None = None
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the worker

    def _start(self) -> subprocess.Popen[str]:
        if self._process is None or self._process.poll() is not None:
            self._stderr.seek(0)
            self._stderr.truncate()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "vncompile.pipeline.build_worker"], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=self._env,
            )
        return self._process

    def build(self, request: BuildRequest) -> tuple[dict[str, Any], Path]:
        process = self._start()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(request.to_json()) + "\n")
            process.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None
        line = self._read_line(process)
        try:
            reply = json.loads(line)
        except ValueError:
            self.close()
            raise VncompileError(f"build worker gave a malformed reply: {line[:120]!r}") from None
        if "error" in reply:
            raise VncompileError(reply["error"])
        return reply["manifest"], Path(reply["directory"])

    def _read_line(self, process: subprocess.Popen[str]) -> str:
        assert process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.close()
                    raise VncompileError(f"build timed out after {self.timeout_s:g} s")
                if selector.select(timeout=remaining):
                    line = process.stdout.readline()
                    if not line:
                        raise self._died()
                    return line
        finally:
            selector.close()

    def _died(self) -> VncompileError:
        assert self._process is not None
        code = self._process.wait()
        self._stderr.seek(0)
        error = VncompileError(f"build worker {describe_exit(code)}: {last_line(self._stderr.read())}")
        self._process = None
        return error

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def __enter__(self) -> BuildWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        self._stderr.close()


def measure(target: str, directory: Path, manifest: dict[str, Any], *, warmup: int, runs: int,
            timeout_s: float) -> dict[str, Any]:
    """One isolated measurement (``profile_worker``); a crash, hang or bad reply is one line."""
    with tempfile.TemporaryDirectory(prefix="vncompile-measure-") as tmp:
        result_path = Path(tmp) / "result.json"
        payload = json.dumps({"target": target, "directory": str(directory), "manifest": manifest,
                              "warmup": warmup, "runs": runs, "result_path": str(result_path)})
        try:
            process = subprocess.run([sys.executable, "-m", "vncompile.pipeline.profile_worker"], input=payload,
                                     capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy())
        except subprocess.TimeoutExpired:
            raise VncompileError(f"worker timed out after {timeout_s:g} s") from None
        if process.returncode != 0:
            raise VncompileError(f"worker {describe_exit(process.returncode)}: {last_line(process.stderr)}")
        try:
            return json.loads(result_path.read_text())
        except (OSError, ValueError):
            raise VncompileError("worker gave no readable result") from None
