"""The isolated measurement of one built artifact: ``measure`` (the parent side) runs
``python -m vncompile.profiling.measure`` once per cell.

The parent writes a JSON request on stdin and reads the JSON result from the file the
request names (not stdout, which runtimes may write to). One process per cell, so a
crash, hang or out-of-memory kill costs one row, and memory is measured from a clean
baseline: the peak resident set above the RSS after the runtime is imported. With
``layers``, the target's per-layer profile (``Target.layer_profile``) is taken in the same
process after the figures, so its profiler costs them nothing. Nothing here imports torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..api.target import LatencyFigure, LayerRecord, MemoryFigure, Session, Target
from ..core.errors import VncompileError
from ..core.host import proc_kb
from ..core.units import kb
from ..toolchains.worker import describe_exit, last_line


def measure(target: str, directory: Path, manifest: dict[str, Any], *, warmup: int, runs: int,
            timeout_s: float, figures: bool = True, layers: bool = False) -> dict[str, Any]:
    """One isolated measurement: ``{"memory": ..., "latency": ...}`` in the manifest's form (``figures``), and with
    ``layers`` ``"layers"``: the per-layer records, or None where the target reports none (or its profile failed:
    ``"layers_error"`` says why); a crash, hang or bad reply is one line."""
    with tempfile.TemporaryDirectory(prefix="vncompile-measure-") as tmp:
        result_path = Path(tmp) / "result.json"
        payload = json.dumps({"target": target, "directory": str(directory), "manifest": manifest,
                              "warmup": warmup, "runs": runs, "figures": figures, "layers": layers,
                              "result_path": str(result_path)})
        try:
            process = subprocess.run([sys.executable, "-m", "vncompile.profiling.measure"], input=payload,
                                     capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise VncompileError(f"worker timed out after {timeout_s:g} s") from None
        if process.returncode != 0:
            raise VncompileError(f"worker {describe_exit(process.returncode)}: {last_line(process.stderr)}")
        try:
            result = json.loads(result_path.read_text())
        except (OSError, ValueError):
            raise VncompileError("worker gave no readable result") from None
    if result.get("layers") is not None:
        result["layers"] = [LayerRecord(**record) for record in result["layers"]]
    return result


# ---------------------------------------------------------------------------- the child


def reset_peak_rss() -> int | None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; return that baseline in KB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None  # not Linux: peak can only be read, not reset
    return proc_kb("/proc/self/status", "VmRSS")


def peak_rss_kb() -> float | None:
    """The peak resident set since ``reset_peak_rss`` (Linux only, as is the reset)."""
    return proc_kb("/proc/self/status", "VmHWM")


def _onnx_weight_kb(model: Path) -> float:
    import onnx
    from onnx import helper

    total = 0
    for init in onnx.load(str(model), load_external_data=False).graph.initializer:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        total += int(np.prod(init.dims, dtype=np.int64)) * itemsize
    return kb(total)


def _input(manifest: dict[str, Any]) -> np.ndarray:
    """What a build is measured on: seeded noise of its input shape."""
    return np.random.default_rng(0).standard_normal(manifest["input_shape"], dtype=np.float32)


def _wall_clock(session: Session, x: np.ndarray, warmup: int, runs: int) -> LatencyFigure:
    for _ in range(warmup):
        session.run(x)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(x)
        samples.append((time.perf_counter() - start) * 1e3)
    return LatencyFigure(samples, "measured", f"wall clock, batch {x.shape[0]}, {warmup} warm-up runs")


def measure_here(target: Target, directory: Path, manifest: dict[str, Any], warmup: int,
                 runs: int) -> dict[str, Any]:
    memory: MemoryFigure | None = target.compiler_memory(directory, manifest)
    latency: LatencyFigure | None = target.estimated_latency(directory, manifest)
    wants_latency = latency is None and target.latency_here
    if target.executes and (memory is None or wants_latency) and manifest["status"] == "ok":
        baseline = reset_peak_rss()
        with target.load(directory, manifest) as session:
            x = _input(manifest)
            if wants_latency:
                latency = session.time_runs(x, warmup, runs) or _wall_clock(session, x, warmup, runs)
            if memory is None:
                memory = session.device_memory()
            if memory is None and baseline is not None:
                used = max(0.0, (peak_rss_kb() or 0.0) - baseline)
                weights = _onnx_weight_kb(directory / "model.onnx")
                memory = MemoryFigure(used, "measured", weights_kb=weights, activations_kb=max(0.0, used - weights),
                                      detail="peak RSS above the post-import baseline; weights: the model's "
                                             "initializers")
    return {"latency": None if latency is None else latency.as_dict(),
            "memory": None if memory is None else memory.as_dict()}


def layers_here(target: Target, directory: Path, manifest: dict[str, Any], runs: int) -> list[dict[str, Any]] | None:
    """The target's per-layer records on the same input the figures are measured on."""
    if manifest["status"] != "ok":
        return None
    records = target.layer_profile(directory, manifest, _input(manifest), runs)
    return None if records is None else [record.as_dict() for record in records]


def main() -> None:
    from ..targets import get_target

    request = json.loads(sys.stdin.read())
    target = get_target(request["target"])
    target.availability()  # imports the runtime, so the baseline excludes its libraries
    directory, manifest = Path(request["directory"]), request["manifest"]
    result: dict[str, Any] = {}
    if request["figures"]:
        result = measure_here(target, directory, manifest, request["warmup"], request["runs"])
    if request["layers"]:
        try:
            result["layers"] = layers_here(target, directory, manifest, request["runs"])
        except Exception as exc:  # noqa: BLE001 - the figures stand without it; the reason travels as one line
            result["layers"] = None
            result["layers_error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    Path(request["result_path"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
