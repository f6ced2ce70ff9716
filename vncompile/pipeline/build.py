"""``vncompile build``: prepare (cached) -> compile -> verify, timed, logged, cached, written atomically.

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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputExists, VerificationError
from ..hashing import sha256_file
from ..targets import get_target, require_available
from ..targets.base import CompileContext, CompileResult, Target
from .artifacts import atomic_directory, write_json
from .cache import BuildCache, copy_tree, intact, read_manifest
from .environment import toolchain_versions
from .prepare import PREPARE_STAGES, PreparedOnnx, prepare, verify_inputs, verify_shapes
from .request import BuildRequest
from .timing import SilentReporter, StageReporter, StageTimings
from .verify import Verification, compare, summarize

log = logging.getLogger("vncompile")
MANIFEST_SCHEMA = 1
SIMPLIFIER_PACKAGES = {"onnxslim": ("onnxslim",), "onnxsim": ("onnxsim",), "none": ()}
STAGE_NAMES = [*PREPARE_STAGES, "reference", "compile", "verify"]


@dataclass
class BuildOutcome:
    manifest: dict[str, Any]
    out_dir: Path
    cached: bool  # served from the cache without running any stage
    up_to_date: bool = False  # the output already held exactly this build


def default_output_dir(manifest: dict[str, Any]) -> Path:
    """``build/<model>-<target>-<precision>-<size>``."""
    shape = manifest["input_shape"]
    size = str(shape[2]) if shape[2] == shape[3] else f"{shape[2]}x{shape[3]}"
    target = manifest["target"]
    return Path("build") / f"{manifest['model']['label']}-{target['name']}-{target['precision']}-{size}"


def _check_output(out_dir: Path, key: str, force: bool) -> bool:
    """True when ``out_dir`` already holds this exact build; raises if it holds another."""
    if not out_dir.exists():
        return False
    manifest = read_manifest(out_dir)
    if manifest is not None and manifest.get("cache_key") == key and intact(out_dir, manifest):
        return True
    if not force:
        raise OutputExists(f"{out_dir} exists and holds a different build; pass --force to replace it")
    return False


@dataclass(frozen=True)
class _Keys:
    build: str
    onnx: str
    toolchain: dict[str, str | None]
    checkpoint_sha256: str | None  # hashed once, for the keys, and handed to the loader


def _keys(request: BuildRequest, target: Target) -> _Keys:
    checkpoint = request.source.checkpoint
    checkpoint_sha256 = sha256_file(Path(checkpoint)) if checkpoint is not None else None
    core = toolchain_versions(*SIMPLIFIER_PACKAGES[request.simplifier])
    toolchain = {**core, **toolchain_versions(*target.packages), **target.cache_identity()}
    form = target.onnx_form(request.precision)
    return _Keys(request.cache_key(checkpoint_sha256, toolchain), request.onnx_key(form, checkpoint_sha256, core),
                 toolchain, checkpoint_sha256)


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
    keys = _keys(request, target)
    if out_dir is not None and _check_output(out_dir, keys.build, force):
        return BuildOutcome(read_manifest(out_dir) or {}, out_dir, cached=True, up_to_date=True)
    with cache.lock(keys.build):
        manifest, cached = _ensure_built(request, keys, cache, reporter)
        return _publish(cache.entry(keys.build), manifest, out_dir, keys.build, force, cached)


def cached_build(request: BuildRequest, cache: BuildCache | None = None,
                 reporter: StageReporter | None = None) -> tuple[dict[str, Any], Path, bool]:
    """The build's manifest and its directory in the cache, building it if needed (profile, ci)."""
    cache = cache or BuildCache()
    keys = _keys(request, get_target(request.target))
    with cache.lock(keys.build):
        manifest, cached = _ensure_built(request, keys, cache, reporter)
        return manifest, cache.entry(keys.build), cached


def _ensure_built(request: BuildRequest, keys: _Keys, cache: BuildCache,
                  reporter: StageReporter | None) -> tuple[dict[str, Any], bool]:
    """Under the key's lock: the cached manifest, or a fresh build stored in the cache."""
    manifest = cache.lookup(keys.build)
    if manifest is not None:
        return manifest, True
    with tempfile.TemporaryDirectory(prefix="vncompile-build-") as work:
        bundle = Path(work) / "bundle"
        bundle.mkdir()
        manifest = _run(request, require_available(request.target), keys, cache, Path(work), bundle,
                        reporter or SilentReporter())
        cache.store(keys.build, bundle)
    return manifest, False


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


def _run(request: BuildRequest, target: Target, keys: _Keys, cache: BuildCache, work: Path, bundle: Path,
         reporter: StageReporter) -> dict[str, Any]:
    target.check_request(request)
    form = target.onnx_form(request.precision)
    timings = StageTimings(reporter)
    names = [s for s in STAGE_NAMES if (s != "quantize" or form == "int8-qdq")
             and (s not in ("reference", "verify") or request.verify)]
    reporter.start(f"{request.target} {request.precision} {request.shape.label}", names)
    try:
        with _build_log(bundle / "build.log"):
            log.info("request: %s", request)
            prepared = prepare(request, form, keys.onnx, cache, work, timings, keys.checkpoint_sha256)
            after_prepare = len(timings.records)
            shutil.copyfile(prepared.onnx_path, bundle / "model.onnx")
            with timings.stage("compile"):
                result = target.compile(CompileContext(bundle / "model.onnx", bundle, request, log,
                                                       _calibration(request, form)))
            manifest = _manifest(request, target, keys, prepared, result, bundle)
            if request.verify:
                with timings.stage("verify"):
                    verification = _verify(request, target, prepared, bundle, manifest, result)
                manifest["verification"] = verification.as_dict()
                _log_verification(verification)
                if not verification.passed:
                    raise VerificationError(_failure_line(verification))
            manifest["stages"] = prepared.timings + timings.records[after_prepare:]
            log.info("build finished: %s", manifest["status"])
    finally:
        reporter.finish()
    write_json(bundle / "manifest.json", manifest)
    return manifest


def _calibration(request: BuildRequest, form: str):
    """Targets that quantize themselves (rknn) get the preprocessed calibration inputs."""
    if request.precision != "int8" or form == "int8-qdq":
        return None
    from .calibration import calibration_samples

    return calibration_samples(request.options.calibration, request.shape)


def _verify(request: BuildRequest, target: Target, prepared: PreparedOnnx, bundle: Path, manifest: dict[str, Any],
            result: CompileResult) -> Verification:
    errors = prepared.stage_errors
    if result.status == "ok" and target.executes:
        session = target.load(bundle, manifest)
        device = manifest["target"]["device"]
        for shape in verify_shapes(request):
            at = f" @{shape.size_label}" if request.dynamic else ""
            outputs = [session.run(batch) for batch in verify_inputs(shape)]
            errors.append(compare(f"{target.name} {device}{at}", request.precision, prepared.reference(shape),
                                  outputs, prepared.classifier))
    return summarize(errors)


def _log_verification(verification: Verification) -> None:
    for s in verification.stages:
        log.info("verify %-28s %-5s max_abs %.3g rel %.3g cosine %.6f top1 %s %s", s.stage, s.precision, s.max_abs,
                 s.rel, s.cosine, s.top1_agreement, "ok" if s.passed else "FAILED")


def _failure_line(verification: Verification) -> str:
    worst = next(s for s in verification.stages if not s.passed)
    tol = verification.tolerance[worst.precision]
    limit = f"rel <= {tol['rel']:g}" if "rel" in tol else f"cosine >= {tol['cosine']:g}"
    return (f"verification failed at '{worst.stage}' ({worst.precision}): rel error {worst.rel:.3g}, cosine "
            f"{worst.cosine:.5f}, needs {limit}; pass --no-verify to keep the artifact anyway")


def _manifest(request: BuildRequest, target: Target, keys: _Keys, prepared: PreparedOnnx, result: CompileResult,
              bundle: Path) -> dict[str, Any]:
    artifacts = [{"path": "model.onnx", "role": "onnx"}] + [
        {"path": a.path, "role": a.role} for a in result.artifacts if a.path != "model.onnx"
    ]
    for artifact in artifacts:
        path = bundle / artifact["path"]
        artifact["sha256"], artifact["bytes"] = sha256_file(path), path.stat().st_size
    return {
        "schema": MANIFEST_SCHEMA,
        "status": result.status,
        "model": prepared.model,
        "target": {
            "name": target.name,
            "version": target.availability().version,
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
        "toolchain": keys.toolchain,
        "notice": result.notice or None,
        "cache_key": keys.build,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
