"""Verification on the toolkit's x86 simulator.

The simulator refuses a model loaded from a ``.rknn`` file ("RKNN model that loaded by
'load_rknn' not support inference on the simulator"), so the session rebuilds the bundle's
``model.onnx`` with the recorded settings and the same calibration set, and refuses a rebuild
whose memory plan or cycle count differs from the recorded compile.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ...api.target import facts
from ...core.errors import VerificationError
from ...toolchains import WorkerReply, start_worker
from ..worker_session import WorkerSession
from .compiler_output import CompilerReport
from .toolkit import RKNN_MODEL, RknnSettings, compile_onnx, recorded_calibration, request, write_dataset

log = logging.getLogger("vncompile")


class RknnSimulatorSession(WorkerSession):
    """model.onnx rebuilt with the recorded settings in a persistent worker, run on the toolkit's simulator.

    ``close`` (the pipeline closes every session after use) ends the worker and removes its directory."""

    def _request(self, op: str, args: dict[str, Any]) -> WorkerReply:
        return request(self._worker, op, args)

    @classmethod
    def open(cls, build_dir: Path, manifest: dict[str, Any]) -> RknnSimulatorSession:
        settings = RknnSettings.of_manifest(manifest)
        calibration = recorded_calibration(manifest) if settings.precision == "int8" else None
        session = cls(start_worker("rknn", log))
        try:
            dataset = None if calibration is None else write_dataset(calibration, manifest["input_shape"][0],
                                                                     session._scratch)
            report = compile_onnx(session._worker, build_dir / "model.onnx", settings, dataset, export=None)
            check_same_compile(report, manifest)
            session._request("init_runtime", {"target": None})  # None: the simulator
        except BaseException:
            session.close()
            raise
        return session


def check_same_compile(report: CompilerReport, manifest: dict[str, Any]) -> None:
    recorded = facts(manifest)
    if report.memory.as_dict() != recorded["memory_plan"] or report.cycles != recorded["npu_cycles"]:
        raise VerificationError(
            f"the simulator's rebuild of model.onnx differs from the compile that wrote {RKNN_MODEL} (memory plan "
            f"{report.memory.total_kb:.1f} vs {recorded['memory_plan']['total_kb']:.1f} KB, {report.cycles} vs "
            f"{recorded['npu_cycles']} cycles); rebuild with --force")
