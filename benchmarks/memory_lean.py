"""Memory-lean compilation, side by side in one run: each target's max memory and latency untiled and
with ``--fit-memory``, and the analytic plan against the rknn compiler's own.

    python benchmarks/memory_lean.py [--models vanillanet_5,resnet50,plain_cnn_50] [--sizes 256,384,512]
        [--targets analytic,rknn,onnxruntime,openvino] [--fit-memory 64MB] [--cpu-fit-memory 150MB]
        [--runtime-profiles balanced] [--runs 10]

Runs the real CLI (``vncompile profile --format json``: one build worker, one measuring process per
cell) into a temporary cache, so nothing from earlier runs is reused. fp32 CPU targets get their own
budget (``--cpu-fit-memory``): VanillaNet-5's fp32 weights alone are 59 MB. ResNet-50 and
plain-CNN-50 are not tiled (``--fit-memory`` tiles VanillaNet); they appear untiled for comparison.
Prints three tables:

1. the analytic plan's activations against the rknn compiler's internal memory (fp16);
2. per target, model and size: memory and latency untiled and fitted, their ratios, the tiling and
   the MACs its halos recompute;
3. for the CPU runtimes: measured peak over the analytic plan (weights + arena), per runtime profile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

CPU_TARGETS = ("onnxruntime", "openvino")


def profile(args: list[str], env: dict[str, str]) -> list[dict[str, Any]]:
    """Rows of one ``vncompile profile`` run (a failed cell is a row with its reason, not an exit)."""
    process = subprocess.run([sys.executable, "-m", "vncompile", "profile", "--format", "json", "--no-verify",
                              *args], env=env, capture_output=True, text=True, check=False)
    try:
        return json.loads(process.stdout)["rows"]
    except ValueError:
        sys.exit(f"profile failed: {(process.stderr.strip().splitlines() or ['no output'])[-1]}")


def macs(model: str, size: int) -> int:
    from vncompile.vanillanet.archs import ModelSpec
    from vncompile.vanillanet.complexity import complexity

    return complexity(ModelSpec(model, form="deploy"), size).macs


def keyed(rows: list[dict[str, Any]]) -> dict[tuple[str, str, int], dict[str, Any]]:
    return {(r["model"], r["target"], r["size"]): r for r in rows}


def kb(row: dict[str, Any] | None) -> float | None:
    return row["memory"]["max_kb"] if row and row.get("memory") else None


def ms(row: dict[str, Any] | None) -> float | None:
    return row["latency"]["median_ms"] if row and row.get("latency") else None


def cell(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.0f}{unit}" if value >= 100 else f"{value:,.2f}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vanillanet_5,resnet50,plain_cnn_50")
    parser.add_argument("--sizes", default="256,384,512")
    parser.add_argument("--targets", default="analytic,rknn,onnxruntime,openvino")
    parser.add_argument("--fit-memory", default="64MB", help="budget of the fp16 targets (rknn, analytic)")
    parser.add_argument("--cpu-fit-memory", default="150MB", help="budget of the fp32 CPU targets")
    parser.add_argument("--runtime-profiles", default="balanced",
                        help="CPU runtime profiles to measure, e.g. latency,balanced,memory")
    parser.add_argument("--runs", type=int, default=10)
    options = parser.parse_args()
    models, targets = options.models.split(","), options.targets.split(",")
    vanillanets = [m for m in models if m.startswith("vanillanet")]
    common = ["--sizes", options.sizes, "--runs", str(options.runs), "--warmup", "2"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "VNCOMPILE_CACHE_DIR": str(Path(tmp) / "cache")}
        npu = [t for t in targets if t not in CPU_TARGETS]
        cpu = [t for t in targets if t in CPU_TARGETS]
        untiled: list[dict[str, Any]] = []
        fitted: list[dict[str, Any]] = []
        by_profile: dict[str, list[dict[str, Any]]] = {}
        if npu:
            untiled += profile(["--models", ",".join(models), "--targets", ",".join(npu), "--precision", "fp16",
                                *common], env)
            if vanillanets:
                fitted += profile(["--models", ",".join(vanillanets), "--targets", ",".join(npu), "--precision",
                                   "fp16", "--fit-memory", options.fit_memory, *common], env)
        for runtime_profile in options.runtime_profiles.split(",") if cpu else []:
            extra = [] if runtime_profile == "balanced" else ["--runtime-profile", runtime_profile]
            rows = profile(["--models", ",".join(models), "--targets", ",".join(cpu), *extra, *common], env)
            by_profile[runtime_profile] = rows
            if runtime_profile == "balanced":
                untiled += rows
                if vanillanets:
                    fitted += profile(["--models", ",".join(vanillanets), "--targets", ",".join(cpu),
                                       "--fit-memory", options.cpu_fit_memory, *common], env)
        analytic_fp32 = profile(["--models", ",".join(models), "--targets", "analytic", *common], env) if cpu else []
    sizes = [int(s) for s in options.sizes.split(",")]
    base, fit = keyed(untiled), keyed(fitted)
    print(f"{os.cpu_count()} cores; fp16 budget {options.fit_memory}, fp32 CPU budget {options.cpu_fit_memory}\n")

    if "analytic" in targets and "rknn" in targets:
        print("1. Analytic activations vs the rknn compiler's internal memory (rk3588 fp16, KB)")
        print(f"   {'model':<14}{'size':>6}{'analytic':>12}{'rknn':>12}{'ratio':>9}")
        for model in models:
            for size in sizes:
                a, r = base.get((model, "analytic", size)), base.get((model, "rknn", size))
                act = [x["memory"]["activations_kb"] if x and x.get("memory") else None for x in (a, r)]
                print(f"   {model:<14}{size:>6}{cell(act[0]):>12}{cell(act[1]):>12}{ratio(act[0], act[1]):>9}")
        print()

    print("2. Max memory (KB) and latency (ms), untiled vs --fit-memory")
    print(f"   {'target':<12}{'model':<14}{'size':>5}{'untiled':>11}{'fitted':>11}{'mem':>7}"
          f"{'lat':>9}{'lat fit':>9}{'lat':>7}  tiling, extra MACs")
    for target in targets:
        for model in models:
            for size in sizes:
                a, b = base.get((model, target, size)), fit.get((model, target, size))
                if a is None:
                    continue
                record = (b or {}).get("fit_memory") or {}
                tiling = record.get("tiling")
                if b is not None and b["status"] == "error":
                    note = f"fails: {b['reason'][-150:]}"
                elif tiling:
                    note = (f"{tiling['stages']} stage(s) x {tiling['strips']} strips, "
                            f"+{100 * record['extra_macs'] / macs(model, size):.1f}% MACs")
                else:
                    note = "untiled fits" if b is not None else ""
                print(f"   {target:<12}{model:<14}{size:>5}{cell(kb(a)):>11}{cell(kb(b)):>11}"
                      f"{ratio(kb(b), kb(a)):>7}{cell(ms(a)):>9}{cell(ms(b)):>9}{ratio(ms(b), ms(a)):>7}  {note}")
    print("   (memory: rknn compiler, analytic estimated, CPU runtimes measured peak RSS; latency: rknn "
          "estimated from cycles, CPU measured)\n")

    if by_profile:
        plans = keyed(analytic_fp32)
        print("3. CPU runtimes: measured peak over the analytic plan (fp32), per runtime profile")
        print(f"   {'target':<12}{'model':<14}{'size':>5}{'plan':>10}" +
              "".join(f"{p + ' KB':>16}{'x plan':>8}{'ms':>8}" for p in by_profile))
        for target in cpu:
            for model in models:
                for size in sizes:
                    plan = kb(plans.get((model, "analytic", size)))
                    line = f"   {target:<12}{model:<14}{size:>5}{cell(plan):>10}"
                    for rows in by_profile.values():
                        row = keyed(rows).get((model, target, size))
                        line += f"{cell(kb(row)):>16}{ratio(kb(row), plan):>8}{cell(ms(row)):>8}"
                    print(line)


if __name__ == "__main__":
    main()
