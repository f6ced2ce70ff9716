"""The int8 TFLite on the LiteRT interpreter, in the ethos-u toolchain's worker.

The TFLite takes int8 NHWC input and gives int8 outputs: the worker quantizes the NCHW float input with
the model's own input scale and dequantizes the outputs, so a session runs like every other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ...core.errors import VerificationError
from ...toolchains import WorkerReply, WorkerRequestFailed, start_worker
from ..worker_session import WorkerSession

log = logging.getLogger("vncompile")


class LiteRtInterpreterSession(WorkerSession):
    @classmethod
    def open(cls, tflite: Path) -> LiteRtInterpreterSession:
        session = cls(start_worker("ethos-u", log))
        try:
            session._request("load", {"tflite": str(tflite)})
        except BaseException:
            session.close()
            raise
        return session

    def _request(self, op: str, args: dict[str, Any]) -> WorkerReply:
        try:
            return self._worker.request(op, args, timeout=600.0)
        except WorkerRequestFailed as exc:
            raise VerificationError(f"the LiteRT interpreter failed to {op} the int8 TFLite: {exc.error}") from None
