"""The NPU graph passes, side by side in one run: what each does to every int8 NPU compiler here.

    python benchmarks/npu_passes.py [--model vanillanet_5] [--width 1] [--size 224]
        [--targets ethos-u,qnn,rknn] [--calibration-size 64]

Builds the model for each target with ``--graph-passes`` none, each pass alone, and both (the real CLI,
into a temporary cache, so nothing from earlier runs is reused), and prints per target and pass setting:

- ethos-u: vela's cycles and estimated time, its DRAM traffic, SRAM + off-chip memory, operators placed;
- qnn: how fully quantized the graph QNN receives is (nodes computing in float between a Dequantize and
  a Quantize), the context binary's size;
- rknn (int8, rk3588): the compiler's NPU cycles and memory plan;

and every target's verification cosine against the float64 reference, with the ratio to ``none``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SETTINGS = ("none", "relu-before-maxpool", "stem-space-to-depth", "relu-before-maxpool,stem-space-to-depth")


def build(args: argparse.Namespace, target: str, passes: str, out: Path, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "vncompile", "build", "--model", args.model, "--width", str(args.width),
               "--size", str(args.size), "--target", target, "--precision", "int8", "--graph-passes", passes,
               "--calibration-size", str(args.calibration_size), "-o", str(out), "--json"]
    process = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if process.returncode != 0:
        return {"error": (process.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(process.stdout)


def figures(target: str, manifest: dict[str, Any], out: Path) -> dict[str, Any]:
    if "error" in manifest:
        return {"error": manifest["error"]}
    facts = manifest["target"]["facts"]
    row = {"cosine": manifest["verification"]["stages"][-1].get("cosine"), "memory_kb": manifest["memory"]["max_kb"]}
    if target == "ethos-u":
        summary = next(csv.DictReader((out / "vela_summary.csv").open()))
        layers = list(csv.DictReader((out / "vela_per_layer.csv").open()))
        row.update(cost=facts["vela"]["cycles"], ms=facts["vela"]["inference_ms"],
                   dram_mb=float(summary["dram_total_bytes"]) / 2**20, operators=len(layers),
                   cpu_operators=len(facts["cpu_operators"]))
    elif target == "qnn":
        row.update(cost=sum(facts.get("float_nodes", {}).values()), quantized=facts.get("quantized_nodes"),
                   float_nodes=facts.get("float_nodes"), binary_kb=facts["context_binary_kb"])
    elif target == "rknn":
        row.update(cost=facts["npu_cycles"], ms=facts["estimated_latency_ms"])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vanillanet_5")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--targets", default="ethos-u,qnn,rknn")
    parser.add_argument("--calibration-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "VNCOMPILE_CACHE_DIR": str(Path(tmp) / "cache")}
        results = {}
        for target in args.targets.split(","):
            for passes in SETTINGS:
                out = Path(tmp) / target / passes.replace(",", "+")
                results[target, passes] = figures(target, build(args, target, passes, out, env), out)
                print(f"{target:8} {passes:40} {results[target, passes]}", file=sys.stderr, flush=True)
    cost_name = {"ethos-u": "vela cycles", "qnn": "float nodes", "rknn": "NPU cycles"}
    print(f"\n{args.model} (width {args.width:g}) at {args.size}, int8\n")
    print("| target | --graph-passes | cost | vs none | est. ms | memory KB | cosine | detail |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for (target, passes), row in results.items():
        if "error" in row:
            print(f"| {target} | {passes} | failed: {row['error']} | | | | | |")
            continue
        base = results[target, "none"].get("cost")
        ratio = f"{row['cost'] / base:.2f}x" if base else "-"
        detail = (f"DRAM traffic {row['dram_mb']:.1f} MB, {row['operators']} NPU ops, {row['cpu_operators']} on CPU"
                  if target == "ethos-u" else
                  f"{row['quantized']} quantized, float: {row['float_nodes'] or 'none'}, binary "
                  f"{row['binary_kb']:,.0f} KB" if target == "qnn" else "")
        est = f"{row['ms']:.3f}" if "ms" in row else "-"
        print(f"| {target} | {passes} | {row['cost']:,} {cost_name[target]} | {ratio} | {est} | "
              f"{row['memory_kb']:,.0f} | {row['cosine']:.5f} | {detail} |")


if __name__ == "__main__":
    main()
