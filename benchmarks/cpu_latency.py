"""Batch-1 latency at 224 of vanillanet_5: torch eager (training and fused form) against every
CPU artifact vncompile builds, side by side in one run, with the share of this machine's fp32
GEMM peak each reaches.

    python benchmarks/cpu_latency.py [--model vanillanet_5] [--size 224] [--runs 30]

The GEMM peak is measured here, first: the best large fp32 matmul rate of numpy's and torch's
BLAS (the best case for any conv lowering). "GFLOP/s" counts 2 x the multiply-accumulates each
form actually computes; int8 and bf16 rows can pass 100% of the fp32 peak.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vncompile.api.request import BuildRequest, InputShape, ModelSource
from vncompile.pipeline.build import build
from vncompile.pipeline.cache import BuildCache
from vncompile.targets import get_target
from vncompile.vanillanet.archs import ModelSpec
from vncompile.vanillanet.complexity import complexity
from vncompile.vanillanet.fusion import switch_to_deploy
from vncompile.vanillanet.zoo import create_model, init_random_weights

ARTIFACTS = [("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "bf16"),
             ("openvino", "int8")]


def median_ms(run, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def gemm_peak_gflops(repeats: int = 10) -> float:
    """The best fp32 matmul rate torch's BLAS reaches here, best of N runs over a few sizes.

    (numpy's OpenBLAS is not used: its threads spin after each call and would steal the
    cores from whatever is timed next.)
    """
    best = 0.0
    for n in (1024, 2048, 3072):
        a = torch.rand(n, n)
        a @ a
        seconds = min(_seconds(lambda m=a: m @ m) for _ in range(repeats))
        best = max(best, 2 * n**3 / seconds / 1e9)
    return best


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vanillanet_5")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each row keeps its best")
    parser.add_argument("--peak-gflops", type=float,
                        help="a known fp32 peak to compare against (e.g. 295, a hand-tuned GEMM's on this CPU); "
                             "default: the best rate torch's BLAS reaches here, measured after the latencies")
    options = parser.parse_args()
    torch.set_grad_enabled(False)
    spec = ModelSpec(options.model)
    macs = {form: complexity(spec.with_form(form), options.size).macs for form in ("train", "deploy")}
    x = np.random.default_rng(0).standard_normal((1, 3, options.size, options.size), dtype=np.float32)
    train = init_random_weights(create_model(spec), seed=0)
    fused = switch_to_deploy(train)
    tx = torch.from_numpy(x)
    candidates = [("torch eager, training form", "fp32", lambda: train(tx), macs["train"]),
                  ("torch eager, fused", "fp32", lambda: fused(tx), macs["deploy"])]
    with tempfile.TemporaryDirectory() as tmp:
        cache = BuildCache(Path(tmp) / "cache")
        for target, precision in ARTIFACTS:
            request = BuildRequest(ModelSource(model_name=options.model), target, precision,
                                   InputShape.square(options.size))
            outcome = build(request, Path(tmp) / f"{target}-{precision}", cache=cache)
            session = get_target(target).load(outcome.out_dir, outcome.manifest)
            candidates.append((f"{target} artifact", precision, lambda s=session: s.run(x), macs["deploy"]))
        # Interleaved rounds: every row sees the same machine state; each keeps its best round.
        best = [float("inf")] * len(candidates)
        for _ in range(options.rounds):
            for i, (_, _, run, _) in enumerate(candidates):
                best[i] = min(best[i], median_ms(run, options.warmup, options.runs))
    measured_peak = gemm_peak_gflops()
    # A runtime can beat the BLAS we measure (ONNX Runtime's MLAS does on AMD CPUs): the peak is the best seen.
    fastest = max(2 * work / (ms * 1e-3) / 1e9 for (_, precision, _, work), ms in zip(candidates, best, strict=True)
                  if precision == "fp32")
    peak = options.peak_gflops or max(measured_peak, fastest)
    rows = [(name, precision, ms, work) for (name, precision, _, work), ms in zip(candidates, best, strict=True)]
    source = "given" if options.peak_gflops else f"best of torch GEMM {measured_peak:.0f} and the fp32 rows"
    print(f"{options.model}, 1x3x{options.size}x{options.size}, {torch.get_num_threads()} threads; "
          f"fp32 peak {peak:.0f} GFLOP/s ({source}); MACs: training form {macs['train'] / 1e9:.2f} G, "
          f"fused {macs['deploy'] / 1e9:.2f} G")
    print(f"{'':32} {'prec':5} {'median ms':>10} {'GFLOP/s':>9} {'of peak':>8} {'vs torch train':>15}")
    base = rows[0][2]
    for name, precision, ms, work in rows:
        gflops = 2 * work / (ms * 1e-3) / 1e9
        print(f"{name:32} {precision:5} {ms:10.1f} {gflops:9.1f} {gflops / peak:8.0%} {base / ms:14.2f}x")
    print(f"floor at the measured peak for the fused network: {2 * macs['deploy'] / peak / 1e6:.1f} ms")


if __name__ == "__main__":
    main()
