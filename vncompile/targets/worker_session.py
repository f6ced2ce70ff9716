"""A session whose runtime lives in a toolchain's worker process (``vncompile.toolchains``).

Inputs and outputs travel as .npy files in the worker's own directory: an ``infer`` request names the
input files and the directory for the outputs, and replies with the output files. Each target says how
a failed request reads (``_request``); closing the session ends the worker and removes its directory.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from ..api.target import Session
from ..toolchains import Worker, WorkerReply


class WorkerSession(Session):
    def __init__(self, worker: Worker) -> None:
        assert worker.scratch is not None, "start_worker gives every toolchain worker its directory"
        self._worker, self._scratch = worker, worker.scratch

    @abc.abstractmethod
    def _request(self, op: str, args: dict[str, Any]) -> WorkerReply:
        """One request to the worker; a failure as this target's error."""

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        batch = self._scratch / "input.npy"
        np.save(batch, np.ascontiguousarray(x, dtype=np.float32))
        reply = self._request("infer", {"inputs": [str(batch)], "output_dir": str(self._scratch)})
        return [np.load(path).astype(np.float32) for path in reply.result["outputs"]]

    def close(self) -> None:
        self._worker.close()
