"""Child processes that contain what a runtime can do wrong: crash, hang, or exhaust memory.

``BuildWorker`` is one long-lived process that builds cells one after another
(torch is imported once), spoken to through the same worker protocol as the vendor
toolchains; if it dies or overruns its timeout it is stopped, the cell fails with
one line, and the next cell starts a fresh process. ``measure`` runs one measurement
per process (``profile_worker``), so memory is counted from a clean baseline.
Profile and ci run every cell through these; the parent never imports torch.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import VncompileError
from ..toolchains.worker import Worker, WorkerRequestFailed, describe_exit, last_line
from .request import BuildRequest

log = logging.getLogger("vncompile")
START_TIMEOUT_S = 120.0
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # torch's and the BLASes' pools


class BuildWorker:
    """Builds requests in a child process: ``build(request) -> (manifest, cache directory)``.

    The child speaks the worker protocol (``build_worker``); a crash or a timeout ends it
    (the message says which), and the next build starts a fresh one.
    """

    def __init__(self, timeout_s: float = 1800.0, threads: int | None = None) -> None:
        self.timeout_s = timeout_s
        self._env = os.environ.copy()
        if threads is not None:  # parallel builds share the cores instead of each taking all of them
            self._env.update({name: str(threads) for name in THREAD_VARIABLES})
        self._worker: Worker | None = None

    def _running(self) -> Worker:
        if self._worker is None or not self._worker.running:
            command = [sys.executable, "-u", "-m", "vncompile.pipeline.build_worker"]
            self._worker = Worker("build", command, log, env=self._env, label="the build worker")
            self._worker.start(START_TIMEOUT_S)
        return self._worker

    def build(self, request: BuildRequest) -> tuple[dict[str, Any], Path]:
        try:
            reply = self._running().request("build", request.to_json(), timeout=self.timeout_s)
        except WorkerRequestFailed as exc:
            raise VncompileError(f"build failed: {exc.error}") from None
        return reply.result["manifest"], Path(reply.result["directory"])

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __enter__(self) -> BuildWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure(target: str, directory: Path, manifest: dict[str, Any], *, warmup: int, runs: int,
            timeout_s: float) -> dict[str, Any]:
    """One isolated measurement (``profile_worker``); a crash, hang or bad reply is one line."""
    with tempfile.TemporaryDirectory(prefix="vncompile-measure-") as tmp:
        result_path = Path(tmp) / "result.json"
        payload = json.dumps({"target": target, "directory": str(directory), "manifest": manifest,
                              "warmup": warmup, "runs": runs, "result_path": str(result_path)})
        try:
            process = subprocess.run([sys.executable, "-m", "vncompile.pipeline.profile_worker"], input=payload,
                                     capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise VncompileError(f"worker timed out after {timeout_s:g} s") from None
        if process.returncode != 0:
            raise VncompileError(f"worker {describe_exit(process.returncode)}: {last_line(process.stderr)}")
        try:
            return json.loads(result_path.read_text())
        except (OSError, ValueError):
            raise VncompileError("worker gave no readable result") from None
