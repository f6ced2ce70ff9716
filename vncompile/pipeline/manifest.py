"""The bundle's ``manifest.json``: what was built, from what, with which toolchain, verified how.

Its sections, for every target alike:
- ``model``, ``input_shape``, ``dynamic``, ``opset``, ``simplifier``: what went in (``model.features``:
  a backbone's selected maps, ``model.detector``: what a detector checkpoint held besides the backbone);
- ``outputs``: every output's name and shape, and a backbone's channels and stride;
- ``target``: ``name``, ``version``, ``device``, ``precision`` (the pipeline's) and ``facts`` (the
  target's own, which cannot overwrite the pipeline's keys);
- ``artifacts``: path, role, sha256, bytes, one of them ``primary``;
- ``memory`` / ``latency``: what the target knows without running (a compiler's plan, an estimate),
  in the same form ``vncompile profile`` reports (``api.target.MemoryFigure`` / ``LatencyFigure``);
- ``verification``, ``stages`` (timings), ``toolchain``, ``cache_key``, ``created``.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api.target import Artifact, CompileResult, LatencyFigure, MemoryFigure
from ..core.hashing import sha256_file
from ..core.io import holds_document

if TYPE_CHECKING:
    from .plan import BuildPlan

MANIFEST_SCHEMA = 2


def read_manifest(directory: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def is_bundle(directory: Path) -> bool:
    """Whether ``directory`` holds a build vncompile wrote (its manifest says so): one ``-o DIR --force`` replaces."""
    return holds_document(directory, "manifest.json", "schema", "cache_key", "artifacts")


def intact(directory: Path, manifest: dict[str, Any]) -> bool:
    """Every listed artifact present with its recorded size and hash."""
    for artifact in manifest.get("artifacts", []):
        path = directory / artifact["path"]
        if not path.is_file() or path.stat().st_size != artifact["bytes"]:
            return False
        if sha256_file(path) != artifact["sha256"]:
            return False
    return True


def primary_artifact(manifest: dict[str, Any]) -> dict[str, Any]:
    return next(a for a in manifest["artifacts"] if a.get("primary"))


def default_output_dir(manifest: dict[str, Any]) -> Path:
    """``build/<model>-<target>-<precision>-<size>``."""
    shape = manifest["input_shape"]
    size = str(shape[2]) if shape[2] == shape[3] else f"{shape[2]}x{shape[3]}"
    target = manifest["target"]
    features = manifest["model"].get("features")
    label = manifest["model"]["label"] + (f"-features{features.replace(',', '_')}" if features else "")
    return Path("build") / f"{label}-{target['name']}-{target['precision']}-{size}"


def artifact_records(bundle: Path, result: CompileResult, extra: list[Artifact] = ()) -> list[dict[str, Any]]:
    """The target-ready ONNX first (every bundle has it), then the target's artifacts and the pipeline's
    reports (``extra``), hashed."""
    records = [{"path": "model.onnx", "role": "onnx", "primary": False}] + [
        {"path": a.path, "role": a.role, "primary": a.primary} for a in [*result.artifacts, *extra]
        if a.path != "model.onnx"
    ]
    if result.primary.path == "model.onnx":
        records[0]["primary"] = True
    for record in records:
        path = bundle / record["path"]
        record["sha256"], record["bytes"] = sha256_file(path), path.stat().st_size
    return records


def figures(memory: MemoryFigure | None, latency: LatencyFigure | None) -> dict[str, Any]:
    return {"memory": None if memory is None else memory.as_dict(),
            "latency": None if latency is None else latency.as_dict()}


def new_manifest(plan: BuildPlan, model: dict[str, Any], result: CompileResult, bundle: Path, *,
                 outputs: list[dict[str, Any]], extra_artifacts: list[Artifact] = ()) -> dict[str, Any]:
    request, target = plan.request, plan.target
    return {
        "schema": MANIFEST_SCHEMA,
        "status": result.status,
        "model": model,
        "target": {
            "name": target.name,
            "version": target.availability().version,
            "device": request.options.device or target.default_device(),
            "precision": request.precision,
            "facts": dict(result.facts),
        },
        "input_shape": list(request.shape.as_tuple()),
        "dynamic": request.dynamic,
        "opset": request.opset,
        "simplifier": request.simplifier,
        "outputs": outputs,
        "artifacts": artifact_records(bundle, result, list(extra_artifacts)),
        "memory": None,
        "latency": None,
        "verification": {"passed": None, "skipped": True, "tolerance": {}, "stages": []},
        "accuracy": None,  # with --eval-data: top-1/top-5 per stage on the labelled images
        "stages": [],
        "toolchain": plan.toolchain,
        "notice": result.notice or None,
        "cache_key": plan.build_key,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
