"""``vncompile build``: prepare (cached) -> compile -> verify, timed, logged, cached, written atomically.

The request is resolved once into a ``BuildPlan`` (``plan.py``: every check, the target, its
options, the cache keys) before any work. The cache lookup needs no torch: a repeated build is
a hash of the checkpoint, the options and the toolchain versions, then a copy. Everything heavy is imported only
when a build actually runs.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..api.request import BuildRequest
from ..api.target import Artifact, CompileContext, CompileResult, MemoryFigure, ReferenceIO, Target
from ..api.tolerance import QUANTIZED
from ..core.errors import OutputExists, VerificationError
from ..core.io import atomic_directory, refuse_foreign, work_directory, write_json
from ..data.evaluation import EvalSet
from ..onnxtools.blocks import BLOCKS_FILE, network_blocks
from ..onnxtools.detect_head import HEAD_TAIL
from ..onnxtools.layers import LAYERS_CSV, describe_layers, read_layers, worst_layers
from .accuracy import accuracy as accuracy_of
from .accuracy import check_drop, top1_drop
from .cache import BuildCache, copy_tree, reading
from .detection_accuracy import DetectionEval, check_map_drop, map_of
from .manifest import default_output_dir, figures, intact, is_bundle, new_manifest, read_manifest
from .plan import BuildPlan, resolve
from .prepare import PREPARE_STAGES, PreparedOnnx, load_evaluation, prepare, real_images, verify_inputs, with_host_tail
from .timing import SilentReporter, StageReporter, StageTimings
from .verify import Verification, compare, summarize

log = logging.getLogger("vncompile")
STAGE_NAMES = [*PREPARE_STAGES, "reference", "evaluate", "compile", "verify"]


@dataclass
class BuildOutcome:
    manifest: dict[str, Any]
    out_dir: Path
    cached: bool  # served from the cache without running any stage
    up_to_date: bool = False  # the output already held exactly this build


def _check_output(out_dir: Path, key: str, force: bool) -> bool:
    """True when ``out_dir`` already holds this exact build; raises if it holds another."""
    if not out_dir.exists():
        return False
    manifest = read_manifest(out_dir)
    if manifest is not None and manifest.get("cache_key") == key and intact(out_dir, manifest):
        return True
    refuse_foreign(out_dir, is_bundle)
    if not force:
        raise OutputExists(f"{out_dir} exists and holds a different build; pass --force to replace it")
    return False


def build(
    request: BuildRequest | BuildPlan,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    cache: BuildCache | None = None,
    reporter: StageReporter | None = None,
) -> BuildOutcome:
    """Build (or fetch from the cache) and write the bundle atomically to ``out_dir``."""
    cache = cache or BuildCache()
    plan = request if isinstance(request, BuildPlan) else resolve(request)  # every input error, before any work
    if out_dir is not None and _check_output(out_dir, plan.build_key, force):
        return BuildOutcome(read_manifest(out_dir) or {}, out_dir, cached=True, up_to_date=True)
    with cache.in_use(), cache.lock(plan.build_key):
        manifest, cached = _ensure_built(plan, cache, reporter)
        return _publish(cache.entry(plan.build_key), manifest, out_dir, plan.build_key, force, cached)


def cached_build(plan: BuildPlan, cache: BuildCache | None = None,
                 reporter: StageReporter | None = None) -> tuple[dict[str, Any], Path, bool]:
    """The build's manifest and its directory in the cache, building it if needed (profile, ci)."""
    cache = cache or BuildCache()
    with cache.in_use(), cache.lock(plan.build_key):  # the caller reads the entry: it holds ``in_use`` on its own
        manifest, cached = _ensure_built(plan, cache, reporter)
        return manifest, cache.entry(plan.build_key), cached


def _ensure_built(plan: BuildPlan, cache: BuildCache, reporter: StageReporter | None) -> tuple[dict[str, Any], bool]:
    """Under the key's lock: the cached manifest, or a fresh build stored in the cache."""
    manifest = cache.lookup(plan.build_key)
    if manifest is not None:
        return manifest, True
    target = plan.available_target()
    # The build reads its ONNX and reference entries until it ends (at verification): read-locked.
    with work_directory("build-") as work, reading(cache.entry(plan.onnx_key, "onnx")), \
            reading(cache.entry(plan.reference_key, "reference")):
        bundle = work / "bundle"
        bundle.mkdir()
        manifest = _run(plan, target, cache, work, bundle, reporter or SilentReporter())
        cache.store(plan.build_key, bundle)
    return manifest, False


def _publish(source_dir: Path, manifest: dict[str, Any], out_dir: Path | None, key: str, force: bool,
             cached: bool) -> BuildOutcome:
    out_dir = out_dir or default_output_dir(manifest)
    if _check_output(out_dir, key, force):
        return BuildOutcome(manifest, out_dir, cached=cached, up_to_date=True)
    with atomic_directory(out_dir, is_bundle, force=True) as tmp:
        copy_tree(source_dir, tmp)
    return BuildOutcome(manifest, out_dir, cached=cached)


@contextlib.contextmanager
def _build_log(path: Path) -> Iterator[None]:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG)
    log.addHandler(handler)
    previous = log.level
    log.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
        handler.close()


def _run(plan: BuildPlan, target: Target, cache: BuildCache, work: Path, bundle: Path,
         reporter: StageReporter) -> dict[str, Any]:
    request = plan.request
    timings = StageTimings(reporter)
    evaluates = request.options.eval_data is not None
    names = [s for s in STAGE_NAMES if (s != "quantize" or plan.quantizes_graph) and (s != "evaluate" or evaluates)
             and (s not in ("reference", "verify") or request.verify or (s == "verify" and evaluates))]
    reporter.start(f"{target.name} {plan.precision} {request.shape.label}", names)
    try:
        with _build_log(bundle / "build.log"):
            log.info("request: %s", request)
            eval_set = load_evaluation(plan)
            real = real_images(plan, eval_set) if request.verify else None
            prepared = prepare(plan, cache, work, timings, eval_set, real)
            after_prepare = len(timings.records)
            shutil.copyfile(prepared.onnx_path, bundle / "model.onnx")
            # The network's names for the compiled graph's nodes, for per-layer profiles (a report, not an artifact)
            write_json(bundle / BLOCKS_FILE, network_blocks(prepared.exported_path, bundle / "model.onnx"))
            extra = []
            if prepared.layers_csv is not None:  # the int8 graph's per-layer report travels with the bundle
                shutil.copyfile(prepared.layers_csv, bundle / LAYERS_CSV)
                extra.append(Artifact(LAYERS_CSV, "int8-layers"))
            if prepared.host_tail is not None:  # the detector's head, run on the host after the artifact
                shutil.copyfile(prepared.host_tail, bundle / HEAD_TAIL)
                extra.append(Artifact(HEAD_TAIL, "head-tail"))
            with timings.stage("compile"):
                result = target.compile(CompileContext(bundle / "model.onnx", bundle, request, log, _calibration(plan),
                                                       plan.own, _reference_io(plan, prepared, real)))
            manifest = new_manifest(plan, prepared.model, result, bundle, outputs=prepared.outputs,
                                    extra_artifacts=extra)
            manifest.update(figures(target.compiler_memory(bundle, manifest) or _estimated_memory(plan, bundle),
                                    target.estimated_latency(bundle, manifest)))
            _check_fit(prepared.model.get("fit_memory"), manifest["memory"], target.name)
            if request.verify or evaluates:
                with timings.stage("verify"):
                    verification, accuracy = _verify(plan, target, prepared, bundle, manifest, result, eval_set, real)
                if request.verify:
                    manifest["verification"] = verification.as_dict()
                    _log_verification(verification)
                manifest["accuracy"] = accuracy
                if request.verify and not verification.passed:
                    raise VerificationError(_with_layers(verification.failure_line(), prepared, verification))
                _check_accuracy(plan, accuracy, prepared)
            if result.status == "deferred":  # the target's own stage runs on the device, never here
                manifest["verification"]["target_stage"] = "deferred"
            manifest["stages"] = prepared.timings + timings.records[after_prepare:]
            log.info("build finished: %s", manifest["status"])
    finally:
        reporter.finish()
    write_json(bundle / "manifest.json", manifest)
    return manifest


def _calibration(plan: BuildPlan):
    """Targets that quantize themselves (rknn, qnn, ethos-u) get the preprocessed calibration inputs."""
    if not plan.needs_calibration_inputs:
        return None
    from ..data.calibration import calibration_set

    return calibration_set(plan.options, plan.request.shape)


def _reference_io(plan: BuildPlan, prepared: PreparedOnnx, real: np.ndarray | None) -> ReferenceIO | None:
    """The inputs verification runs at the build's shape and the reference's outputs for them (a deferred bundle
    carries them to the device)."""
    request = plan.request
    if not request.verify:
        return None
    inputs = verify_inputs(request.shape, real)
    batches = list(range(len(inputs.batches)))
    judged_from = batches.index(inputs.judged(plan.precision, batches)[0])
    return ReferenceIO(inputs.batches, prepared.reference(request.shape), prepared.output_names, judged_from,
                       prepared.classifier and len(prepared.output_names) == 1,
                       request.tolerances()[plan.precision].as_dict())


def _check_fit(fit: dict[str, Any] | None, memory: dict[str, Any] | None, target: str) -> None:
    """The target's own figure must honour --fit-memory too (a compiler that fuses the strips back is refused)."""
    if not fit or not memory or memory["max_kb"] <= fit["budget_kb"]:
        return
    tiling = fit["tiling"]
    how = (f"tiled ({tiling['stages']} stage(s) in {tiling['strips']} strips, analytic peak "
           f"{fit['planned_peak_kb']:,.0f} KB)" if tiling else "untiled")
    raise VerificationError(f"--fit-memory {fit['budget_kb']:,.0f} KB: {target}'s {memory['source']} figure is "
                            f"{memory['max_kb']:,.0f} KB for the network {how}")


def _worst_layers(prepared: PreparedOnnx) -> str:
    if prepared.layers_csv is None:
        return ""
    worst = worst_layers(read_layers(prepared.layers_csv))
    names = ",".join(r["node"] for r in worst)
    return f"; int8 breaks first at {describe_layers(worst)} (layers.csv): try --keep-fp32 {names}"


def _with_layers(line: str, prepared: PreparedOnnx, verification: Verification) -> str:
    failed_int8 = any(not s.passed and s.precision == "int8" for s in verification.stages)
    return line + (_worst_layers(prepared) if failed_int8 else "")


def _check_accuracy(plan: BuildPlan, accuracy: dict[str, Any] | None, prepared: PreparedOnnx) -> None:
    """A target more than --max-top1-drop points of top-1 (a detector: --max-map-drop points of mAP50-95) below the
    reference fails, like a verification."""
    if accuracy is None or "target" not in accuracy:
        return
    request, target = plan.request, plan.target.name
    options, what = request.options, f"{target} {request.precision}"
    hint = _worst_layers(prepared) if request.precision == "int8" else ""
    if "map50_95" in accuracy["reference"]:
        if request.precision in QUANTIZED and not plan.host_head:  # the usual cause: scores rounded with the boxes
            hint += "; or run the detector's head on the host: --detect-head host"
        log.info("mAP50-95 on %d images: reference %.2f%%, %s %.2f%%", accuracy["images"],
                 accuracy["reference"]["map50_95"], what, accuracy["target"]["map50_95"])
        check_map_drop(accuracy, "target", options.max_map_drop, what, options.eval_data, hint)
        return
    log.info("accuracy on %d images: reference top-1 %.2f%%, %s top-1 %.2f%% (drop %.2f points)", accuracy["images"],
             accuracy["reference"]["top1"], target, accuracy["target"]["top1"], top1_drop(accuracy, "target"))
    check_drop(accuracy, "target", "top1", options.max_top1_drop, what, options.eval_data, hint)


def _estimated_memory(plan: BuildPlan, bundle: Path) -> MemoryFigure | None:
    """For targets with no plan of their own: the analytic plan of the ONNX they compiled (static shapes)."""
    if plan.request.dynamic:
        return None
    from ..onnxtools.memory_plan import plan_memory

    return plan_memory(bundle / "model.onnx", plan.precision).figure()


def _verify(plan: BuildPlan, target: Target, prepared: PreparedOnnx, bundle: Path, manifest: dict[str, Any],
            result: CompileResult, eval_set: EvalSet | None,
            real: np.ndarray | None) -> tuple[Verification, dict[str, Any] | None]:
    """The target's outputs against the reference on the verification inputs, and its accuracy on the
    labelled images; with nothing to run (deferred, analytic), the ONNX stages' figures alone."""
    request = plan.request
    errors = prepared.stage_errors
    tolerances = request.tolerances()
    section = None if prepared.accuracy is None else dict(prepared.accuracy)
    if result.status == "ok" and target.executes:
        device = manifest["target"]["device"]
        with target.load(bundle, manifest) as session:
            if request.verify:
                for shape in plan.verify_shapes:
                    at = f" @{shape.size_label}" if request.dynamic else ""
                    inputs = verify_inputs(shape, real)
                    outputs = with_host_tail(bundle, [session.run(batch) for batch in inputs.batches])
                    errors.append(compare(f"{target.name} {device}{at}", request.precision,
                                          inputs.judged(request.precision, prepared.reference(shape)),
                                          inputs.judged(request.precision, outputs), prepared.output_names,
                                          tolerances[request.precision], prepared.classifier))
            if eval_set is not None and section is not None:
                outputs = with_host_tail(bundle, [session.run(b) for b in eval_set.batches(request.shape.batch)])
                if isinstance(eval_set, DetectionEval):
                    section["target"] = map_of(eval_set, outputs, prepared.output_names)
                else:
                    section["target"] = accuracy_of(eval_set.logits(outputs), eval_set.labels,
                                                    prepared.reference_top1())
    return summarize(errors, tolerances), section


def _log_verification(verification: Verification) -> None:
    for stage in verification.stages:
        for o in stage.outputs:
            log.info("verify %-28s %-5s %-10s max_abs %.3g rel %.3g cosine %.6f top1 %s %s", stage.stage,
                     stage.precision, o.name, o.max_abs, o.rel, o.cosine, o.top1_agreement,
                     "ok" if o.passed else f"FAILED (would pass: {o.would_pass})")
