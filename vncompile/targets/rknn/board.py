"""A connected board (``--rknn-target``): the toolkit's ``eval_memory``/``eval_perf`` on it replace the
compiler's memory plan and cycle estimate (untested here: no board)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from ...api.target import LatencyFigure, MemoryFigure, facts
from ...core.errors import VncompileError
from ...core.units import BYTES_PER_KB, kb, unit_kb
from ...toolchains import WorkerReply, start_worker
from .toolkit import RKNN_MODEL, request

log = logging.getLogger("vncompile")


def on_board(build_dir: Path, manifest: dict[str, Any], op: str, **runtime: bool) -> WorkerReply:
    """``op`` (eval_perf / eval_memory) on the board running the bundle's model.rknn itself."""
    target = facts(manifest)
    with start_worker("rknn", log, inherit=("PATH",)) as worker:  # the user's PATH: where their adb is
        request(worker, "load_rknn", {"path": str(build_dir / RKNN_MODEL)})
        request(worker, "init_runtime", {"target": target["platform"], "device_id": target["board"], **runtime})
        return request(worker, op)


def board_latency(build_dir: Path, manifest: dict[str, Any]) -> LatencyFigure:
    reply = on_board(build_dir, manifest, "eval_perf")
    result = reply.result.get("result")
    microseconds = _number(result, ("total_time", "total_elapsed_time"), reply.output,
                           r"Total Operator Elapsed (?:Per Frame )?Time\(us\):\s*([\d.]+)")
    return LatencyFigure([microseconds / 1000], "measured",
                         f"rknn eval_perf on board {facts(manifest)['board']} (fixed frequency)")


def board_memory(build_dir: Path, manifest: dict[str, Any]) -> MemoryFigure:
    reply = on_board(build_dir, manifest, "eval_memory", eval_mem=True)
    result = reply.result.get("result")
    weights = _number(result, ("total_weight_allocation",), reply.output, r"Weight Memory:\s*([\d.]+ \w+)")
    internal = _number(result, ("total_internal_allocation",), reply.output,
                       r"Internal Tensor Memory:\s*([\d.]+ \w+)")
    total = _number(result, ("total_model_allocation",), reply.output, r"Total Memory:\s*([\d.]+ \w+)")
    return MemoryFigure(max_kb=kb(total), source="measured", weights_kb=kb(weights), activations_kb=kb(internal),
                        detail=f"rknn eval_memory on board {facts(manifest)['board']}")


def _number(result: Any, keys: tuple[str, ...], output: list[str], pattern: str) -> float:
    """A figure from the toolkit's returned dict, else from what it printed (bytes for sizes, us for times)."""
    # (the toolkit prints sizes with a unit and times without one)
    if isinstance(result, dict):
        for key in keys:
            if isinstance(result.get(key), (int, float)):
                return float(result[key])
    for line in reversed(output):
        match = re.search(pattern, line)
        if match:
            value, _, unit = match.group(1).partition(" ")
            return float(value) * unit_kb(unit) * BYTES_PER_KB if unit else float(value)
    raise VncompileError(f"rknn-toolkit2 reported no {keys[0]} on the board; its output is in the log")
