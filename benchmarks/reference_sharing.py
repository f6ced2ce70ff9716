"""The float64 reference computed once per network, shape and inputs, not once per graph form.

Builds one network at one size the way a default profile does, for four graph forms (the plain fp32
graph, the two NPU graph passes, and the int8 Q/DQ graph: every ONNX entry a profile makes of a
model and size), from an empty cache, on two checkouts side by side, and prints the time spent in the
reference stage and in all, and their ratio. Each build runs in a process of its own.

    git worktree add /tmp/before <older commit>
    python benchmarks/reference_sharing.py --before /tmp/before [--models vanillanet_5,resnet50] [--size 256]
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

FORMS = (("analytic", "fp32", "none"), ("analytic", "fp32", "relu-before-maxpool"),
         ("analytic", "fp32", "stem-space-to-depth"), ("onnxruntime", "int8", None))


def run_builds(repo: Path, model: str, size: int) -> dict[str, float]:
    reference = total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(repo), "VNCOMPILE_CACHE_DIR": f"{tmp}/cache"}
        for i, (target, precision, passes) in enumerate(FORMS):
            args = ["build", "--model", model, "--size", str(size), "--target", target, "--precision", precision,
                    "-o", f"{tmp}/out{i}", "--json"]
            if passes:
                args += ["--graph-passes", passes]
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", "from vncompile.cli import main; main()", *args], env=env,
                                  capture_output=True, text=True, cwd=repo)
            total += time.perf_counter() - start
            if done.returncode:
                raise SystemExit(f"{repo}: {' '.join(args)}: {done.stderr.strip().splitlines()[-1]}")
            manifest = json.loads(done.stdout)
            reference += sum(s["seconds"] for s in manifest["stages"] if s["name"] == "reference"
                             and not s.get("cached"))
    return {"reference_s": reference, "total_s": total}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="a checkout to compare with")
    parser.add_argument("--models", default="vanillanet_5,resnet50")
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    after = Path(__file__).resolve().parents[1]
    print(f"{len(FORMS)} graph forms per model at {args.size} from an empty cache (seconds, measured)")
    print(f"{'model':<14}{'before ref':>12}{'after ref':>12}{'before all':>12}{'after all':>12}{'after/before':>14}")
    for model in args.models.split(","):
        old, new = run_builds(args.before, model, args.size), run_builds(after, model, args.size)
        print(f"{model:<14}{old['reference_s']:>12.1f}{new['reference_s']:>12.1f}{old['total_s']:>12.1f}"
              f"{new['total_s']:>12.1f}{new['total_s'] / old['total_s']:>14.2f}")


if __name__ == "__main__":
    main()
