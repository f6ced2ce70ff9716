"""Target options, declared once: the dataclass is the schema of device configs' ``options``,
the source of the command line's flags and what a build's cache key hashes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.schema import IntList, OneOf, PathKind, PositiveInt, Text, setting, settings_of


@dataclass(frozen=True)
class TargetOptions:
    """Target-specific settings, typed, in one place."""

    device: str | None = setting(Text("a device name such as CPU, GPU or NPU"), None, flag="--device",
                                 help="target device, e.g. CPU, GPU, NPU, CUDA  [default: the target's first]")
    calibration: Path | None = setting(
        PathKind("a directory path"), None, flag="--calibration",
        help="int8: directory of images or .npy inputs (default: a seeded synthetic set)")
    io_dtype: str = setting(OneOf(("fp32", "fp16")), "fp32", flag="--io-dtype",
                            help="fp16 builds: the dtype of the network's inputs and outputs")
    platform: str | None = setting(
        Text("a platform name such as rk3588"), None, flag="--platform",
        help="rknn: Rockchip SoC (rk3588, rk3576, rk3568, rk3566, rk3562, rv1106, ...)")
    quant_algorithm: str | None = setting(Text("a quantization algorithm name"), None, flag="--quant-algorithm",
                                          help="rknn int8: normal | mmse | kl_divergence")
    board: str | None = setting(Text("a board's device id"), None, flag="--rknn-target",
                                help="rknn: a connected board's device id, to measure on it")
    workspace_mb: int | None = setting(PositiveInt("a positive integer (MiB)"), None, flag="--workspace",
                                       help="tensorrt: workspace pool limit in MiB")
    profile_sizes: tuple[int, ...] | None = setting(
        IntList("a list of positive integers"), None, flag="--profile-sizes",
        help="tensorrt --dynamic: min,opt,max square sizes, e.g. 256,384,512")
    timing_cache: Path | None = setting(PathKind("a file path"), None, flag="--timing-cache", compare=False,
                                        help="tensorrt: persistent timing cache file, reused across builds")
    # Not a setting: the calibration set's content hash, filled in from ``calibration``.
    calibration_sha256: str | None = None

    def key_fields(self) -> dict[str, Any]:
        """What the cache key hashes: every compared field, the calibration set by its content hash."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        fields.pop("calibration")
        return fields

    def to_json(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetOptions:
        declared = settings_of(cls)
        values = {}
        for name, value in data.items():
            if value is not None and name in declared:
                value = declared[name][1].kind.from_value(value)
            values[name] = value
        return cls(**values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
