"""A TFLite on the LiteRT interpreter (XNNPACK, its default delegate), in the ethos-u toolchain's worker.

The worker takes NCHW float input like every session: it moves the channels last where the model's input is
NHWC, quantizes with the model's own input scale where it takes int8, and dequantizes int8 outputs. It also
times runs itself and reports its own peak memory, since the interpreter lives in its process, not the
profiler's (``time_runs`` / ``device_memory``).
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np

from ...api.target import LatencyFigure, MemoryFigure
from ...core.errors import VerificationError
from ...core.host import cpu_name
from ...core.units import kb
from ...toolchains import WorkerReply, WorkerRequestFailed, start_worker
from ..worker_session import WorkerSession

log = logging.getLogger("vncompile")


class LiteRtInterpreterSession(WorkerSession):
    @classmethod
    def open(cls, tflite: Path, *, threads: int = 1, layout: str = "nhwc") -> LiteRtInterpreterSession:
        session = cls(start_worker("ethos-u", log))
        try:
            session.placement = session._request("load", {"tflite": str(tflite), "threads": threads,
                                                          "layout": layout}).result
        except BaseException:
            session.close()
            raise
        session._tflite, session._threads = tflite, threads
        return session

    def _request(self, op: str, args: dict[str, Any]) -> WorkerReply:
        try:
            return self._worker.request(op, args, timeout=600.0)
        except WorkerRequestFailed as exc:
            raise VerificationError(f"the LiteRT interpreter failed to {op} the TFLite: {exc.error}") from None

    def describe(self) -> str:
        """How it runs, for a measured figure's label."""
        return f"LiteRT interpreter, XNNPACK, {platform.machine()} CPU ({cpu_name()}), {self._threads} thread(s)"

    def time_runs(self, x: np.ndarray, warmup: int, runs: int) -> LatencyFigure:
        batch = self._scratch / "timed.npy"
        np.save(batch, np.ascontiguousarray(x, dtype=np.float32))
        samples = self._request("time", {"input": str(batch), "warmup": warmup, "runs": runs}).result["samples_ms"]
        return LatencyFigure(samples, "measured", f"{self.describe()}: wall clock of set input + invoke + read "
                                                  f"outputs, batch {x.shape[0]}, {warmup} warm-up runs")

    def device_memory(self) -> MemoryFigure | None:
        peak = self._request("memory", {}).result["peak_kb"]
        if peak is None:
            return None
        weights = kb(self._tflite.stat().st_size)
        return MemoryFigure(float(peak), "measured", weights_kb=weights, activations_kb=max(0.0, peak - weights),
                            detail=f"{self.describe()}: the interpreter process's peak RSS above its baseline "
                                   "before loading the model; weights: the .tflite's size")
