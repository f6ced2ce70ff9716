"""Cold and cached build times of vanillanet_5 -> openvino, and the time of each stage.

    python benchmarks/build_time.py [--model vanillanet_5] [--target openvino] [--size 224]

Runs the real CLI in fresh processes (what a user waits for), against an empty cache
in a temporary directory, so nothing from earlier runs is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_build(args: list[str], env: dict[str, str]) -> tuple[float, dict]:
    start = time.perf_counter()
    process = subprocess.run([sys.executable, "-m", "vncompile", "build", *args, "--json"], env=env,
                             capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        sys.exit(f"build failed: {process.stderr.strip().splitlines()[-1]}")
    return seconds, json.loads(process.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vanillanet_5")
    parser.add_argument("--target", default="openvino")
    parser.add_argument("--size", type=int, default=224)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "VNCOMPILE_CACHE_DIR": str(Path(tmp) / "cache")}
        base = ["--model", options.model, "--target", options.target, "--size", str(options.size)]
        cold, manifest = timed_build([*base, "-o", str(Path(tmp) / "cold")], env)
        cached, _ = timed_build([*base, "-o", str(Path(tmp) / "cached")], env)
        other_target = "onnxruntime" if options.target != "onnxruntime" else "openvino"
        shared, shared_manifest = timed_build([*base[:2], "--target", other_target, "--size", str(options.size),
                                               "-o", str(Path(tmp) / "shared")], env)
    print(f"{options.model} -> {options.target} at {options.size}x{options.size}, "
          f"{os.cpu_count()} cores, process wall time")
    print(f"  cold build                       {cold:8.2f} s")
    print(f"  identical build (cache hit)      {cached:8.2f} s   cold/cached = {cold / cached:.1f}x")
    print(f"  same network -> {other_target:<14} {shared:8.2f} s   (export and reference from the cache)")
    print("  stages of the cold build:")
    for stage in manifest["stages"]:
        print(f"    {stage['name']:<10} {stage['seconds']:8.2f} s")
    stage_total = sum(s["seconds"] for s in manifest["stages"])
    print(f"    {'(startup)':<10} {cold - stage_total:8.2f} s   interpreter, imports, hashing, copying")
    print("  stages of the build for the second target:")
    for stage in shared_manifest["stages"]:
        note = " (cached)" if stage.get("cached") else ""
        print(f"    {stage['name']:<10} {stage['seconds']:8.2f} s{note}")


if __name__ == "__main__":
    main()
