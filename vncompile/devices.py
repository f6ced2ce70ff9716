"""Device configs (``configs/devices/*.yaml``): a target, its options, sizes and the CI runner.

``DeviceConfig`` is declared once (``core.schema`` settings): an unknown key, a wrong type or
a missing field is a one-line error naming the file and the field. ``build_request`` is the
one way a device becomes a build: ``vncompile build --device``, ``profile --device`` and every
``ci`` cell go through it, with what the command line typed on top. Relative paths inside a
config (calibration sets, timing caches) are relative to the working directory, where CI jobs run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .api.options import TargetOptions, options_from_document
from .api.request import BuildRequest, InputShape, ModelSource
from .api.tolerance import PRECISIONS, Tolerance, ToleranceKind
from .core.errors import InputError
from .core.io import read_user_text
from .core.schema import (
    Flag,
    IntList,
    Mapping_,
    MemorySize,
    OneOf,
    PositiveInt,
    Text,
    TextList,
    from_document,
    setting,
    settings_of,
)
from .targets import get_target
from .vanillanet.features import parse_features


class Features(Text):
    """A backbone's outputs as ``--features`` takes them: '0,1,8,10', 'all', or a list of indices."""

    def __init__(self) -> None:
        super().__init__("'all', 'stem' and/or stage indices, e.g. 0,1,8,10 or [0, 1, 8, 10]")

    def from_value(self, value: Any) -> str:
        if isinstance(value, list) and all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
            value = ",".join(map(str, value))
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError
        try:
            return parse_features(value)
        except InputError:
            raise ValueError from None


@dataclass(frozen=True)
class DeviceConfig:
    target: str = setting(Text("a target name"))
    precision: str = setting(OneOf(PRECISIONS))
    sizes: tuple[int, ...] = setting(IntList())
    runner: str | tuple[str, ...] = setting(TextList("a CI runner label or a list of labels", single=True))
    description: str = setting(Text("a string"), "")
    dynamic: bool = setting(Flag(), False)
    batch: int = setting(PositiveInt(), 1)
    memory_limit: float | None = setting(MemorySize(), None)  # KB
    tolerance: tuple[tuple[str, Tolerance], ...] = setting(ToleranceKind(), ())
    features: str | None = setting(Features(), None)  # the device runs a headless backbone (build --features)
    # The common options and the target's own (``api.options.options_from_document``, once the target is known).
    options: TargetOptions = setting(Mapping_(), TargetOptions())
    name: str = ""  # the file's stem
    path: Path | None = None

    def build_request(self, source: ModelSource, size: int | None = None, *, sizes: tuple[int, ...] | None = None,
                      shape: InputShape | None = None, **fields: Any) -> BuildRequest:
        """The build of this device at ``size`` (or ``shape``); a dynamic device builds one artifact over all
        of ``sizes`` (default: its own), optimized for ``size``. ``fields`` override the config's (the
        command line's typed options, a CI override)."""
        sizes = tuple(sizes or self.sizes)
        if self.features is not None and source.features is None:  # a model's own --features win
            source = dataclasses.replace(source, features=self.features)
        shape = shape or InputShape.square(sizes[0] if size is None else size, self.batch)
        fields.setdefault("target", self.target)
        if fields.get("precision") is None:
            fields["precision"] = self.precision
        fields.setdefault("tolerance", self.tolerance)
        dynamic = fields.pop("dynamic", self.dynamic)
        options = fields.pop("options", self.options)
        declared = settings_of(get_target(fields["target"]).own_options)
        if dynamic and "profile_sizes" in declared and options.own_values().get("profile_sizes") is None:
            # an optimization profile (tensorrt's) covers the config's sizes and this one
            options = options.with_own({"profile_sizes": (min(*sizes, shape.height), shape.height,
                                                          max(*sizes, shape.height))})
        return BuildRequest(source, shape=shape, dynamic=dynamic, options=options, **fields)


# A config's size once its aliases are expanded, and its nesting, bounded before anything is built from it: a few
# lines of aliases can stand for billions of values, and the parser recurses once per level.
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 32


def read_yaml(path: Path) -> Any:
    text = read_user_text(path)
    try:
        _check_yaml_size(text, path)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}: not valid YAML{where}") from None


def _check_yaml_size(text: str, path: Path) -> None:
    """Walk the parser's events (no values built, no recursion): refuse nesting deeper than ``MAX_YAML_DEPTH`` and
    more than ``MAX_YAML_VALUES`` values with every alias expanded (each counts the values of its anchor)."""
    open_: list[list[Any]] = []  # per open collection: [values inside it so far, its anchor]
    anchored: dict[str, int] = {}  # values an anchor stands for
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            open_.append([1, event.anchor])
            if len(open_) > MAX_YAML_DEPTH:
                raise InputError(f"{path}:{event.start_mark.line + 1}: nested deeper than {MAX_YAML_DEPTH} levels")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            count, anchor = open_.pop()
        elif isinstance(event, yaml.AliasEvent):
            count, anchor = anchored.get(event.anchor, 1), None
        elif isinstance(event, yaml.ScalarEvent):
            count, anchor = 1, event.anchor
        else:
            continue
        if anchor is not None:
            anchored[anchor] = count
        if open_:
            open_[-1][0] += count
        if sum(c for c, _ in open_) + (0 if open_ else count) > MAX_YAML_VALUES:  # every value so far
            raise InputError(f"{path}:{event.start_mark.line + 1}: more than {MAX_YAML_VALUES:,} values with its "
                             "aliases expanded (an alias bomb?)")


def load_device_config(path: Path) -> DeviceConfig:
    from .data.calibration import with_data_hashes
    from .targets import target_names

    path = Path(path)
    config = from_document(DeviceConfig, read_yaml(path), str(path), name=path.stem, path=path)
    if config.target not in target_names():
        raise InputError(f"{path}: 'target' must be one of {', '.join(target_names())}, got '{config.target}'")
    raw = config.options if isinstance(config.options, dict) else {}
    options = options_from_document(raw, f"{path}: options", get_target(config.target).own_options)
    return dataclasses.replace(config, options=with_data_hashes(options))


def is_device_config(value: str | None) -> bool:
    """``--device`` takes a device name (CPU, GPU) or a device config file."""
    return value is not None and (value.endswith((".yaml", ".yml")) or Path(value).is_file())
