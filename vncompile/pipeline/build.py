"""``vncompile build``: the stages chained, timed, logged, verified, cached and written atomically.

The cache lookup needs no torch: a repeated build is a hash of the checkpoint, the
options and the toolchain versions, then a copy. Everything heavy is imported only
when a build actually runs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import OutputExists, VerificationError
from ..targets import get_target, require_available
from ..targets.base import CompileContext, CompileResult, Target
from .artifacts import atomic_directory, sha256_file, write_json
from .cache import BuildCache, copy_tree, intact, read_manifest
from .environment import toolchain_versions, total_memory_bytes
from .request import BuildRequest

log = logging.getLogger("vncompile")
MANIFEST_SCHEMA = 1
VERIFY_IMAGES = 4  # seeded inputs per verified size (top-1 agreement is over these)
SIMPLIFIER_PACKAGES = {"onnxslim": ("onnxslim",), "onnxsim": ("onnxsim",), "none": ()}


class StageReporter(Protocol):
    """Where stage progress goes: a rich display in the CLI, nothing in tests."""

    def start(self, title: str, stages: list[str]) -> None: ...
    def stage(self, name: str) -> contextlib.AbstractContextManager[None]: ...
    def finish(self) -> None: ...


class SilentReporter:
    def start(self, title: str, stages: list[str]) -> None:
        pass

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    def finish(self) -> None:
        pass


@dataclass
class BuildOutcome:
    manifest: dict[str, Any]
    out_dir: Path
    cached: bool  # served from the cache without running any stage
    up_to_date: bool = False  # the output already held exactly this build


@dataclass
class _Timings:
    reporter: StageReporter
    records: list[dict[str, Any]] = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        log.info("stage %s: start", name)
        with self.reporter.stage(name):
            yield
        seconds = time.perf_counter() - start
        self.records.append({"name": name, "seconds": round(seconds, 3)})
        log.info("stage %s: %.2f s", name, seconds)


def default_output_dir(manifest: dict[str, Any]) -> Path:
    """``build/<model>-<target>-<precision>-<size>``."""
    shape = manifest["input_shape"]
    size = str(shape[2]) if shape[2] == shape[3] else f"{shape[2]}x{shape[3]}"
    target = manifest["target"]
    return Path("build") / f"{manifest['model']['label']}-{target['name']}-{target['precision']}-{size}"


def _same_build(directory: Path, key: str) -> bool:
    manifest = read_manifest(directory)
    return manifest is not None and manifest.get("cache_key") == key and intact(directory, manifest)


def _check_output(out_dir: Path, key: str, force: bool) -> bool:
    """True when ``out_dir`` already holds this exact build; raises if it holds another."""
    if not out_dir.exists():
        return False
    if _same_build(out_dir, key):
        return True
    if not force:
        raise OutputExists(f"{out_dir} exists and holds a different build; pass --force to replace it")
    return False


def _cache_key(request: BuildRequest, target: Target) -> tuple[str, dict[str, str | None], str | None]:
    checkpoint = request.source.checkpoint
    checkpoint_sha256 = sha256_file(Path(checkpoint)) if checkpoint is not None else None
    toolchain = toolchain_versions(*target.packages, *SIMPLIFIER_PACKAGES[request.simplifier])
    return request.cache_key(checkpoint_sha256, toolchain), toolchain, checkpoint_sha256


def build(
    request: BuildRequest,
    out_dir: Path | None = None,
    *,
    force: bool = False,
    cache: BuildCache | None = None,
    reporter: StageReporter | None = None,
) -> BuildOutcome:
    """Build (or fetch from the cache) and write the bundle atomically to ``out_dir``."""
    cache = cache or BuildCache()
    target = get_target(request.target)
    key, toolchain, _ = _cache_key(request, target)
    if out_dir is not None and _check_output(out_dir, key, force):
        return BuildOutcome(read_manifest(out_dir) or {}, out_dir, cached=True, up_to_date=True)
    with cache.lock(key):
        manifest = cache.lookup(key)
        if manifest is not None:
            source_dir, cached = cache.entry(key), True
            return _publish(source_dir, manifest, out_dir, key, force, cached)
        with tempfile.TemporaryDirectory(prefix="vncompile-build-") as work:
            manifest, bundle = _run_pipeline(request, require_available(request.target), key, toolchain,
                                             Path(work), reporter or SilentReporter())
            cache.store(key, bundle)
            return _publish(bundle, manifest, out_dir, key, force, cached=False)


def _publish(source_dir: Path, manifest: dict[str, Any], out_dir: Path | None, key: str, force: bool,
             cached: bool) -> BuildOutcome:
    out_dir = out_dir or default_output_dir(manifest)
    if _check_output(out_dir, key, force):
        return BuildOutcome(manifest, out_dir, cached=cached, up_to_date=True)
    with atomic_directory(out_dir, force=True) as tmp:
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


STAGE_NAMES = ["load", "fuse", "export", "simplify", "quantize", "compile", "verify"]


def _run_pipeline(request: BuildRequest, target: Target, key: str, toolchain: dict[str, str | None],
                  work: Path, reporter: StageReporter) -> tuple[dict[str, Any], Path]:
    from . import stages
    from .calibration import calibration_samples
    from .request import check_input_shape

    bundle = work / "bundle"
    bundle.mkdir()
    target.check_request(request)
    form = target.onnx_form(request.precision)
    names = [s for s in STAGE_NAMES if (s != "quantize" or form == "int8-qdq") and (s != "verify" or request.verify)]
    timings = _Timings(reporter)
    reporter.start(f"{request.target} {request.precision} {request.shape.label}", names)
    try:
        with _build_log(bundle / "build.log"):
            log.info("request: %s", request)
            with timings.stage("load"):
                loaded = stages.load_model(request.source)
                check_input_shape(loaded.spec, request.shape, request.dynamic, total_memory_bytes())
            with timings.stage("fuse"):
                exported = stages.network_for_export(loaded)
            exported_onnx = work / "exported.onnx"
            with timings.stage("export"):
                stages.export_onnx(exported, request.shape, exported_onnx, opset=request.opset,
                                   dynamic=request.dynamic, compute="fp16" if form == "fp16" else "fp32",
                                   io_dtype=request.options.io_dtype)
            simplified_onnx = work / "simplified.onnx"
            with timings.stage("simplify"):
                if request.simplifier == "none":
                    shutil.copyfile(exported_onnx, simplified_onnx)
                else:
                    stages.simplify_onnx(exported_onnx, simplified_onnx, request.simplifier)
                    _check_simplified(exported_onnx, simplified_onnx, request, form)
            calibration = None
            if form == "int8-qdq":
                with timings.stage("quantize"):
                    calibration = calibration_samples(request.options.calibration, request.shape)
                    stages.quantize_qdq(simplified_onnx, bundle / "model.onnx", calibration)
            else:
                shutil.copyfile(simplified_onnx, bundle / "model.onnx")
            with timings.stage("compile"):
                result = target.compile(CompileContext(bundle / "model.onnx", bundle, request, log, calibration))
            manifest = _manifest(request, target, key, toolchain, loaded, exported, result, bundle)
            if request.verify:
                with timings.stage("verify"):
                    verification = _verify(request, target, loaded, exported, form, work, bundle, manifest, result)
                manifest["verification"] = verification.as_dict()
                _log_verification(verification)
                if not verification.passed:
                    raise VerificationError(_failure_line(verification))
            manifest["stages"] = timings.records
            log.info("build finished: %s", manifest["status"])
    finally:
        reporter.finish()
    write_json(bundle / "manifest.json", manifest)
    return manifest, bundle


def _check_simplified(exported: Path, simplified: Path, request: BuildRequest, form: str) -> None:
    """The simplified graph must compute what the exported one does (one seeded input)."""
    from . import stages
    from .verify import compare

    inputs = stages.seeded_inputs(request.shape, 1, seed=99)
    precision = "fp16" if form == "fp16" else "fp32"
    error = compare("simplified vs exported", precision, stages.run_onnx(exported, inputs),
                    stages.run_onnx(simplified, inputs), classifier=False)
    log.info("simplified vs exported: max abs %.3g, rel %.3g", error.max_abs, error.rel)
    if not error.passed:
        raise VerificationError(f"{request.simplifier} changed the graph's outputs (rel error {error.rel:.3g}); "
                                "try --simplifier none")


def _verify(request, target, loaded, exported, form, work, bundle, manifest, result: CompileResult):
    import torch

    from . import stages
    from .verify import compare, summarize

    classifier = stages.output_names(loaded.network) == ["logits"]
    onnx_precision = "fp16" if form == "fp16" else "fp32"
    shape = request.shape
    shapes = [shape] + ([shape.resized(shape.height + 32, shape.width + 32)] if request.dynamic else [])
    session = target.load(bundle, manifest) if result.status == "ok" else None
    device = manifest["target"]["device"]
    errors = []
    for s in shapes:
        at = f" @{s.size_label}" if request.dynamic else ""
        inputs = stages.seeded_inputs(s, max(1, -(-VERIFY_IMAGES // s.batch)))
        reference = stages.run_torch(loaded.network, inputs, dtype=torch.float64)
        if exported is not loaded:
            errors.append(compare(f"torch fused{at}", "fp32", reference, stages.run_torch(exported.network, inputs),
                                  classifier))
        errors.append(compare(f"onnx exported{at}", onnx_precision, reference,
                              stages.run_onnx(work / "exported.onnx", inputs), classifier))
        errors.append(compare(f"onnx simplified{at}", onnx_precision, reference,
                              stages.run_onnx(work / "simplified.onnx", inputs), classifier))
        if form == "int8-qdq":
            errors.append(compare(f"onnx int8 qdq{at}", "int8", reference,
                                  stages.run_onnx(bundle / "model.onnx", inputs), classifier))
        if session is not None:
            outputs = [session.run(batch) for batch in inputs]
            errors.append(compare(f"{target.name} {device}{at}", request.precision, reference, outputs, classifier))
    return summarize(errors)


def _log_verification(verification) -> None:
    for s in verification.stages:
        log.info("verify %-28s %-5s max_abs %.3g rel %.3g cosine %.6f top1 %s %s", s.stage, s.precision, s.max_abs,
                 s.rel, s.cosine, s.top1_agreement, "ok" if s.passed else "FAILED")


def _failure_line(verification) -> str:
    failed = [s for s in verification.stages if not s.passed]
    worst = failed[0]
    tol = verification.tolerance[worst.precision]
    limit = f"rel <= {tol['rel']:g}" if "rel" in tol else f"cosine >= {tol['cosine']:g}"
    return (f"verification failed at '{worst.stage}' ({worst.precision}): rel error {worst.rel:.3g}, cosine "
            f"{worst.cosine:.5f}, needs {limit}; pass --no-verify to keep the artifact anyway")


def _manifest(request: BuildRequest, target: Target, key: str, toolchain: dict[str, str | None], loaded, exported,
              result: CompileResult, bundle: Path) -> dict[str, Any]:
    availability = target.availability()
    artifacts = [{"path": "model.onnx", "role": "onnx"}] + [
        {"path": a.path, "role": a.role} for a in result.artifacts if a.path != "model.onnx"
    ]
    for artifact in artifacts:
        path = bundle / artifact["path"]
        artifact["sha256"], artifact["bytes"] = sha256_file(path), path.stat().st_size
    spec = exported.spec
    return {
        "schema": MANIFEST_SCHEMA,
        "status": result.status,
        "model": {
            "name": spec.name,
            "label": spec.label,
            "width": spec.width,
            "form": spec.form,
            "act_num": spec.act_num,
            "num_classes": spec.num_classes,
            "act_learn": loaded.act_learn.as_dict(),
            "checkpoint_sha256": loaded.checkpoint_sha256,
            "trained": loaded.trained,
        },
        "target": {
            "name": target.name,
            "version": availability.version,
            "device": request.options.device or target.default_device(),
            "precision": request.precision,
            **result.info,
        },
        "input_shape": list(request.shape.as_tuple()),
        "dynamic": request.dynamic,
        "opset": request.opset,
        "simplifier": request.simplifier,
        "artifacts": artifacts,
        "verification": {"passed": None, "skipped": True, "tolerance": {}, "stages": []},
        "stages": [],
        "toolchain": toolchain,
        "notice": result.notice or None,
        "cache_key": key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
