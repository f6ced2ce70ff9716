"""What a build is asked to do, as plain data (no torch): the cache key is a hash of it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..core.errors import InputError
from ..vanillanet.archs import MODEL_NAMES, ModelSpec, has_adaptive_pooling, min_input_size
from ..vanillanet.features import parse_features
from .options import SYNTHETIC, TargetOptions
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
        if self.act_num is not None and not 0 <= self.act_num <= 8:
            raise InputError(f"--act-num must be between 0 and 8, got {self.act_num}")
        if self.act_learn is not None and not (0.0 <= self.act_learn <= 1.0):
            raise InputError(f"--act-learn must be in [0, 1], got {self.act_learn:g}")

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
    precision: str = "fp32"
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
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown precision '{self.precision}'; choose from {', '.join(PRECISIONS)}")
        if self.simplifier not in SIMPLIFIERS:
            raise InputError(f"unknown simplifier '{self.simplifier}'; choose from {', '.join(SIMPLIFIERS)}")
        if self.opset not in OPSETS:
            raise InputError(f"--opset must be between {OPSETS[0]} and {OPSETS[-1]} (the opsets the ONNX export "
                             f"writes), got {self.opset}")

    def check_calibration(self) -> None:
        """A build that quantizes a trained checkpoint needs real images: noise says nothing about the ranges its
        activations take on them."""
        if self.precision in QUANTIZED and self.source.checkpoint is not None and self.options.calibration is None:
            raise InputError(f"{self.precision} of a trained checkpoint needs real calibration images: pass "
                             "--calibration DIR (images in any layout), or --calibration synthetic to accept noise "
                             "on purpose")

    def tolerances(self) -> dict[str, Tolerance]:
        return tolerances(self.tolerance)

    def verify_shapes(self) -> list[InputShape]:
        """The request's shape and, with --dynamic, a second one: the far end of the profile when
        one is given (a dynamic engine only takes sizes inside it), else 32 pixels larger."""
        shape = self.shape
        if not self.dynamic:
            return [shape]
        profile = self.options.profile_sizes
        if profile:
            other = max(profile) if max(profile) != shape.height else min(profile)
            return [shape] if other == shape.height else [shape, shape.resized(other, other)]
        return [shape, shape.resized(shape.height + 32, shape.width + 32)]

    def _identity(self, checkpoint_sha256: str | None) -> dict[str, Any]:
        return {
            "vncompile": __version__,
            "source": self.source.identity(checkpoint_sha256),
            "shape": self.shape.as_tuple(),
            "dynamic": self.dynamic,
            "opset": self.opset,
            "simplifier": self.simplifier,
            "verify": self.verify,
            "tolerance": [[p, t.as_dict()] for p, t in self.tolerance],
        }

    def cache_key(self, checkpoint_sha256: str | None, toolchain: dict[str, str | None], onnx_key: str) -> str:
        """Everything a finished build depends on: the request, the toolchain, and the ONNX it compiled
        (``onnx_key``: also what the request leaves to the target, such as its default graph passes)."""
        return _digest({**self._identity(checkpoint_sha256), "target": self.target, "precision": self.precision,
                        "options": self.options.key_fields(), "toolchain": toolchain, "onnx": onnx_key,
                        "cross": self.cross})

    def onnx_key(self, form: str, checkpoint_sha256: str | None, toolchain: dict[str, str | None],
                 fit_judge: str | None = None, graph_passes: tuple[str, ...] = (), int8_weight_bits: int = 8) -> str:
        """What the target-independent stages depend on: no target, only the ONNX form it asked for (and,
        for --fit-memory, the target whose compiler judges the tiling, ``fit_judge``, if any; for int8, its
        weights' bits)."""
        int8, options = form == "int8-qdq", self.options
        preprocessing = options.preprocessing()
        calibration = SYNTHETIC if options.calibration == SYNTHETIC else options.calibration_sha256
        # The real images verification judges with (``prepare.real_images``): the evaluation set's, else an
        # int8 (int16) build's real calibration set, also for targets that quantize themselves from the fp32 graph.
        real = options.eval_sha256 or (calibration if self.precision in QUANTIZED and calibration != SYNTHETIC
                                       else None)
        keyed = {"io_dtype": options.io_dtype if form == "fp16" else None,
                 "int8": {"calibration": calibration, "size": options.calibration_size, "keep_fp32": options.keep_fp32,
                          "scheme": int8_scheme(int8_weight_bits), "preprocessing": preprocessing} if int8 else None,
                 "eval": {"images": options.eval_sha256, "preprocessing": preprocessing} if options.eval_data else None,
                 "verify_images": {"images": real, "preprocessing": preprocessing} if real and self.verify else None,
                 # The tiling is chosen at the build's element size and, with a judge, by its compiler's settings.
                 "fit_memory": {"budget_kb": options.fit_memory, "precision": self.precision, "judge": fit_judge,
                                "judge_options": options.key_fields() if fit_judge else None}
                 if options.fit_memory else None,
                 "graph_passes": list(graph_passes)}
        return _digest({**self._identity(checkpoint_sha256), "form": form, "options": keyed, "toolchain": toolchain})


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


def _digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def check_input_shape(spec: ModelSpec, shape: InputShape, dynamic: bool, memory_bytes: int | None,
                      feature_strides: tuple[int, ...] = ()) -> None:
    """Refuse sizes the network cannot take, or that would exhaust this machine."""
    smallest = min_input_size(spec)
    if feature_strides and not has_adaptive_pooling(spec):
        # A detector's neck adds each map to the 2x upsampled deeper one: every side must divide by the
        # deepest stride, or pooling drops border rows and the maps' sizes disagree (mmdetection pads to 32).
        multiple = math.lcm(*feature_strides)
        if shape.height % multiple or shape.width % multiple:
            padded = "x".join(str(-(-side // multiple) * multiple) for side in (shape.height, shape.width))
            strides = ", ".join(map(str, feature_strides))
            raise InputError(f"outputs at strides {strides} need input sides that are multiples of {multiple}, got "
                             f"{shape.height}x{shape.width}: pooling would drop border rows and the maps would not "
                             f"line up; pad to {padded} as mmdetection does (Pad size_divisor=32)")
    if min(shape.height, shape.width) < smallest:
        raise InputError(f"{spec.label} needs inputs of at least {smallest}x{smallest} "
                         f"(its pooling strides), got {shape.height}x{shape.width}")
    if shape.channels != 3:
        raise InputError(f"{spec.label} takes 3 input channels, got {shape.channels}")
    if dynamic and has_adaptive_pooling(spec):
        raise InputError(
            f"{spec.name} cannot export with dynamic H/W: its adaptive max pools (to 38/19/10) have windows that "
            "depend on the input size and ONNX has no adaptive pooling; export a static size (native: 224, any "
            "fixed size works)"
        )
    if memory_bytes:
        needed = activation_bytes_estimate(spec, shape)
        if needed > memory_bytes // 2:
            raise InputError(
                f"input {shape.label} is too large for this machine: {spec.label} would need about "
                f"{needed / 2**30:.1f} GiB for its largest feature maps, over half of the "
                f"{memory_bytes / 2**30:.0f} GiB here"
            )


def activation_bytes_estimate(spec: ModelSpec, shape: InputShape) -> int:
    """float64 reference input + output of the widest full-resolution layer, times a margin.

    A VanillaNet's largest map is its first stage's output at 1/4 resolution; a ResNet's
    the 4*base-width map at 1/4. Verification runs the float64 training form, so 8 bytes.
    """
    arch = spec.arch()
    channels = max(arch.dims[:2]) if spec.is_vanillanet else arch.base_width * 4  # type: ignore[union-attr]
    stride = arch.stem_stride if spec.is_vanillanet else 4  # type: ignore[union-attr]
    pixels = (shape.height // stride + 1) * (shape.width // stride + 1)
    return 3 * 8 * shape.batch * channels * pixels
