"""The int8 TFLite on the LiteRT interpreter, in the ethos-u toolchain's worker.

The TFLite takes int8 NHWC input and gives int8 outputs: the worker quantizes the NCHW float input with
the model's own input scale and dequantizes the outputs, so a session runs like every other.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ...api.target import Session
from ...core.errors import VerificationError
from ...toolchains import Worker, WorkerRequestFailed, start_worker

log = logging.getLogger("vncompile")


class LiteRtInterpreterSession(Session):
    def __init__(self, worker: Worker) -> None:
        assert worker.scratch is not None, "start_worker gives every toolchain worker its directory"
        self._worker, self._scratch = worker, worker.scratch

    @classmethod
    def open(cls, tflite: Path) -> LiteRtInterpreterSession:
        session = cls(start_worker("ethos-u", log))
        try:
            session._request("load", {"tflite": str(tflite)})
        except BaseException:
            session.close()
            raise
        return session

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        batch = self._scratch / "input.npy"
        np.save(batch, np.ascontiguousarray(x, dtype=np.float32))
        reply = self._request("infer", {"input": str(batch), "output_dir": str(self._scratch)})
        return [np.load(path).astype(np.float32) for path in reply["outputs"]]

    def close(self) -> None:
        self._worker.close()

    def _request(self, op: str, args: dict) -> dict:
        try:
            return self._worker.request(op, args, timeout=600.0).result
        except WorkerRequestFailed as exc:
            raise VerificationError(f"the LiteRT interpreter failed to {op} the int8 TFLite: {exc.error}") from None
