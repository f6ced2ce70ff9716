"""LiteRT int8 against fp32 on this CPU, side by side with ONNX Runtime's int8 (and fp32), in one run.

Each artifact is a real build (full-width network, random weights) measured as ``vncompile profile`` measures
it: in a process of its own (LiteRT: the interpreter with XNNPACK in the toolchain's worker, timing itself; ONNX
Runtime: the bundle's session), batch 1, median wall clock; rounds interleave the four so each sees the same
machine state, and each keeps its best round.

    python benchmarks/litert_latency.py [--model vanillanet_5] [--size 224] [--threads 2] [--rounds 3]
                                        [--calibration-size 32]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from vncompile.api.options import TargetOptions
from vncompile.api.request import BuildRequest, InputShape, ModelSource
from vncompile.pipeline.build import build
from vncompile.pipeline.cache import BuildCache
from vncompile.profiling.measure import measure

ARTIFACTS = [("litert", "fp32"), ("litert", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vanillanet_5")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="LiteRT interpreter threads (ONNX Runtime uses one per core)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calibration-size", type=int, default=32,
                        help="synthetic calibration samples of the int8 builds (latency does not depend on them)")
    options = parser.parse_args()
    shape = InputShape.square(options.size)
    with tempfile.TemporaryDirectory() as tmp:
        cache = BuildCache(Path(tmp) / "cache")
        built = []
        for target, precision in ARTIFACTS:
            own = {"threads": options.threads} if target == "litert" else {}
            request = BuildRequest(ModelSource(model_name=options.model), target, precision, shape,
                                   options=TargetOptions(calibration_size=options.calibration_size).with_own(own))
            outcome = build(request, Path(tmp) / f"{target}-{precision}", cache=cache)
            built.append((target, precision, outcome.out_dir, outcome.manifest))
        best: dict[int, dict] = {}
        for _ in range(options.rounds):
            for i, (target, _precision, directory, manifest) in enumerate(built):
                result = measure(target, directory, manifest, warmup=options.warmup, runs=options.runs,
                                 timeout_s=1800)
                if i not in best or result["latency"]["median_ms"] < best[i]["latency"]["median_ms"]:
                    best[i] = result
    print(f"{options.model}, 1x3x{options.size}x{options.size}, {os.cpu_count()} cores; LiteRT: XNNPACK, "
          f"{options.threads} thread(s); best of {options.rounds} rounds of {options.runs} runs")
    base = best[0]["latency"]["median_ms"]
    litert_int8 = best[1]["latency"]["median_ms"]
    print(f"{'target':12} {'prec':5} {'median ms':>10} {'peak KB':>10} {'vs litert fp32':>15} {'vs litert int8':>15}")
    for i, (target, precision, _directory, _manifest) in enumerate(built):
        ms, memory = best[i]["latency"]["median_ms"], best[i]["memory"]
        peak = f"{memory['max_kb']:,.0f}" if memory else "-"
        print(f"{target:12} {precision:5} {ms:10.2f} {peak:>10} {base / ms:14.2f}x {litert_int8 / ms:14.2f}x")
    print(f"litert int8 / fp32 latency: {litert_int8 / base:.2f}; litert int8 / onnxruntime int8: "
          f"{litert_int8 / best[3]['latency']['median_ms']:.2f}")


if __name__ == "__main__":
    main()
