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

from ..api.options import TargetOptions, options_from_document
from ..api.request import BuildRequest, ModelSource
from ..api.tolerance import PRECISIONS
from ..core.errors import InputError
from ..core.schema import (
    Flag,
    IntList,
    ListOf,
    Mapping_,
    OneOf,
    PathKind,
    PositiveInt,
    PositiveNumber,
    Text,
    from_document,
    setting,
)
from ..devices import DeviceConfig, Features, load_device_config, read_yaml
from ..vanillanet.archs import MODEL_NAMES


class Label(Text):
    def __init__(self) -> None:
        super().__init__("a name of letters, digits, '.', '_' or '-'")

    def from_value(self, value: Any) -> str:
        if not isinstance(value, str) or re.fullmatch(r"[\w.-]+", value) is None:
            raise ValueError
        return value


@dataclass(frozen=True)
class CiDocument:
    models: list[Any] = setting(ListOf("a list of model names, paths or mappings",
                                       lambda m: isinstance(m, (str, dict))))
    devices: list[str] = setting(ListOf("a list of device config names", lambda d: isinstance(d, str)))
    devices_dir: Path | None = setting(PathKind("a directory path"), None)
    sizes: tuple[int, ...] | None = setting(IntList("a list of positive integers"), None)
    verify: bool = setting(Flag(), True)
    overrides: list[Any] = setting(ListOf("a list of overrides"), [])


@dataclass(frozen=True)
class ModelItem:
    name: str | None = setting(OneOf(MODEL_NAMES), None)
    checkpoint: Path | None = setting(PathKind("a checkpoint path"), None)
    width: float = setting(PositiveNumber(), 1.0)
    label: str | None = setting(Label(), None)
    features: str | None = setting(Features(), None)  # a headless backbone's outputs (vncompile build --features)
    prefix: str | None = setting(Text("a key prefix, e.g. model.0."), None)  # a detector's backbone


@dataclass(frozen=True)
class Override:
    model: str | None = setting(Text("a model label"), None)
    device: str | None = setting(Text("a device name"), None)
    size: int | None = setting(PositiveInt(), None)
    skip: bool = setting(Flag(), False)
    sizes: tuple[int, ...] | None = setting(IntList("a list of positive integers"), None)
    precision: str | None = setting(OneOf(PRECISIONS), None)
    verify: bool | None = setting(Flag(), None)
    options: dict[str, Any] = setting(Mapping_(), {})

    def matches(self, model: str, device: str, size: int | None) -> bool:
        return (self.model in (None, model) and self.device in (None, device)
                and (size is None or self.size in (None, size)))


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
    model = from_document(ModelItem, item, where)
    if (model.name is None) == (model.checkpoint is None):
        raise InputError(f"{where}: give exactly one of 'name' or 'checkpoint'")
    if model.checkpoint is not None:
        if not model.checkpoint.is_file():
            raise InputError(f"{where}: checkpoint '{model.checkpoint}' does not exist")
        source = ModelSource(checkpoint=model.checkpoint, features=model.features, prefix=model.prefix)
        return ModelEntry(model.label or model.checkpoint.stem + _features_suffix(source), source)
    source = ModelSource(model_name=model.name, width=model.width, features=model.features, prefix=model.prefix)
    return ModelEntry(model.label or source.spec_without_checkpoint().label + _features_suffix(source), source)


def _features_suffix(source: ModelSource) -> str:
    """A backbone's cells apart from its classifier's: ``vanillanet_13-features0_1_8_10``."""
    return f"-features{source.features.replace(',', '_')}" if source.features else ""


def _options(base: TargetOptions, changes: dict[str, Any], where: str, target: str) -> TargetOptions:
    from ..data.calibration import with_data_hashes
    from ..targets import get_target

    return with_data_hashes(options_from_document(changes, f"{where}: options", get_target(target).own_options, base))


def load_ci_config(path: Path) -> CiConfig:
    path = Path(path)
    document = from_document(CiDocument, read_yaml(path), str(path))
    devices_dir = document.devices_dir or path.parent / "devices"
    models = [_model_entry(m, f"{path}: models[{i}]") for i, m in enumerate(document.models)]
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        shared = ", ".join(sorted({x for x in labels if labels.count(x) > 1}))
        raise InputError(f"{path}: two models share a label ({shared}); give them distinct 'label's")
    devices = []
    for name in document.devices:
        config = devices_dir / f"{name}.yaml"
        if not config.is_file():
            raise InputError(f"{path}: device '{name}' has no config {config}")
        devices.append(load_device_config(config))
    overrides = [from_document(Override, o, f"{path}: overrides[{i}]") for i, o in enumerate(document.overrides)]
    cells = []
    for model in models:
        for device in devices:
            sizes = document.sizes or device.sizes
            overridden = False
            for o in overrides:
                if o.sizes is not None and o.matches(model.label, device.name, None):
                    sizes, overridden = o.sizes, True
            if model.source.is_onnx:  # a fixed-size graph at its own size; other sizes, if set for it, refused
                from ..pipeline.plan import graph_sizes

                sizes = list(graph_sizes([model.source], tuple(sizes), overridden, detection_sizes=tuple(sizes)))
            # A dynamic device is one build covering all its sizes.
            for size in sizes[:1] if device.dynamic else sizes:
                # A cell is built for its device on whichever runner takes it: maybe not that device.
                request = device.build_request(model.source, size, verify=document.verify, sizes=tuple(sizes),
                                               cross=True)
                cell = _cell(model, device, size, request,
                             [o for o in overrides if o.matches(model.label, device.name, size)], path)
                if cell is not None:
                    cells.append(cell)
    return CiConfig(path, sorted(cells, key=lambda c: c.id))


def _cell(model: ModelEntry, device: DeviceConfig, size: int, request: BuildRequest,
          overrides: list[Override], path: Path) -> Cell | None:
    for o in overrides:
        if o.skip:
            return None
        if o.precision is not None:
            request = dataclasses.replace(request, precision=o.precision)
        if o.verify is not None:
            request = dataclasses.replace(request, verify=o.verify)
        if o.options:
            options = _options(request.options, o.options, str(path), request.target)
            request = dataclasses.replace(request, options=options)
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
