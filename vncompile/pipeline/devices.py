"""Device configs (``configs/devices/*.yaml``): a target, its options, sizes and the CI runner.

Validated against a schema kept here as data: an unknown key, a wrong type or a
missing field is a one-line error naming the file and the field. Relative paths
inside a config (calibration sets, timing caches) are relative to the working
directory, where CI jobs run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import InputError
from .request import PRECISIONS, BuildRequest, InputShape, ModelSource, TargetOptions

Check = Callable[[Any], bool]


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _is_positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _is_sizes(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(_is_positive_int(s) for s in v)


def _is_runner(v: Any) -> bool:
    return _is_str(v) or (isinstance(v, list) and bool(v) and all(_is_str(s) for s in v))


@dataclass(frozen=True)
class FieldSpec:
    check: Check
    expected: str  # what the error message says the value must be
    required: bool = False


OPTION_SCHEMA: dict[str, FieldSpec] = {
    "device": FieldSpec(_is_str, "a device name such as CPU, GPU or NPU"),
    "platform": FieldSpec(_is_str, "a platform name such as rk3588"),
    "quant_algorithm": FieldSpec(_is_str, "a quantization algorithm name"),
    "calibration": FieldSpec(_is_str, "a directory path"),
    "workspace_mb": FieldSpec(_is_positive_int, "a positive integer (MiB)"),
    "profile_sizes": FieldSpec(_is_sizes, "a list of positive integers"),
    "io_dtype": FieldSpec(lambda v: v in ("fp32", "fp16"), "fp32 or fp16"),
    "timing_cache": FieldSpec(_is_str, "a file path"),
}

DEVICE_SCHEMA: dict[str, FieldSpec] = {
    "description": FieldSpec(_is_str, "a string"),
    "target": FieldSpec(_is_str, "a target name", required=True),
    "precision": FieldSpec(lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}", required=True),
    "sizes": FieldSpec(_is_sizes, "a non-empty list of positive integers", required=True),
    "dynamic": FieldSpec(lambda v: isinstance(v, bool), "true or false"),
    "batch": FieldSpec(_is_positive_int, "a positive integer"),
    "memory_limit": FieldSpec(_is_str, "a size such as 1.2GB"),
    "runner": FieldSpec(_is_runner, "a CI runner label or a list of labels", required=True),
    "options": FieldSpec(lambda v: isinstance(v, dict), "a mapping of target options"),
}


def validate(document: Any, schema: Mapping[str, FieldSpec], where: str) -> dict[str, Any]:
    """The document if it fits ``schema``; else a one-line error naming ``where`` and the field."""
    if not isinstance(document, dict):
        raise InputError(f"{where}: expected a mapping of fields, got {type(document).__name__}")
    for key in document:
        if key not in schema:
            raise InputError(f"{where}: unknown key '{key}' (known: {', '.join(schema)})")
    for key, spec in schema.items():
        if key not in document:
            if spec.required:
                raise InputError(f"{where}: missing field '{key}'")
            continue
        if not spec.check(document[key]):
            raise InputError(f"{where}: '{key}' must be {spec.expected}, got {document[key]!r}")
    return document


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}: not valid YAML{where}") from None


@dataclass(frozen=True)
class DeviceConfig:
    name: str
    path: Path
    target: str
    precision: str
    sizes: tuple[int, ...]
    runner: str | tuple[str, ...]
    options: TargetOptions
    dynamic: bool = False
    batch: int = 1
    memory_limit: str | None = None
    description: str = ""

    def build_request(self, source: ModelSource, size: int | None = None, verify: bool = True,
                      sizes: tuple[int, ...] | None = None) -> BuildRequest:
        """The build of this device at ``size``; a dynamic device builds one artifact over all of ``sizes``
        (default: its own), optimized for ``size``."""
        sizes = tuple(sizes or self.sizes)
        size = size if size is not None else sizes[0]
        options = self.options
        if self.dynamic and options.profile_sizes is None:
            options = dataclasses.replace(options, profile_sizes=(min(sizes), size, max(sizes)))
        return BuildRequest(source, self.target, self.precision, InputShape.square(size, self.batch),
                            dynamic=self.dynamic, verify=verify, options=options)


def load_device_config(path: Path) -> DeviceConfig:
    from ..targets import target_names

    path = Path(path)
    document = validate(read_yaml(path), DEVICE_SCHEMA, str(path))
    options = validate(document.get("options", {}), OPTION_SCHEMA, f"{path}: options")
    if document["target"] not in target_names():
        raise InputError(f"{path}: 'target' must be one of {', '.join(target_names())}, got '{document['target']}'")
    for key in ("calibration", "timing_cache"):
        if key in options:
            options[key] = Path(options[key])
    if "profile_sizes" in options:
        options["profile_sizes"] = tuple(options["profile_sizes"])
    if document.get("memory_limit"):
        from .profiling import parse_memory_size

        try:
            parse_memory_size(document["memory_limit"])
        except InputError as exc:
            raise InputError(f"{path}: 'memory_limit': {exc}") from None
    from .calibration import with_calibration_hash

    runner = document["runner"]
    return DeviceConfig(
        name=path.stem, path=path, target=document["target"], precision=document["precision"],
        sizes=tuple(document["sizes"]), runner=tuple(runner) if isinstance(runner, list) else runner,
        options=with_calibration_hash(TargetOptions(**options)), dynamic=document.get("dynamic", False),
        batch=document.get("batch", 1),
        memory_limit=document.get("memory_limit"), description=document.get("description", ""),
    )


def is_device_config(value: str | None) -> bool:
    """``--device`` takes a device name (CPU, GPU) or a device config file."""
    return value is not None and (value.endswith((".yaml", ".yml")) or Path(value).is_file())
