"""What a build is asked to do, as plain data (no torch): the cache key is a hash of it."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..vanillanet.archs import MODEL_NAMES, ModelSpec
from ..vanillanet.features import parse_features
from .options import TargetOptions
from .tolerance import PRECISIONS, QUANTIZED, Tolerance, tolerances

SIMPLIFIERS: tuple[str, ...] = ("onnxslim", "onnxsim", "none")
# The opsets the export writes: torch.onnx's exporter emits 18 and later, and ONNX's version converter cannot take a
# VanillaNet below that (no adapter for ReduceMean's noop_with_empty_axes at 14-17, nor for Relu at 13 and below).
# 24 and 25 export too, but no target here was verified on them.
OPSETS = range(18, 24)
DEFAULT_OPSET = 18
RANDOM_SEED = 0  # untrained builds use seeded random weights, so they are reproducible


def int8_scheme(weight_bits: int) -> str:
    """What ``onnxtools.quantize`` makes of an fp32 graph (``Target.int8_weight_bits``): part of the int8 ONNX's
    cache key, and recorded in its manifest."""
    return (f"qdq int8 symmetric, per-channel {weight_bits}-bit weights, float bias, minmax calibration, excluded "
            "nodes float")


@dataclass(frozen=True)
class ModelSource:
    """Where the network comes from: a checkpoint, or a model name with random weights."""

    checkpoint: Path | None = None
    model_name: str | None = None
    width: float = 1.0
    act_num: int | None = None  # --model networks: the series activation's n (kernel 2n+1); None: the variant's
    weights: str = "auto"  # auto | model | model_ema
    act_learn: float | None = None  # override: export the unfused network with this slope
    features: str | None = None  # a headless backbone's outputs (``vanillanet.features``); None: the model's own
    prefix: str | None = None  # where a detector's state_dict keeps the backbone (None: detected)

    def __post_init__(self) -> None:
        if self.features is not None:
            object.__setattr__(self, "features", parse_features(self.features))
        if self.prefix is not None and self.checkpoint is None:
            raise InputError("--prefix applies to a detector's checkpoint")
        if self.checkpoint is None and self.model_name is None:
            raise InputError("give a checkpoint or --model NAME")
        if self.model_name is not None and self.model_name not in MODEL_NAMES:
            raise InputError(f"unknown model '{self.model_name}'; choose from {', '.join(MODEL_NAMES)}")
        if self.checkpoint is not None:
            if not Path(self.checkpoint).is_file():
                # a model's name typed where the checkpoint goes: say how to build it
                hint = f" (a network with random weights: --model {self.checkpoint})" \
                    if str(self.checkpoint) in MODEL_NAMES else ""
                raise InputError(f"{self.checkpoint}: no such checkpoint file{hint}")
            if self.width != 1.0 or self.act_num is not None:
                raise InputError("--width and --act-num apply to --model networks; a checkpoint's come from its "
                                 "tensors")
            if self.is_onnx:
                self._check_onnx_source()
        if self.act_num is not None and not 0 <= self.act_num <= 8:
            raise InputError(f"--act-num must be between 0 and 8, got {self.act_num}")
        if self.act_learn is not None and not (0.0 <= self.act_learn <= 1.0):
            raise InputError(f"--act-learn must be in [0, 1], got {self.act_learn:g}")

    @property
    def is_onnx(self) -> bool:
        """An ONNX file from any exporter (``.onnx``): the graph is the model, and its reference."""
        return self.checkpoint is not None and Path(self.checkpoint).suffix.lower() == ".onnx"

    def _check_onnx_source(self) -> None:
        given = [flag for flag, value, default in (
            ("--model", self.model_name, None), ("--weights", self.weights, "auto"),
            ("--act-learn", self.act_learn, None), ("--features", self.features, None), ("--prefix", self.prefix, None))
            if value != default]
        if given:
            raise InputError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} not apply to an ONNX file: "
                             "its graph is built as exported (re-export it to change its outputs or weights)")

    def identity(self, checkpoint_sha256: str | None) -> dict[str, Any]:
        """What determines the weights: the checkpoint's bytes, or the name and seed."""
        if self.checkpoint is not None:
            return {"checkpoint_sha256": checkpoint_sha256, "model": self.model_name, "weights": self.weights,
                    "act_learn": self.act_learn, "features": self.features, "prefix": self.prefix}
        return {"model": self.model_name, "width": self.width, "act_num": self.act_num, "seed": RANDOM_SEED,
                "act_learn": self.act_learn,
                "features": self.features}

    def spec_without_checkpoint(self) -> ModelSpec:
        assert self.model_name is not None
        if self.act_num is None:
            return ModelSpec(self.model_name, width=self.width)
        return ModelSpec(self.model_name, width=self.width, act_num=self.act_num)


@dataclass(frozen=True)
class InputShape:
    batch: int
    channels: int
    height: int
    width: int

    @classmethod
    def parse(cls, text: str) -> InputShape:
        """``NxCxHxW``, e.g. ``1x3x224x224``."""
        match = re.fullmatch(r"\s*(\d+)x(\d+)x(\d+)x(\d+)\s*", text)
        if not match:
            raise InputError(f"--input-shape must look like 1x3x224x224, got '{text}'")
        shape = cls(*(int(g) for g in match.groups()))
        if min(shape.as_tuple()) < 1:
            raise InputError(f"--input-shape needs positive dimensions, got '{text}'")
        return shape

    @classmethod
    def square(cls, size: int, batch: int = 1, channels: int = 3) -> InputShape:
        if size < 1:
            raise InputError(f"--size must be a positive integer, got {size}")
        if batch < 1:
            raise InputError(f"--batch must be a positive integer, got {batch}")
        return cls(batch, channels, size, size)

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)

    @property
    def label(self) -> str:
        return "x".join(map(str, self.as_tuple()))

    @property
    def size_label(self) -> str:
        return str(self.height) if self.height == self.width else f"{self.height}x{self.width}"

    def resized(self, height: int, width: int) -> InputShape:
        return dataclasses.replace(self, height=height, width=width)


@dataclass(frozen=True)
class BuildRequest:
    source: ModelSource
    target: str
    precision: str | None = None  # None: the target's default (the build plan fills it in)
    shape: InputShape = InputShape(1, 3, 224, 224)
    dynamic: bool = False
    opset: int = DEFAULT_OPSET
    simplifier: str = "onnxslim"
    verify: bool = True
    options: TargetOptions = TargetOptions()
    tolerance: tuple[tuple[str, Tolerance], ...] = ()  # the user's overrides of the default tolerances
    # Built for a device that need not be this host (a ci cell, built on whatever runner picks it up): a device or a
    # precision this host lacks is built all the same and verified as far as it can be here; the manifest says how.
    cross: bool = False

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise InputError(f"unknown precision '{self.precision}'; choose from {', '.join(PRECISIONS)}")
        if self.simplifier not in SIMPLIFIERS:
            raise InputError(f"unknown simplifier '{self.simplifier}'; choose from {', '.join(SIMPLIFIERS)}")
        if self.opset not in OPSETS and not self.source.is_onnx:  # an ONNX file's opset is its own
            raise InputError(f"--opset must be between {OPSETS[0]} and {OPSETS[-1]} (the opsets the ONNX export "
                             f"writes), got {self.opset}")

    def opset_remedy(self, opset: int) -> str:
        """How to get a graph at ``opset`` or lower: export it so, or, for an ONNX file, re-export it."""
        if self.source.is_onnx:
            name = Path(self.source.checkpoint).name  # type: ignore[arg-type]
            return f"re-export {name} with opset {opset} or lower (Ultralytics: opset={opset})"
        return f"pass --opset {opset} or lower"

    def check_calibration(self) -> None:
        """A build that quantizes a trained checkpoint needs real images: noise says nothing about the ranges its
        activations take on them."""
        if self.precision in QUANTIZED and self.source.checkpoint is not None and self.options.calibration is None:
            raise InputError(f"{self.precision} of a trained checkpoint needs real calibration images: pass "
                             "--calibration DIR (images in any layout), or --calibration synthetic to accept noise "
                             "on purpose")

    def tolerances(self) -> dict[str, Tolerance]:
        return tolerances(self.tolerance)

    def verify_shapes(self, profile: tuple[int, ...] | None = None) -> list[InputShape]:
        """The request's shape and, with --dynamic, a second one: the far end of ``profile`` (the sizes a
        target's options fix a dynamic artifact to, ``Target.dynamic_sizes``) when there is one (a dynamic
        engine only takes sizes inside it), else 32 pixels larger."""
        shape = self.shape
        if not self.dynamic:
            return [shape]
        if profile:
            other = max(profile) if max(profile) != shape.height else min(profile)
            return [shape] if other == shape.height else [shape, shape.resized(other, other)]
        return [shape, shape.resized(shape.height + 32, shape.width + 32)]

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form, for handing the request to a worker process."""
        data = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        data["options"] = self.options.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildRequest:
        source = dict(data["source"])
        if source["checkpoint"] is not None:
            source["checkpoint"] = Path(source["checkpoint"])
        fields = {k: v for k, v in data.items() if k not in ("source", "shape", "options", "tolerance")}
        return cls(source=ModelSource(**source), shape=InputShape(*data["shape"].values()),
                   options=TargetOptions.from_json(data["options"]),
                   tolerance=tuple((p, Tolerance(**t)) for p, t in data["tolerance"]), **fields)
