"""Target options, declared once: the dataclass is the schema of device configs' ``options``,
the source of the command line's flags and what a build's cache key hashes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.schema import (
    FloatTriple,
    Kind,
    MemorySize,
    NonNegativeNumber,
    Number,
    OneOf,
    PathKind,
    PositiveInt,
    Text,
    TextList,
    UnitFraction,
    convert,
    setting,
    settings_of,
)

SYNTHETIC = "synthetic"  # --calibration synthetic: seeded noise, accepted on purpose
DEFAULT_CALIBRATION_SIZE = 256
# The CPU runtimes' session settings, traded between latency and peak memory (each target's table says what
# a profile means for it); targets whose memory is fixed at compile time accept only the default.
RUNTIME_PROFILES = ("latency", "balanced", "memory")
DEFAULT_RUNTIME_PROFILE = "balanced"
# How images become inputs (data.preprocess): ImageNet evaluation's center crop, or Ultralytics' letterbox.
PREPROCESS_KINDS = ("center-crop", "letterbox")
CENTER_CROP_SETTINGS = ("mean", "std", "crop_pct")  # what the center crop takes and the letterbox does not


class CalibrationKind(Kind):
    """A directory of calibration images (or .npy arrays), or ``synthetic``."""

    expected = "a directory path, or 'synthetic'"

    def from_value(self, value: Any) -> Path | str:
        text = Text().from_value(value)
        return SYNTHETIC if text == SYNTHETIC else Path(text)


@dataclass(frozen=True)
class TargetOptions:
    """The options every target reads, typed and declared once, each with what it affects (``setting(affects=)``:
    the cache keys derive from it); ``own`` carries a target's own options by name (``Target.settings`` declares
    them; the build plan converts and checks them against the chosen target)."""

    device: str | None = setting(Text("a device name such as CPU, GPU or NPU"), None, flag="--device",
                                 help="target device, e.g. CPU, GPU, NPU, CUDA  [default: the target's first]")
    calibration: Path | str | None = setting(
        CalibrationKind(), None, flag="--calibration", affects="reference",
        help="int8/int16: images (any layout, searched recursively) or .npy inputs; 'synthetic' for seeded noise "
             "(the default for random weights; a trained checkpoint needs real images)")
    calibration_size: int = setting(PositiveInt(), DEFAULT_CALIBRATION_SIZE, flag="--calibration-size",
                                    affects="onnx",
                                    help="int8/int16: calibration images used, sampled reproducibly  [default: 256]")
    keep_fp32: tuple[str, ...] | None = setting(
        TextList("a list of layer (node) names, or 'auto'"), None, flag="--keep-fp32", affects="onnx",
        help="int8 of the targets that take vncompile's Q/DQ graph: leave these conv layers unquantized "
             "(comma-separated node names from layers.csv), or 'auto' (the stem and the classifier)")
    eval_data: Path | None = setting(
        PathKind("a directory path"), None, flag="--eval-data", affects="reference",
        help="labelled images: classifiers, ImageFolder or a folder with labels.txt/.csv (top-1/top-5 of every "
             "stage); detectors, a YOLO-layout folder (images/, labels/) or a COCO json (mAP50-95, mAP50)")
    max_top1_drop: float = setting(NonNegativeNumber("a number of points >= 0"), 1.0, flag="--max-top1-drop",
                                   help="with --eval-data: fail when the target's top-1 is this many points below "
                                        "the reference's  [default: 1]")
    max_map_drop: float = setting(NonNegativeNumber("a number of points >= 0"), 1.0, flag="--max-map-drop",
                                  help="with --eval-data on a detector: fail when the target's mAP50-95 is this many "
                                       "points below the reference's  [default: 1]")
    conf: float = setting(Number("a number in [0, 1)", low=0, high=1), 0.001, flag="--conf", affects="onnx",
                          help="detector mAP: the score a detection needs to count  [default: 0.001, Ultralytics "
                               "val's]")
    iou: float = setting(UnitFraction(), 0.7, flag="--iou", affects="onnx",
                         help="detector mAP: NMS drops a box overlapping a better one of its class by more than "
                              "this IoU  [default: 0.7]")
    max_det: int = setting(PositiveInt(), 300, flag="--max-det", affects="onnx",
                           help="detector mAP: detections kept per image  [default: 300]")
    preprocess: str | None = setting(
        OneOf(PREPROCESS_KINDS), None, flag="--preprocess", affects="reference",
        help="how images become inputs: center-crop (ImageNet evaluation: resize, crop, --mean/--std) or "
             "letterbox (Ultralytics val: fit keeping the aspect, pad 114, RGB, /255)  [default: letterbox for "
             "detectors, else center-crop]")
    mean: tuple[float, float, float] | None = setting(
        FloatTriple("three numbers, e.g. 0.485,0.456,0.406"), None, flag="--mean", affects="reference",
        help="preprocessing mean per RGB channel  [default: ImageNet's]")
    std: tuple[float, float, float] | None = setting(
        FloatTriple("three positive numbers, e.g. 0.229,0.224,0.225", positive=True), None, flag="--std",
        affects="reference", help="preprocessing std per RGB channel  [default: ImageNet's]")
    crop_pct: float | None = setting(UnitFraction(), None, flag="--crop-pct", affects="reference",
                                     help="center-crop fraction: resize to size/crop_pct, crop size  [default: 0.875]")
    io_dtype: str = setting(OneOf(("fp32", "fp16")), "fp32", flag="--io-dtype", affects="onnx",
                            help="fp16 builds: the dtype of the network's inputs and outputs")
    fit_memory: float | None = setting(
        MemorySize(), None, flag="--fit-memory", affects="onnx",
        help="tile the stem and first stages into strips so the planned peak memory fits, e.g. 64MB (1 KB = 1024 B)")
    runtime_profile: str = setting(
        OneOf(RUNTIME_PROFILES), DEFAULT_RUNTIME_PROFILE, flag="--runtime-profile",
        help="onnxruntime/openvino session settings, recorded in the manifest and applied on loading: latency "
             "(fastest), balanced (the memory savings that cost no latency), memory (lowest peak within ~1.3x the "
             "latency)  [default: balanced]")
    graph_passes: tuple[str, ...] | None = setting(
        TextList("a list of graph pass names, or 'none'"), None, flag="--graph-passes", affects="onnx",
        help="exact ONNX rewrites for int8 NPUs: relu-before-maxpool, stem-space-to-depth (comma-separated), or "
             "none  [default: the target's own choice]")
    detect_head: str | None = setting(
        OneOf(("device", "host")), None, flag="--detect-head", affects="onnx",
        help="an ONNX detector's head after its per-level box and class maps (reshapes, DFL, anchors, sigmoid, "
             "NMS): on the device, or on the host (ONNX Runtime, float32), the device emitting each map "
             "separately  [default: host for int8 and for rknn, whose toolkit mis-builds YOLO's DFL; else device]")
    # A target's own options as given (name, value), sorted by name: ``Target.settings`` declares them.
    own: tuple[tuple[str, Any], ...] = ()
    # Not settings: the content hashes of the calibration and evaluation sets, filled in from the paths.
    calibration_sha256: str | None = None
    eval_sha256: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "own", tuple(sorted((name, _frozen(v)) for name, v in dict(self.own).items()
                                                     if v is not None)))
        given = [flag_of(TargetOptions, name) for name in CENTER_CROP_SETTINGS if getattr(self, name) is not None]
        if self.preprocess == "letterbox" and given:
            raise InputError(f"{' and '.join(given)}: center-crop settings, but the preprocessing is letterbox "
                             "(Ultralytics val: pad 114, RGB, /255, no mean or std); drop them, or choose "
                             "--preprocess center-crop")
        if self.conf >= 1:  # a threshold no score passes: no detection, mAP 0 whatever the target
            raise InputError(f"--conf must be below 1, got {self.conf:g}")

    def with_default_preprocess(self, kind: str) -> TargetOptions:
        """These options with ``kind`` (the model family's default: letterbox for detectors) where --preprocess is
        not given: resolved once, so the keys, calibration, evaluation and the bundle's record see one value (an
        explicit --mean with a detector's default letterbox is refused here)."""
        return self if self.preprocess is not None else dataclasses.replace(self, preprocess=kind)

    def own_values(self) -> dict[str, Any]:
        return dict(self.own)

    def with_own(self, values: dict[str, Any]) -> TargetOptions:
        """These options with ``values`` over the own options they had (a None value removes one)."""
        return dataclasses.replace(self, own=tuple({**self.own_values(), **values}.items()))

    def key_value(self, name: str) -> Any:
        """What the cache keys hash of a setting: the image sets by their content hashes, not their paths."""
        if name == "calibration":
            return SYNTHETIC if self.calibration == SYNTHETIC else self.calibration_sha256
        if name == "eval_data":
            return self.eval_sha256
        return getattr(self, name)

    def preprocessing(self) -> dict[str, Any]:
        """The preprocessing the options ask for (``data.preprocess.preprocessing_from`` makes it): ``kind``
        letterbox, or the center crop's fields (defaults omitted; no --preprocess: the center crop)."""
        if self.preprocess == "letterbox":
            return {"kind": "letterbox"}
        return {name: getattr(self, name) for name in CENTER_CROP_SETTINGS if getattr(self, name) is not None}

    def to_json(self) -> dict[str, Any]:
        declared = settings_of(type(self))
        document: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None and f.name in declared:
                value = declared[f.name][1].kind.to_value(value)
            document[f.name] = plain_value(value)
        document["own"] = {name: plain_value(value) for name, value in self.own}
        return document

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TargetOptions:
        declared = settings_of(cls)
        values: dict[str, Any] = {}
        for name, value in data.items():
            if value is not None and name in declared:
                value = declared[name][1].kind.from_value(value)
            values[name] = value
        values["own"] = tuple(values.get("own", {}).items())
        return cls(**values)


def options_from_document(document: Any, where: str, own_options: type,
                          base: TargetOptions | None = None) -> TargetOptions:
    """A device config's (or a CI override's) ``options`` mapping on top of ``base``: the common settings and those
    of ``own_options`` (the config's target's own); any other key is one line naming the file and the key."""
    if not isinstance(document, dict):
        raise InputError(f"{where}: expected a mapping of options, got {type(document).__name__}")
    common, own = settings_of(TargetOptions), settings_of(own_options)
    for key in document:
        if key not in common and key not in own:
            raise InputError(f"{where}: unknown key '{key}' (known: {', '.join([*common, *own])})")
    values = {key: convert(key, common[key][1], value, where) for key, value in document.items() if key in common}
    own_values = {key: convert(key, own[key][1], value, where) for key, value in document.items() if key in own}
    return dataclasses.replace(base or TargetOptions(), **values).with_own(own_values)


def scoped_settings(settings_class: type, scope: str) -> tuple[str, ...]:
    """The names of ``settings_class``'s settings that affect ``scope`` or more: "reference" (the float64
    reference's inputs) lies within "onnx" (the target-independent graph), which lies within "build"."""
    within = {"reference": ("reference",), "onnx": ("reference", "onnx"), "build": ("reference", "onnx", "build")}
    return tuple(name for name, (_f, spec) in settings_of(settings_class).items() if spec.affects in within[scope])


def flag_of(settings_class: type, name: str) -> str:
    flag = settings_of(settings_class)[name][1].flag
    return flag or name


def _frozen(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def plain_value(value: Any) -> Any:
    """A value as a document holds it (JSON, YAML): paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
