"""Target options, declared once: the dataclass is the schema of device configs' ``options``,
the source of the command line's flags and what a build's cache key hashes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.schema import (
    FloatTriple,
    IntList,
    Kind,
    MemorySize,
    NonNegativeNumber,
    OneOf,
    PathKind,
    PositiveInt,
    Text,
    TextList,
    UnitFraction,
    setting,
    settings_of,
)

SYNTHETIC = "synthetic"  # --calibration synthetic: seeded noise, accepted on purpose
DEFAULT_CALIBRATION_SIZE = 256
# The CPU runtimes' session settings, traded between latency and peak memory (each target's table says what
# a profile means for it); targets whose memory is fixed at compile time accept only the default.
RUNTIME_PROFILES = ("latency", "balanced", "memory")
DEFAULT_RUNTIME_PROFILE = "balanced"
# The options only some targets read (each ``Target.own_options`` names its own): a build for another target
# refuses them rather than ignoring them, and a profile passes each target only its own.
TARGET_OPTIONS = frozenset({
    "keep_fp32",  # the ONNX that vncompile quantizes (onnxruntime, openvino, tensorrt); the NPUs quantize themselves
    "platform", "quant_algorithm", "board",  # rknn
    "soc",  # qnn
    "accelerator", "system_config", "memory_mode", "allow_cpu_ops",  # ethos-u
    "workspace_mb", "profile_sizes", "timing_cache",  # tensorrt
})


class CalibrationKind(Kind):
    """A directory of calibration images (or .npy arrays), or ``synthetic``."""

    expected = "a directory path, or 'synthetic'"

    def from_value(self, value: Any) -> Path | str:
        text = Text().from_value(value)
        return SYNTHETIC if text == SYNTHETIC else Path(text)


@dataclass(frozen=True)
class TargetOptions:
    """Target-specific settings, typed, in one place."""

    device: str | None = setting(Text("a device name such as CPU, GPU or NPU"), None, flag="--device",
                                 help="target device, e.g. CPU, GPU, NPU, CUDA  [default: the target's first]")
    calibration: Path | str | None = setting(
        CalibrationKind(), None, flag="--calibration",
        help="int8/int16: images (any layout, searched recursively) or .npy inputs; 'synthetic' for seeded noise "
             "(the default for random weights; a trained checkpoint needs real images)")
    calibration_size: int = setting(PositiveInt(), DEFAULT_CALIBRATION_SIZE, flag="--calibration-size",
                                    help="int8/int16: calibration images used, sampled reproducibly  [default: 256]")
    keep_fp32: tuple[str, ...] | None = setting(
        TextList("a list of layer (node) names, or 'auto'"), None, flag="--keep-fp32",
        help="int8: leave these conv layers unquantized (comma-separated node names from layers.csv), or 'auto' "
             "(the stem and the classifier)")
    eval_data: Path | None = setting(
        PathKind("a directory path"), None, flag="--eval-data",
        help="labelled images (ImageFolder, or a folder with labels.txt/.csv): top-1/top-5 of every stage")
    max_top1_drop: float = setting(NonNegativeNumber("a number of points >= 0"), 1.0, flag="--max-top1-drop",
                                   help="with --eval-data: fail when the target's top-1 is this many points below "
                                        "the reference's  [default: 1]")
    mean: tuple[float, float, float] | None = setting(
        FloatTriple("three numbers, e.g. 0.485,0.456,0.406"), None, flag="--mean",
        help="preprocessing mean per RGB channel  [default: ImageNet's]")
    std: tuple[float, float, float] | None = setting(
        FloatTriple("three positive numbers, e.g. 0.229,0.224,0.225", positive=True), None, flag="--std",
        help="preprocessing std per RGB channel  [default: ImageNet's]")
    crop_pct: float | None = setting(UnitFraction(), None, flag="--crop-pct",
                                     help="center-crop fraction: resize to size/crop_pct, crop size  [default: 0.875]")
    io_dtype: str = setting(OneOf(("fp32", "fp16")), "fp32", flag="--io-dtype",
                            help="fp16 builds: the dtype of the network's inputs and outputs")
    platform: str | None = setting(
        Text("a platform name such as rk3588"), None, flag="--platform",
        help="rknn: Rockchip SoC (rk3588, rk3576, rk3568, rk3566, rk3562, rv1106, ...)")
    soc: str | None = setting(Text("a Snapdragon SoC name such as SM8650"), None, flag="--soc",
                              help="qnn: Snapdragon SoC (SM8450, SM8550, SM8650, SM8750)  [default: SM8650]")
    accelerator: str | None = setting(
        Text("an Ethos-U configuration such as ethos-u65-256"), None, flag="--accelerator",
        help="ethos-u: ethos-u55-32..256, ethos-u65-256|512, ethos-u85-128..2048  [default: ethos-u65-256]")
    system_config: str | None = setting(
        Text("a vela system configuration name"), None, flag="--system-config",
        help="ethos-u: vela system configuration (Arm/vela.ini), e.g. Ethos_U65_High_End  [default: the "
             "accelerator's own]")
    memory_mode: str | None = setting(
        Text("a vela memory mode name"), None, flag="--memory-mode",
        help="ethos-u: vela memory mode, e.g. Dedicated_Sram_512KB, Shared_Sram  [default: the accelerator's own]")
    allow_cpu_ops: tuple[str, ...] | None = setting(
        TextList("a list of TFLite operator names, or 'all'"), None, flag="--allow-cpu-ops",
        help="ethos-u: operators allowed to fall back to the Cortex-M CPU (e.g. SOFTMAX), or all  [default: "
             "none: a CPU fallback fails the build]")
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
    fit_memory: float | None = setting(
        MemorySize(), None, flag="--fit-memory",
        help="tile the stem and first stages into strips so the planned peak memory fits, e.g. 64MB (1 KB = 1024 B)")
    runtime_profile: str = setting(
        OneOf(RUNTIME_PROFILES), DEFAULT_RUNTIME_PROFILE, flag="--runtime-profile",
        help="onnxruntime/openvino session settings, recorded in the manifest and applied on loading: latency "
             "(fastest), balanced (the memory savings that cost no latency), memory (lowest peak within ~1.3x the "
             "latency)  [default: balanced]")
    graph_passes: tuple[str, ...] | None = setting(
        TextList("a list of graph pass names, or 'none'"), None, flag="--graph-passes",
        help="exact ONNX rewrites for int8 NPUs: relu-before-maxpool, stem-space-to-depth (comma-separated), or "
             "none  [default: the target's own choice]")
    # Not settings: the content hashes of the calibration and evaluation sets, filled in from the paths.
    calibration_sha256: str | None = None
    eval_sha256: str | None = None

    def key_fields(self) -> dict[str, Any]:
        """What the cache key hashes: every compared field, the image sets by their content hashes."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare}
        if fields.pop("calibration") == SYNTHETIC:
            fields["calibration_sha256"] = SYNTHETIC
        fields.pop("eval_data")
        return fields

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing the options ask for, as ``data.preprocess.Preprocessing`` fields (defaults omitted)."""
        return {k: v for k, v in (("mean", self.mean), ("std", self.std), ("crop_pct", self.crop_pct)) if v is not None}

    def to_json(self) -> dict[str, Any]:
        declared = settings_of(type(self))
        document = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name in declared:
                value = declared[f.name][1].kind.to_value(value)
            document[f.name] = _jsonable(value)
        return document

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetOptions:
        declared = settings_of(cls)
        values = {}
        for name, value in data.items():
            if value is not None and name in declared:
                value = declared[name][1].kind.from_value(value)
            values[name] = value
        return cls(**values)


def foreign_options(options: TargetOptions, own: tuple[str, ...]) -> list[str]:
    """The flags of the target-specific options that are set and not among ``own`` (a target's own options)."""
    return [flag_of(name) for name in sorted(TARGET_OPTIONS - set(own)) if getattr(options, name) is not None]


def only_own_options(options: TargetOptions, own: tuple[str, ...]) -> TargetOptions:
    """``options`` without the target-specific options that are not among ``own``."""
    return dataclasses.replace(options, **{name: None for name in TARGET_OPTIONS - set(own)})


def flag_of(name: str) -> str:
    flag = settings_of(TargetOptions)[name][1].flag
    return flag or name


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
