"""The CI build matrix (``configs/ci.yaml``): models x devices x sizes, per-cell overrides, shards.

A cell is one (model, device, size) build. Shards partition the cells round-robin in
the order of their sorted ids, so every cell is in exactly one shard and shards stay
balanced; ``github_matrix`` turns the selection into a GitHub Actions job matrix, one
job per runner label and shard, so a large fleet fans out over the CI's own runners.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..vanillanet.archs import MODEL_NAMES
from .devices import OPTION_SCHEMA, DeviceConfig, FieldSpec, load_device_config, read_yaml, validate
from .request import PRECISIONS, BuildRequest, ModelSource, TargetOptions


def _is_list_of(check):
    return lambda v: isinstance(v, list) and bool(v) and all(check(x) for x in v)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


CI_SCHEMA: dict[str, FieldSpec] = {
    "devices_dir": FieldSpec(lambda v: isinstance(v, str), "a directory path"),
    "models": FieldSpec(_is_list_of(lambda m: isinstance(m, (str, dict))), "a list of model names, paths or mappings",
                        required=True),
    "devices": FieldSpec(_is_list_of(lambda d: isinstance(d, str)), "a list of device config names", required=True),
    "sizes": FieldSpec(_is_list_of(lambda s: isinstance(s, int) and not isinstance(s, bool) and s > 0),
                       "a list of positive integers"),
    "verify": FieldSpec(lambda v: isinstance(v, bool), "true or false"),
    "overrides": FieldSpec(lambda v: isinstance(v, list), "a list of overrides"),
}
MODEL_SCHEMA: dict[str, FieldSpec] = {
    "name": FieldSpec(lambda v: v in MODEL_NAMES, f"one of {', '.join(MODEL_NAMES)}"),
    "checkpoint": FieldSpec(lambda v: isinstance(v, str) and bool(v), "a checkpoint path"),
    "width": FieldSpec(_is_number, "a positive number"),
    "label": FieldSpec(lambda v: isinstance(v, str) and re.fullmatch(r"[\w.-]+", v) is not None,
                       "a name of letters, digits, '.', '_' or '-'"),
}
OVERRIDE_SCHEMA: dict[str, FieldSpec] = {
    "model": FieldSpec(lambda v: isinstance(v, str), "a model label"),
    "device": FieldSpec(lambda v: isinstance(v, str), "a device name"),
    "size": FieldSpec(lambda v: isinstance(v, int) and v > 0, "a positive integer"),
    "skip": FieldSpec(lambda v: isinstance(v, bool), "true or false"),
    "sizes": CI_SCHEMA["sizes"],
    "precision": FieldSpec(lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "verify": CI_SCHEMA["verify"],
    "options": FieldSpec(lambda v: isinstance(v, dict), "a mapping of target options"),
}


@dataclass(frozen=True)
class ModelEntry:
    label: str
    source: ModelSource


@dataclass(frozen=True)
class Cell:
    model: ModelEntry
    device: DeviceConfig
    size: int
    request: BuildRequest

    @property
    def id(self) -> str:
        return f"{self.model.label}/{self.device.name}/{'dynamic' if self.device.dynamic else self.size}"

    @property
    def runner_key(self) -> str:
        runner = self.device.runner
        return runner if isinstance(runner, str) else ",".join(runner)


@dataclass(frozen=True)
class CiConfig:
    path: Path
    cells: list[Cell]


def _model_entry(item: Any, where: str) -> ModelEntry:
    if isinstance(item, str):
        item = {"name": item} if item in MODEL_NAMES else {"checkpoint": item}
    validate(item, MODEL_SCHEMA, where)
    if ("name" in item) == ("checkpoint" in item):
        raise InputError(f"{where}: give exactly one of 'name' or 'checkpoint'")
    if "checkpoint" in item:
        path = Path(item["checkpoint"])
        if not path.is_file():
            raise InputError(f"{where}: checkpoint '{path}' does not exist")
        return ModelEntry(item.get("label", path.stem), ModelSource(checkpoint=path, model_name=item.get("name")))
    source = ModelSource(model_name=item["name"], width=float(item.get("width", 1.0)))
    return ModelEntry(item.get("label", source.spec_without_checkpoint().label), source)


def _matches(override: dict[str, Any], model: str, device: str, size: int | None) -> bool:
    return (override.get("model", model) == model and override.get("device", device) == device
            and (size is None or override.get("size", size) == size))


def _options(base: TargetOptions, changes: dict[str, Any], where: str) -> TargetOptions:
    validate(changes, OPTION_SCHEMA, f"{where}: options")
    values = dict(changes)
    for key in ("calibration", "timing_cache"):
        if key in values:
            values[key] = Path(values[key])
    if "profile_sizes" in values:
        values["profile_sizes"] = tuple(values["profile_sizes"])
    from .calibration import with_calibration_hash

    return with_calibration_hash(dataclasses.replace(base, **values))


def load_ci_config(path: Path) -> CiConfig:
    path = Path(path)
    document = validate(read_yaml(path), CI_SCHEMA, str(path))
    devices_dir = Path(document.get("devices_dir") or path.parent / "devices")
    models = [_model_entry(m, f"{path}: models[{i}]") for i, m in enumerate(document["models"])]
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        shared = ", ".join(sorted({x for x in labels if labels.count(x) > 1}))
        raise InputError(f"{path}: two models share a label ({shared}); give them distinct 'label's")
    devices = []
    for name in document["devices"]:
        config = devices_dir / f"{name}.yaml"
        if not config.is_file():
            raise InputError(f"{path}: device '{name}' has no config {config}")
        devices.append(load_device_config(config))
    overrides = [validate(o, OVERRIDE_SCHEMA, f"{path}: overrides[{i}]")
                 for i, o in enumerate(document.get("overrides", []))]
    verify = document.get("verify", True)
    cells = []
    for model in models:
        for device in devices:
            sizes = document.get("sizes") or list(device.sizes)
            for o in overrides:
                if "sizes" in o and _matches(o, model.label, device.name, None):
                    sizes = o["sizes"]
            # A dynamic device is one build covering all its sizes.
            for size in sizes[:1] if device.dynamic else sizes:
                request = device.build_request(model.source, size, verify=verify, sizes=tuple(sizes))
                cell = _cell(model, device, size, request,
                             [o for o in overrides if _matches(o, model.label, device.name, size)], path)
                if cell is not None:
                    cells.append(cell)
    return CiConfig(path, sorted(cells, key=lambda c: c.id))


def _cell(model: ModelEntry, device: DeviceConfig, size: int, request: BuildRequest,
          overrides: list[dict[str, Any]], path: Path) -> Cell | None:
    for o in overrides:
        if o.get("skip"):
            return None
        if "precision" in o:
            request = dataclasses.replace(request, precision=o["precision"])
        if "verify" in o:
            request = dataclasses.replace(request, verify=o["verify"])
        if "options" in o:
            request = dataclasses.replace(request, options=_options(request.options, o["options"], str(path)))
    return Cell(model, device, size, request)


def parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise InputError(f"--shard must look like i/n with 1 <= i <= n, got '{text}'")
    return int(match.group(1)), int(match.group(2))


def select(cells: list[Cell], *, runner: str | None = None, cell: str | None = None,
           shard: tuple[int, int] | None = None) -> list[Cell]:
    """The cells one job builds: of one runner label, one cell, and/or one shard."""
    chosen = [c for c in cells if runner is None or c.runner_key == runner]
    if cell is not None:
        chosen = [c for c in chosen if c.id == cell]
        if not chosen:
            raise InputError(f"no cell '{cell}' in the matrix (cells: {', '.join(c.id for c in cells[:6])}...)")
    if shard is not None:
        index, count = shard
        chosen = [c for i, c in enumerate(sorted(chosen, key=lambda c: c.id)) if i % count == index - 1]
    return chosen


def github_matrix(cells: list[Cell], cells_per_job: int = 8) -> dict[str, list[dict[str, Any]]]:
    """``{"include": [...]}``: per runner label, enough shards that none builds more than ``cells_per_job``."""
    include = []
    for runner in sorted({c.runner_key for c in cells}):
        group = [c for c in cells if c.runner_key == runner]
        shards = max(1, math.ceil(len(group) / cells_per_job))
        labels = group[0].device.runner
        for index in range(1, shards + 1):
            include.append({
                "name": f"{runner} {index}/{shards}",
                "runs_on": labels if isinstance(labels, str) else list(labels),
                "runner": runner,
                "shard": f"{index}/{shards}",
                "cells": [c.id for c in select(group, shard=(index, shards))],
            })
    return {"include": include}
