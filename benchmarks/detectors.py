"""Detectors from ONNX (issue 22's closing measurements), side by side in one run.

    python benchmarks/detectors.py [--quick] [--work DIR] [--runs 10] [--rounds 5] [--neck 256]
        [--memory-targets analytic,rknn,onnxruntime,openvino] [--map-builds onnxruntime:fp32,...]

Prints four markdown tables, each as soon as its part is done:

1. **Deploy fusion**: nodes and convs of the exporter's graph, after vncompile's deploy fusion (``vncompile
   inspect --json``) and in the built ``model.onnx`` (onnxruntime fp32: simplified, then fused), for the committed
   test detector and a YOLO-style detector with a full-width VanillaNet-5 backbone at 640.
2. **Latency**, exporter's graph vs vncompile's: the full-width detector at 640 built for ONNX Runtime and
   OpenVINO with ``--graph-passes none --simplifier none`` (the graph as given) and by default (simplified and
   deploy-fused), ``--no-verify``; each build measured by ``vncompile.profiling.measure`` (one process per cell) in
   interleaved rounds; the ratio is the median of the rounds' ratios (the machine is shared: see the table).
3. **Max memory** per target (``vncompile profile --no-verify``: analytic, the rknn compiler's plan, ONNX Runtime
   and OpenVINO measured) at 640 and 1280, VanillaNet-5 against the same detector with a ResNet-50 backbone
   (C3-C5), each figure with its source label as profile.json gives it.
4. **mAP50-95 per target and precision** of the committed, trained test detector on its val set (``--eval-data``
   and ``--calibration`` both ``tests/data/detector/val``), from each build's manifest ``accuracy``. A build that
   fails verification is rebuilt with ``--no-verify`` to still get its mAP; a build that fails is a finding,
   with its one-line error. ``--max-map-drop`` is lifted (100) so a drop is reported, not fatal; the table says
   whether it is within the default 1 point.

The detectors of parts 1-3 are ``tests/data/make_detector.py``'s ``Detector`` (neck and anchor-free DFL head as
the test detector's, ``--neck`` channels) with random weights (memory and latency need no training), exported in
training form with torch.onnx at a fixed size with Ultralytics-style metadata, as ``make_detector`` exports the
test detector; they are kept in ``--work`` (default: a temporary folder) and reused by later runs there. Builds
use a build cache of their own in ``--work``. ``--quick`` is a smoke run: the test detector and width-1/16
backbones at 256.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

ROOT = Path(__file__).parents[1]
TEST_DETECTOR = ROOT / "tests" / "data" / "detector"
TEST_ONNX = TEST_DETECTOR / "detector_train_form.onnx"
VAL = TEST_DETECTOR / "val"
BACKBONES = {"vanillanet_5": "VanillaNet-5", "resnet50": "ResNet-50"}
LATENCY_TARGETS = ("onnxruntime", "openvino")
GRAPHS = {"exporter's graph": ["--graph-passes", "none", "--simplifier", "none"], "vncompile's": []}
# target:precision[:--flag=value ...]; Ethos-U twice: as vncompile builds it (a CPU fallback fails the build), and
# accepting the fallback to see what the rest costs in mAP.
MAP_BUILDS = ("onnxruntime:fp32,onnxruntime:int8,openvino:fp32,openvino:int8,rknn:fp16,rknn:int8,litert:int8,"
              "ethos-u:int8,ethos-u:int8:--allow-cpu-ops=all,qnn:int8")


class Failed(Exception):
    """A build or profile that did not finish: its one-line reason."""


@dataclass(frozen=True)
class Variant:
    """One untrained detector exported for the tables."""

    backbone: str
    width: float
    size: int
    neck: int

    @property
    def name(self) -> str:
        width = "" if self.width == 1.0 else f"-w{self.width:g}"
        return f"det-{self.backbone}{width}-n{self.neck}-{self.size}"

    @property
    def title(self) -> str:
        width = "full width" if self.width == 1.0 else f"width {self.width:g}"
        return f"{BACKBONES[self.backbone]} ({width}) detector"


# ---------------------------------------------------------------------------------------------- running things


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def vncompile(args: list[str], env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, "-m", "vncompile.cli", *args], env=env, capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise Failed(f"timed out after {timeout_s:g} s") from None


def build(onnx_path: Path, out: Path, args: list[str], env: dict[str, str], timeout_s: float) -> dict[str, Any]:
    """``vncompile build`` into ``out``: its manifest, or Failed with the CLI's last line."""
    started = time.perf_counter()
    process = vncompile(["build", str(onnx_path), "-o", str(out), "--force", *args], env, timeout_s)
    log(f"build {onnx_path.name} {' '.join(args)}: {time.perf_counter() - started:.0f} s, exit {process.returncode}")
    if process.returncode != 0:
        raise Failed(last_line(process.stderr or process.stdout))
    return json.loads((out / "manifest.json").read_text())


def graph_counts(path: Path) -> tuple[int, int]:
    """Nodes and Conv nodes of an ONNX graph (its top level, as deploy fusion counts them)."""
    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return len(nodes), sum(node.op_type == "Conv" for node in nodes)


# ---------------------------------------------------------------------------------------------- fixtures


def fixture_module() -> ModuleType:
    """tests/data/make_detector.py, which defines the test detector's architecture (tests/ is no package to
    import from a benchmark)."""
    spec = importlib.util.spec_from_file_location("make_detector", ROOT / "tests" / "data" / "make_detector.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def export_variant(variant: Variant, folder: Path) -> Path:
    """The variant's training-form ONNX, exported once per work folder."""
    path = folder / f"{variant.name}.onnx"
    if path.exists():
        return path
    import torch

    from vncompile.vanillanet.zoo import init_random_weights

    fixtures = fixture_module()
    torch.manual_seed(0)
    model = fixtures.Detector(backbone=variant.backbone, width=variant.width, size=variant.size,
                              neck=variant.neck)
    init_random_weights(model.backbone)  # non-trivial BN, O(1) activations; the head keeps its fixed DFL bins
    started = time.perf_counter()
    scratch = path.with_suffix(".partial.onnx")
    fixtures.export(model, scratch, description=f"vncompile benchmark: {variant.title} (training form, random "
                                                f"weights) + neck + anchor-free head")
    scratch.replace(path)
    log(f"exported {path.name}: {path.stat().st_size / 2**20:.0f} MiB, {time.perf_counter() - started:.0f} s")
    return path


# ---------------------------------------------------------------------------------------------- 1. deploy fusion


def fusion_table(detectors: dict[str, tuple[Path, Path | None]], env: dict[str, str], timeout_s: float) -> str:
    """``detectors``: title -> (the exporter's ONNX, a default onnxruntime fp32 build of it or None)."""
    lines = ["| detector | exported: nodes / convs | after deploy fusion (inspect): nodes / convs | blocks fused "
             "| built model.onnx: nodes / convs |", "|---|---|---|---|---|"]
    for title, (onnx_path, built) in detectors.items():
        process = vncompile(["inspect", str(onnx_path), "--json"], env, timeout_s)
        if process.returncode != 0:
            lines.append(f"| {title} | inspect failed: {last_line(process.stderr)} | | | |")
            continue
        fusion = json.loads(process.stdout)["deploy_fusion"]
        nodes, convs = graph_counts(onnx_path)
        built_counts = "build failed" if built is None else "{} / {}".format(*graph_counts(built / "model.onnx"))
        lines.append(f"| {title} | {nodes} / {convs} | {fusion['nodes_after']} / {fusion['convs_after']} | "
                     f"{fusion['blocks_fused']} of {fusion['blocks_found']} | {built_counts} |")
        if (fusion["nodes_before"], fusion["convs_before"]) != (nodes, convs):
            lines.append(f"| (inspect counts the exported graph as {fusion['nodes_before']} / "
                         f"{fusion['convs_before']}) | | | | |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- 2. latency


def latency_builds(onnx_path: Path, work: Path, env: dict[str, str],
                   timeout_s: float) -> dict[tuple[str, str], tuple[Path, dict[str, Any]] | str]:
    """(target, graph) -> (build folder, manifest), or the reason it failed."""
    builds: dict[tuple[str, str], tuple[Path, dict[str, Any]] | str] = {}
    for target in LATENCY_TARGETS:
        for graph, flags in GRAPHS.items():
            out = work / f"{target}-{'given' if flags else 'default'}"
            try:
                builds[target, graph] = out, build(onnx_path, out, ["-t", target, "--no-verify", *flags], env,
                                                   timeout_s)
            except Failed as failure:
                builds[target, graph] = str(failure)
    return builds


def latency_table(builds: dict[tuple[str, str], tuple[Path, dict[str, Any]] | str], size: int, warmup: int,
                  runs: int, rounds: int, timeout_s: float) -> str:
    """Each round measures every cell once, the two graphs of a target back to back: on a shared machine a
    round's pair sees the same load, so the ratio is taken per round and the table gives the median over rounds
    (and each cell's median of its rounds' medians, with their range)."""
    from vncompile.profiling.measure import measure

    medians: dict[tuple[str, str], list[float]] = {}
    errors: dict[tuple[str, str], str] = {k: v for k, v in builds.items() if isinstance(v, str)}
    for round_index in range(rounds):
        for key, built in builds.items():
            if isinstance(built, str) or key in errors:
                continue
            directory, manifest = built
            try:
                latency = measure(key[0], directory, manifest, warmup=warmup, runs=runs,
                                  timeout_s=timeout_s)["latency"]
            except Exception as exc:  # noqa: BLE001 - a measurement's failure is a finding of the table
                errors[key] = str(exc)
                continue
            assert latency["source"] == "measured", latency
            medians.setdefault(key, []).append(latency["median_ms"])
            log(f"latency round {round_index + 1}: {key[0]} {key[1]} median {latency['median_ms']:.1f} ms")
    lines = [f"| target (fp32, {size}x{size}) | exporter's graph: median ms (rounds' range) | vncompile's: median ms "
             "(rounds' range) | exporter's / vncompile's (median of the rounds' ratios) |", "|---|---|---|---|"]
    for target in LATENCY_TARGETS:
        cells = []
        for graph in GRAPHS:
            key = (target, graph)
            values = medians.get(key)
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}, measured)"
                         if values and key not in errors else f"failed: {errors.get(key, '?')}")
        pairs = list(zip(medians.get((target, "exporter's graph"), []), medians.get((target, "vncompile's"), []),
                         strict=False))
        ratio = f"{statistics.median(given / ours for given, ours in pairs):.2f}x" if pairs else "-"
        lines.append(f"| {target} | {cells[0]} | {cells[1]} | {ratio} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- 3. memory


def profile_rows(onnx_path: Path, out: Path, targets: str, warmup: int, runs: int, env: dict[str, str],
                 timeout_s: float) -> list[dict[str, Any]]:
    """profile.json's rows for one fixed-size detector (a failed cell is a row with its reason)."""
    started = time.perf_counter()
    process = vncompile(["profile", str(onnx_path), "--targets", targets, "--no-verify", "--runs", str(runs),
                         "--warmup", str(warmup), "--timeout", str(int(timeout_s)), "-o", str(out), "--force"],
                        env, timeout_s * 2 * len(targets.split(",")))
    log(f"profile {onnx_path.name}: {time.perf_counter() - started:.0f} s, exit {process.returncode}")
    if not (out / "profile.json").exists():
        raise Failed(last_line(process.stderr))
    return json.loads((out / "profile.json").read_text())["rows"]


def memory_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    if row["status"] != "ok" or not row.get("memory"):
        return f"{row['status']}: {row.get('reason') or 'no memory figure'}"
    memory = row["memory"]
    activations = memory.get("activations_kb")
    split = "" if activations is None else f"; activations {activations:,.0f}"
    return f"{memory['max_kb']:,.0f} ({memory['source']}{split})"


def memory_table(rows: dict[tuple[str, str, int], dict[str, Any]], targets: list[str], sizes: list[int],
                 backbones: list[str]) -> str:
    """``rows``: (backbone, target, size) -> profile row."""
    vanilla, resnet = backbones
    lines = [f"| target | precision | size | {BACKBONES[vanilla]} detector: max KB | {BACKBONES[resnet]} "
             f"detector: max KB | {BACKBONES[vanilla]} / {BACKBONES[resnet]} |", "|---|---|---|---|---|---|"]
    for target in targets:
        for size in sizes:
            ours, theirs = rows.get((vanilla, target, size)), rows.get((resnet, target, size))
            figures = [r["memory"]["max_kb"] if r and r["status"] == "ok" and r.get("memory") else None
                       for r in (ours, theirs)]
            ratio = f"{figures[0] / figures[1]:.2f}" if None not in figures else "-"
            precision = (ours or theirs or {}).get("precision", "-")
            lines.append(f"| {target} | {precision} | {size} | {memory_cell(ours)} | {memory_cell(theirs)} | "
                         f"{ratio} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- 4. mAP


def map_build(item: str) -> tuple[str, str, list[str]]:
    """``target:precision[:--flag=value ...]`` -> target, precision, extra CLI arguments."""
    target, precision, *flags = item.split(":")
    return target, precision, [part for flag in flags for part in flag.split("=", 1)]


def map_row(target: str, precision: str, extra: list[str], work: Path, env: dict[str, str], timeout_s: float) -> str:
    out = work / "-".join([target, precision, *(f.strip("-") for f in extra)])
    args = ["-t", target, "--precision", precision, "--eval-data", str(VAL), "--calibration", str(VAL),
            "--max-map-drop", "100", *extra]
    precision = " ".join([precision, *extra])
    notes = []
    try:
        try:
            manifest = build(TEST_ONNX, out, args, env, timeout_s)
        except Failed as failure:
            if "verif" not in str(failure).lower():
                raise
            notes.append(f"verification failed: {failure}; mAP from a --no-verify build")
            manifest = build(TEST_ONNX, out, [*args, "--no-verify"], env, timeout_s)
    except Failed as failure:
        return f"| {target} | {precision} | - | - | - | - | - | - | build failed: {failure} |"
    accuracy, model = manifest["accuracy"], manifest["model"]
    reference, found = accuracy["reference"], accuracy.get("target")
    if found is None:
        return f"| {target} | {precision} | - | - | - | - | - | - | no target mAP (status {manifest['status']}) |"
    drop = reference["map50_95"] - found["map50_95"]
    if drop > 1.0:
        notes.append("over the default --max-map-drop of 1 point")
    fallback = manifest["target"]["facts"].get("cpu_operators")
    if fallback:
        notes.append(f"{len(fallback)} ops on the CPU: {', '.join(sorted({op['op'] for op in fallback}))}")
    head = "host" if model.get("host_tail") else "device"
    runs_on = f"{manifest['target']['device']} ({manifest['target']['version']})"
    return (f"| {target} | {precision} | {runs_on} | {head} | {reference['map50_95']:.2f} | {found['map50_95']:.2f} | "
            f"{drop:+.2f} | {reference['map50']:.2f} / {found['map50']:.2f} | {'; '.join(notes) or 'ok'} |")


def map_table(builds: list[str], work: Path, env: dict[str, str], timeout_s: float) -> str:
    lines = ["| target | precision | runs on | head | reference mAP50-95 | target mAP50-95 | drop (points) | "
             "mAP50 reference / target | notes |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [map_row(*map_build(item), work, env, timeout_s) for item in builds]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: width-1/16 backbones at 256")
    parser.add_argument("--work", type=Path, help="keep exports and builds here (default: a temporary folder)")
    parser.add_argument("--neck", type=int, help="neck and head channels [default: 256; --quick: 32]")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--memory-targets", default="analytic,rknn,onnxruntime,openvino")
    parser.add_argument("--memory-runs", type=int, default=5)
    parser.add_argument("--map-builds", default=MAP_BUILDS,
                        help="comma-separated target:precision[:--flag=value ...]")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per build or profile cell")
    parser.add_argument("--parts", default="fusion,latency,memory,map")
    options = parser.parse_args()
    width, sizes = (1 / 16, [256]) if options.quick else (1.0, [640, 1280])
    neck = options.neck or (32 if options.quick else 256)
    parts = set(options.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="vncompile-detectors-") as scratch:
        work = options.work or Path(scratch)
        (work / "onnx").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "VNCOMPILE_CACHE_DIR": str(work / "cache")}
        variants = {(backbone, size): Variant(backbone, width, size, neck) for backbone in BACKBONES
                    for size in sizes}
        needed = [v for (backbone, size), v in variants.items()
                  if "memory" in parts or (backbone == "vanillanet_5" and size == sizes[0])]
        exported = {v: export_variant(v, work / "onnx") for v in needed}
        detector = variants["vanillanet_5", sizes[0]]
        print(f"# Detectors from ONNX: {detector.title} (neck {neck}) and the test detector\n")
        print(f"Random weights for the {detector.title}s, exported in training form; "
              f"{os.cpu_count()} CPU cores (shared).\n", flush=True)

        builds = {}
        if parts & {"fusion", "latency"}:
            builds = latency_builds(exported[detector], work / "latency", env, options.timeout)
        if "fusion" in parts:
            try:
                test_built = work / "fusion" / "test-detector"
                build(TEST_ONNX, test_built, ["-t", "onnxruntime", "--no-verify"], env, options.timeout)
            except Failed:
                test_built = None
            ours = builds.get(("onnxruntime", "vncompile's"))
            print(f"## 1. Deploy fusion (nodes / convs at the graph's top level; built: onnxruntime fp32 at "
                  f"{detector.size})\n")
            print(fusion_table({"test detector (VanillaNet-5 w1/16, 128)": (TEST_ONNX, test_built),
                                f"{detector.title}, {detector.size}": (exported[detector],
                                                                       ours[0] if isinstance(ours, tuple) else None)},
                               env, options.timeout) + "\n", flush=True)
        if "latency" in parts:
            print(f"## 2. Latency of the {detector.title} at {detector.size}: the exporter's graph vs vncompile's "
                  f"(batch 1, {options.rounds} interleaved rounds of {options.runs} runs after {options.warmup} "
                  "warm-up)\n")
            print(latency_table(builds, detector.size, options.warmup, options.runs, options.rounds,
                                options.timeout) + "\n", flush=True)
        if "memory" in parts:
            rows: dict[tuple[str, str, int], dict[str, Any]] = {}
            for (backbone, size), variant in variants.items():
                try:
                    for row in profile_rows(exported[variant], work / "profile" / variant.name,
                                            options.memory_targets, options.warmup, options.memory_runs, env,
                                            options.timeout):
                        rows[backbone, row["target"], size] = row
                except Failed as failure:
                    log(f"profile {variant.name} failed: {failure}")
            print("## 3. Max memory per target (KB, 1 KB = 1024 B; `vncompile profile --no-verify`, each target's "
                  "default precision; rknn's device graph ends where the head leaves the feature maps)\n")
            print(memory_table(rows, options.memory_targets.split(","), sizes, list(BACKBONES)) + "\n", flush=True)
        if "map" in parts:
            print("## 4. mAP50-95 of the trained test detector per target and precision (val: 48 images, "
                  "letterboxed to 128; measured, pycocotools; percent; int8 calibrated on the same 48 images, so "
                  "its figures are optimistic for unseen ones; reference: the given graph in float64)\n")
            print(map_table(options.map_builds.split(","), work / "map", env, options.timeout) + "\n", flush=True)


if __name__ == "__main__":
    main()
