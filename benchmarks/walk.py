"""How far a reader walks to follow one build: the modules a build's calls pass through, in order.

Traces every call from one vncompile module into another during one cold build (VanillaNet-5 at 1/16
width, 64x64, onnxruntime fp32, an empty cache) and counts, over the first N such calls ("steps"):
the modules entered, the calls up a layer (into a package above the caller's, in the import-linter
layer order) and the calls back into a module the walk had already been in. Run it on two checkouts to
compare them side by side:

    python benchmarks/walk.py                 # this checkout
    python benchmarks/walk.py --repo OLD_DIR  # another checkout (a git worktree of an older commit)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

LAYERS = ["cli", "console", "ci|profiling", "devices", "pipeline", "targets", "toolchains", "onnxtools|data", "api",
          "vanillanet", "core"]


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    for index, names in enumerate(LAYERS):
        if top in names.split("|"):
            return index
    return len(LAYERS)  # vncompile/__init__


def trace_build() -> list[list[str]]:
    """In this process: one cold build, returning every call from one vncompile module into another, in order
    (caller, callee)."""
    from vncompile.api.request import BuildRequest, InputShape, ModelSource
    from vncompile.pipeline.build import build
    from vncompile.pipeline.cache import BuildCache

    calls: list[list[str]] = []

    def profiler(frame, event, arg):
        if event == "call":
            module = frame.f_globals.get("__name__", "")
            caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back is not None else ""
            if module.startswith("vncompile.") and caller.startswith("vncompile.") and module != caller:
                calls.append([caller, module])

    request = BuildRequest(ModelSource(model_name="vanillanet_5", width=1 / 16), "onnxruntime", "fp32",
                           shape=InputShape(1, 3, 64, 64))
    with tempfile.TemporaryDirectory() as tmp:
        sys.setprofile(profiler)
        try:
            build(request, Path(tmp) / "out", cache=BuildCache(Path(tmp) / "cache"))
        finally:
            sys.setprofile(None)
    return calls


def walk(calls: list[list[str]], steps: int) -> dict[str, int]:
    """Over the first ``steps`` calls from one module into another: the modules entered, the calls up a layer
    (into a package above the caller's: a callback, or work done in the wrong place) and the calls into a module
    the walk had already been in (a reader goes back there)."""
    calls = calls[:steps]
    seen = {calls[0][0]}
    climbs = returns = 0
    for caller, callee in calls:
        climbs += layer_of(callee) < layer_of(caller)
        returns += callee in seen
        seen.update((caller, callee))
    return {"steps": len(calls), "modules_entered": len(seen), "calls_up_a_layer": climbs,
            "calls_back_into_a_module": returns}


def lines_per_package(root: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for path in sorted((root / "vncompile").rglob("*.py")):
        parts = path.relative_to(root / "vncompile").parts
        package = parts[0] if len(parts) > 1 else "(top)"
        counts[package] = counts.get(package, 0) + sum(1 for _ in path.open())
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(trace_build()))
        return
    env = {**os.environ, "PYTHONPATH": str(args.repo)}
    out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True,
                         cwd=args.repo)
    calls = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps({"repo": str(args.repo), **walk(calls, args.steps),
                      "lines_per_package": lines_per_package(args.repo)}, indent=1))


if __name__ == "__main__":
    main()
