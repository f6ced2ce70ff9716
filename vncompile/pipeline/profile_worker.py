"""The isolated measurement of one built artifact: ``python -m vncompile.pipeline.profile_worker``.

The parent writes a JSON request on stdin and reads the JSON result from the file the
request names (not stdout, which runtimes may write to). One process per cell, so a
crash, hang or out-of-memory kill costs one row, and memory is measured from a
clean baseline: the peak resident set above the RSS after the runtime is imported.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..targets import get_target
from ..targets.base import LatencyFigure, MemoryFigure, Target
from .environment import proc_kb


def reset_peak_rss() -> int | None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; return that baseline in KB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None  # not Linux: peak can only be read, not reset
    return proc_kb("/proc/self/status", "VmRSS")


def peak_rss_kb() -> float | None:
    peak = proc_kb("/proc/self/status", "VmHWM")
    if peak is not None:
        return peak
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def latency_stats(samples_ms: list[float]) -> dict[str, float | int]:
    ordered = sorted(samples_ms)

    def percentile(q: float) -> float:
        return float(np.percentile(ordered, q))

    return {"median": statistics.median(ordered), "mean": statistics.fmean(ordered), "p90": percentile(90),
            "p99": percentile(99), "min": ordered[0], "max": ordered[-1], "runs": len(ordered)}


def _onnx_weight_kb(model: Path) -> float:
    import onnx
    from onnx import helper

    total = 0
    for init in onnx.load(str(model), load_external_data=False).graph.initializer:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        total += int(np.prod(init.dims, dtype=np.int64)) * itemsize
    return total / 1024


def _wall_clock(session, x: np.ndarray, warmup: int, runs: int) -> LatencyFigure:
    for _ in range(warmup):
        session.run(x)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(x)
        samples.append((time.perf_counter() - start) * 1e3)
    return LatencyFigure(samples, "measured", f"wall clock, batch {x.shape[0]}, {warmup} warm-up runs")


def measure(target: Target, directory: Path, manifest: dict[str, Any], warmup: int, runs: int) -> dict[str, Any]:
    memory: MemoryFigure | None = target.compiler_memory(directory, manifest)
    latency: LatencyFigure | None = target.estimated_latency(directory, manifest)
    if target.executes and (memory is None or latency is None) and manifest["status"] == "ok":
        baseline = reset_peak_rss()
        session = target.load(directory, manifest)
        x = np.random.default_rng(0).standard_normal(manifest["input_shape"], dtype=np.float32)
        if latency is None:
            latency = target.measure_latency(session, x, warmup, runs) or _wall_clock(session, x, warmup, runs)
        if memory is None:
            memory = target.measured_memory(session)
        if memory is None and baseline is not None:
            used = max(0.0, (peak_rss_kb() or 0.0) - baseline)
            weights = _onnx_weight_kb(directory / "model.onnx")
            memory = MemoryFigure(used, "measured", weights_kb=weights, activations_kb=max(0.0, used - weights),
                                  detail="peak RSS above the post-import baseline; weights: the model's initializers")
    return {
        "latency": None if latency is None else {**latency_stats(latency.samples_ms), "source": latency.source,
                                                 "detail": latency.detail},
        "memory": None if memory is None else asdict(memory),
    }


def main() -> None:
    request = json.loads(sys.stdin.read())
    target = get_target(request["target"])
    target.availability()  # imports the runtime, so the baseline excludes its libraries
    result = measure(target, Path(request["directory"]), request["manifest"], request["warmup"], request["runs"])
    Path(request["result_path"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
