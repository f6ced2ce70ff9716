"""``vncompile profile``: max memory and latency of each (model, target, size).

Each cell is built through the same pipeline and cache as ``build`` (in a build
worker process) and measured in a process of its own (``profile_worker``), both under
a timeout: a build failure, crash, hang or out-of-memory kill is one failed row with
its one-line reason, never the end of the profile.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import InputError, VncompileError
from .environment import machine_info, toolchain_versions
from .request import BuildRequest, InputShape, ModelSource, TargetOptions
from .workers import BuildWorker, measure

DEFAULT_MODELS = ("vanillanet_5", "resnet50", "plain_cnn_50")
DEFAULT_SIZES = (256, 384, 512)
PROFILE_SCHEMA = 1
_UNITS = {"": 1 / 1024, "b": 1 / 1024, "kb": 1, "k": 1, "mb": 1000, "m": 1000, "gb": 1000**2, "g": 1000**2,
          "kib": 1, "mib": 1024, "gib": 1024**2}


def parse_memory_size(text: str) -> float:
    """'1.2GB' -> KB (decimal units for KB/MB/GB as NPU datasheets use; KiB/MiB/GiB binary; bare: bytes)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise InputError(f"--memory-limit must look like 1.2GB, 900MB or 512MiB, got '{text}'")
    kb = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if kb <= 0:
        raise InputError(f"--memory-limit must be positive, got '{text}'")
    return kb


@dataclass(frozen=True)
class ProfileRequest:
    models: tuple[ModelSource, ...]
    targets: tuple[str, ...]
    sizes: tuple[int, ...] = DEFAULT_SIZES
    precision: str | None = None  # None: each target's default (fp32; rknn fp16)
    batch: int = 1
    warmup: int = 5
    runs: int = 20
    memory_limit_kb: float | None = None
    timeout_s: float = 900.0
    options: TargetOptions = field(default_factory=TargetOptions)

    def cells(self) -> list[tuple[ModelSource, str, int]]:
        return [(m, t, s) for m in self.models for t in self.targets for s in self.sizes]


def profilable_targets() -> list[str]:
    """Every target that can run (or plan) here: available, with a device to measure on."""
    from ..targets import get_target, target_names

    names = []
    for name in target_names():
        availability = get_target(name).availability()
        if availability.available and availability.devices:
            names.append(name)
    return names


def _row(source: ModelSource, target: str, size: int, request: ProfileRequest) -> dict[str, Any]:
    """A row before measuring: an error until proven otherwise."""
    return {
        "model": _label(source), "network": source.model_name, "target": target, "precision": request.precision,
        "size": size, "batch": request.batch, "status": "error", "reason": None, "latency_ms": None,
        "memory_kb": None, "artifact_sha256": None,
    }


def _label(source: ModelSource) -> str:
    if source.checkpoint is not None:
        return Path(source.checkpoint).stem
    return source.spec_without_checkpoint().label


def profile_cell(source: ModelSource, target: str, size: int, request: ProfileRequest,
                 builder: BuildWorker) -> dict[str, Any]:
    """Build one cell (or take it from the cache) and measure it, each in a child process: one row."""
    from ..targets import get_target

    row = _row(source, target, size, request)
    precision = request.precision or get_target(target).default_precision(request.options)
    row["precision"] = precision
    build_request = BuildRequest(source, target, precision, InputShape.square(size, request.batch),
                                 options=request.options)
    try:
        manifest, directory = builder.build(build_request)
    except VncompileError as exc:
        row["reason"] = str(exc)
        return row
    row["network"] = manifest["model"]["name"]
    row["artifact_sha256"] = manifest["artifacts"][-1]["sha256"]
    if manifest["status"] != "ok":
        row["reason"] = f"{manifest['status']}: {manifest.get('notice') or 'nothing to run here'}"
        return row
    try:
        result = measure(target, directory, manifest, warmup=request.warmup, runs=request.runs,
                         timeout_s=request.timeout_s)
    except VncompileError as exc:
        row["reason"] = str(exc)
        return row
    row["latency_ms"] = result["latency"]
    memory = result["memory"]
    if memory is not None:
        row["memory_kb"] = {"max": memory["max_kb"], "weights": memory["weights_kb"],
                            "activations": memory["activations_kb"], "source": memory["source"],
                            "detail": memory["detail"]}
    row["status"] = "ok"
    if memory is not None and request.memory_limit_kb is not None and memory["max_kb"] > request.memory_limit_kb:
        row["status"] = "oom"
        row["reason"] = f"needs {memory['max_kb']:,.0f} KB, over the {request.memory_limit_kb:,.0f} KB limit"
    return row


def run_profile(request: ProfileRequest,
                on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every cell of the matrix, in order; the profile document (``profile.json``)."""
    from ..targets import get_target

    rows = []
    with BuildWorker(timeout_s=request.timeout_s) as builder:
        for source, target, size in request.cells():
            row = profile_cell(source, target, size, request, builder)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    packages = sorted({p for t in request.targets for p in get_target(t).packages})
    return {
        "schema": PROFILE_SCHEMA,
        "vncompile": __version__,
        "machine": machine_info(),
        "toolchain": toolchain_versions(*packages),
        "settings": {"sizes": list(request.sizes), "precision": request.precision or "each target's default",
                     "batch": request.batch,
                     "warmup": request.warmup, "runs": request.runs, "memory_limit_kb": request.memory_limit_kb},
        "rows": rows,
        "paper_table1": paper_table1(),
    }


def paper_table1() -> dict[str, Any]:
    from importlib.resources import files

    tables = json.loads(files("vncompile").joinpath("data/paper_tables.json").read_text())
    return tables["table1_mobile_npu_max_memory_kb"]
