"""Peak memory and latency of each `--runtime-profile`, side by side with the analytic plan.

    python benchmarks/runtime_memory.py [--models vanillanet_5,resnet50] [--size 512]
                                        [--targets onnxruntime,openvino] [--runs 10] [--repeats 3]

Each (model, target, profile) is built with `vncompile build --json` (random weights, verified
unless --no-verify) and measured as `vncompile profile` measures a cell: in a fresh process,
peak RSS above the post-import baseline. The plan is the `analytic` target's figure for the
same graph (weights + a greedy arena of the activations), so measured/plan is what the runtime
costs beyond a static planner. Each cell is measured --repeats times, interleaved with the
others so a busy spell on shared cores hits every profile; a row keeps its lowest median
latency and its highest peak.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from vncompile.api.options import RUNTIME_PROFILES
from vncompile.profiling.measure import measure


def build(model: str, size: int, target: str, out: Path, *extra: str) -> dict[str, Any]:
    """The manifest `vncompile build --json` prints."""
    command = [sys.executable, "-m", "vncompile", "build", "--model", model, "--size", str(size), "--target", target,
               "-o", str(out), "--force", "--json", *extra]
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode != 0:
        sys.exit(f"{' '.join(command)} failed: {process.stderr.strip().splitlines()[-1]}")
    return json.loads(process.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vanillanet_5,resnet50")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--targets", default="onnxruntime,openvino")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="fresh-process measurements per cell")
    parser.add_argument("--no-verify", action="store_true", help="build without the float64 reference")
    options = parser.parse_args()
    models, targets = options.models.split(","), options.targets.split(",")
    verify = ["--no-verify"] if options.no_verify else []
    with tempfile.TemporaryDirectory(prefix="runtime-memory-") as tmp:
        plan_kb = {m: build(m, options.size, "analytic", Path(tmp) / f"{m}-analytic")["memory"]["max_kb"]
                   for m in models}
        cells = {(m, t, p): build(m, options.size, t, Path(tmp) / f"{m}-{t}-{p}", "--runtime-profile", p, *verify)
                 for m in models for t in targets for p in RUNTIME_PROFILES}
        measured: dict[tuple[str, str, str], list[dict[str, Any]]] = {cell: [] for cell in cells}
        for _ in range(options.repeats):
            for (model, target, profile), manifest in cells.items():
                directory = Path(tmp) / f"{model}-{target}-{profile}"
                measured[model, target, profile].append(
                    measure(target, directory, manifest, warmup=options.warmup, runs=options.runs, timeout_s=900))
    print(f"{options.size}x{options.size} fp32, batch 1; peak RSS above the post-import baseline, highest of "
          f"{options.repeats} processes; latency: lowest median of {options.runs} runs")
    header = (f"{'model':13} {'target':11} {'profile':9} {'peak KB':>10} {'plan KB':>10} {'peak/plan':>9} "
              f"{'median ms':>10} {'vs latency':>10}")
    print(header)
    print("-" * len(header))
    for model in models:
        for target in targets:
            fastest = min(r["latency"]["median_ms"] for r in measured[model, target, "latency"])
            for profile in RUNTIME_PROFILES:
                results = measured[model, target, profile]
                peak = max(r["memory"]["max_kb"] for r in results)
                ms = min(r["latency"]["median_ms"] for r in results)
                print(f"{model:13} {target:11} {profile:9} {peak:10,.0f} {plan_kb[model]:10,.0f} "
                      f"{peak / plan_kb[model]:9.2f} {ms:10.1f} {ms / fastest:9.2f}x")


if __name__ == "__main__":
    main()
