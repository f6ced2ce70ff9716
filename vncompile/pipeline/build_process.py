"""Builds in a child process: ``BuildWorker`` (the parent side) and the child it runs
(``python -m vncompile.pipeline.build_process``).

One long-lived child builds cells one after another (torch is imported once), spoken to
through the toolchains' worker protocol (``toolchains/workers/vncompile_worker_protocol``).
If it dies or overruns its timeout it is stopped, the cell fails with one line, and the
next cell starts a fresh process. Profile and ci build every cell through it; the parent
never imports torch.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..api.request import BuildRequest
from ..core.errors import VncompileError
from ..toolchains.worker import Worker, WorkerRequestFailed

log = logging.getLogger("vncompile")
START_TIMEOUT_S = 120.0
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # torch's and the BLASes' pools


class BuildWorker:
    """Builds requests in a child process: ``build(request) -> (manifest, cache directory)``."""

    def __init__(self, timeout_s: float = 1800.0, threads: int | None = None) -> None:
        self.timeout_s = timeout_s
        self._env = os.environ.copy()
        if threads is not None:  # parallel builds share the cores instead of each taking all of them
            self._env.update({name: str(threads) for name in THREAD_VARIABLES})
        self._worker: Worker | None = None

    def _running(self) -> Worker:
        if self._worker is None or not self._worker.running:
            command = [sys.executable, "-u", "-m", "vncompile.pipeline.build_process"]
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


def _handlers() -> tuple[dict[str, Any], dict[str, Any]]:
    """The child's requests: one ``build`` per cell, answered with the manifest and the cache directory."""
    from .build import cached_build
    from .plan import resolve

    def build(args: dict[str, Any]) -> dict[str, Any]:
        try:
            manifest, directory, _ = cached_build(resolve(BuildRequest.from_json(args)))
        except VncompileError:
            raise
        except Exception as exc:  # a bug in one cell is that cell's failure, named as a bug
            raise RuntimeError(f"internal error: {type(exc).__name__}: {exc}") from exc
        return {"manifest": manifest, "directory": str(directory)}

    return {"build": build}, {"vncompile": __version__}


if __name__ == "__main__":
    from ..toolchains.workers.vncompile_worker_protocol import serve

    serve(_handlers)
