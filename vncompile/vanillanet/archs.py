"""The architectures as data: the variant tables and what a network is, apart from weights.

Pure Python (no torch), so the CLI can validate a request and find a cached build
without paying for importing torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..core.errors import InputError


@dataclass(frozen=True)
class VanillaNetArch:
    """Everything that fixes a VanillaNet's function apart from its weights."""

    dims: tuple[int, ...]  # stem width, then each stage's output width
    strides: tuple[int, ...]  # one per stage; 1 means no pooling
    ada_pool: tuple[int, ...] | None = None  # per stage: adaptive max-pool output size (0: none)
    stem_stride: int = 4
    stem_padding: int = 0
    act_num: int = 3  # series activation kernel is (2*act_num + 1)^2
    num_classes: int = 1000  # 0: headless backbone
    in_chans: int = 3

    @property
    def depth(self) -> int:
        return len(self.strides)

    def scaled(self, width: float) -> VanillaNetArch:
        """The same network with every width multiplied by ``width`` (narrow test models)."""
        if width == 1.0:
            return self
        dims = tuple(max(1, round(d * width)) for d in self.dims)
        return dataclasses.replace(self, dims=dims)


# The variant table: (dims, strides) exactly as in the paper's Table 4 / official repo.
_W4 = 128 * 4  # base width of VanillaNet-5 ... -13
_W6 = 128 * 6  # base width of the 1.5x variants


def _arch(base: int, mults: Sequence[int], strides: Sequence[int], **kwargs) -> VanillaNetArch:
    return VanillaNetArch(dims=tuple(base * m for m in mults), strides=tuple(strides), **kwargs)


VARIANTS: dict[str, VanillaNetArch] = {
    "vanillanet_5": _arch(_W4, (1, 2, 4, 8), (2, 2, 2)),
    "vanillanet_6": _arch(_W4, (1, 2, 4, 8, 8), (2, 2, 2, 1)),
    "vanillanet_7": _arch(_W4, (1, 1, 2, 4, 8, 8), (1, 2, 2, 2, 1)),
    "vanillanet_8": _arch(_W4, (1, 1, 2, 4, 4, 8, 8), (1, 2, 2, 1, 2, 1)),
    "vanillanet_9": _arch(_W4, (1, 1, 2, 4, 4, 4, 8, 8), (1, 2, 2, 1, 1, 2, 1)),
    "vanillanet_10": _arch(_W4, (1, 1, 2, 4, 4, 4, 4, 8, 8), (1, 2, 2, 1, 1, 1, 2, 1)),
    "vanillanet_11": _arch(_W4, (1, 1, 2, 4, 4, 4, 4, 4, 8, 8), (1, 2, 2, 1, 1, 1, 1, 2, 1)),
    "vanillanet_12": _arch(_W4, (1, 1, 2, 4, 4, 4, 4, 4, 4, 8, 8), (1, 2, 2, 1, 1, 1, 1, 1, 2, 1)),
    "vanillanet_13": _arch(_W4, (1, 1, 2, 4, 4, 4, 4, 4, 4, 4, 8, 8), (1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1)),
    "vanillanet_13_x1_5": _arch(_W6, (1, 1, 2, 4, 4, 4, 4, 4, 4, 4, 8, 8), (1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1)),
    # The dagger model of Table 4: a 3x3-ish stem (stride 3, padding 1) and adaptive
    # pooling to fixed sizes, so at 224 it sees 75x75 maps where the others see 56x56.
    "vanillanet_13_x1_5_ada_pool": _arch(
        _W6,
        (1, 1, 2, 4, 4, 4, 4, 4, 4, 4, 8, 8),
        (1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1),
        ada_pool=(0, 38, 19, 0, 0, 0, 0, 0, 0, 10, 0),
        stem_stride=3,
        stem_padding=1,
    ),
}


def _vanillanet_min_input_size(arch: VanillaNetArch) -> int:
    """The smallest square input every layer accepts.

    Each fixed max pool needs at least its window, so the stem must output at least the
    product of their strides; adaptive pools accept any size.
    """
    ada_pool = arch.ada_pool or (0,) * arch.depth
    stem_out = 1
    for stride, ada in zip(arch.strides, ada_pool, strict=False):
        if stride > 1 and not ada:
            stem_out *= stride
    return (stem_out - 1) * arch.stem_stride + 4 - 2 * arch.stem_padding


RESNET50_LAYERS = (3, 4, 6, 3)


@dataclass(frozen=True)
class ResNetArch:
    layers: tuple[int, ...] = RESNET50_LAYERS
    shortcuts: bool = True  # False: plain-CNN (no identity adds, no downsample projections)
    base_width: int = 64
    num_classes: int = 1000
    in_chans: int = 3

    def scaled(self, width: float) -> ResNetArch:
        if width == 1.0:
            return self
        return ResNetArch(self.layers, self.shortcuts, max(1, round(self.base_width * width)),
                          self.num_classes, self.in_chans)


BASELINES: dict[str, ResNetArch] = {
    "resnet50": ResNetArch(shortcuts=True),
    "plain_cnn_50": ResNetArch(shortcuts=False),
}


Form = Literal["train", "deploy"]

MODEL_NAMES: tuple[str, ...] = (*VARIANTS, *BASELINES)


@dataclass(frozen=True)
class ModelSpec:
    """A network's identity apart from its weights: what a checkpoint's tensors tell us."""

    name: str
    width: float = 1.0  # multiplies every width; < 1 gives the narrow models tests use
    act_num: int = 3  # VanillaNet only: series activation kernel is (2*act_num+1)^2
    num_classes: int = 1000  # 0: headless VanillaNet backbone (features_only)
    form: Form = "train"

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise InputError(f"unknown model '{self.name}'; choose from {', '.join(MODEL_NAMES)}")
        if not (0 < self.width <= 4):
            raise InputError(f"width must be in (0, 4], got {self.width:g}")
        if self.act_num < 0:
            raise InputError(f"act_num must be >= 0, got {self.act_num}")

    @property
    def is_vanillanet(self) -> bool:
        return self.name in VARIANTS

    @property
    def label(self) -> str:
        """The name shown in tables and output paths, e.g. ``vanillanet_5``, ``vanillanet_5-w0.125`` or, with
        another series activation than the variant's, ``vanillanet_13-a4``."""
        label = self.name if self.width == 1.0 else f"{self.name}-w{self.width:g}"
        default_act_num = ModelSpec.__dataclass_fields__["act_num"].default
        return label if not self.is_vanillanet or self.act_num == default_act_num else f"{label}-a{self.act_num}"

    def with_form(self, form: Form) -> ModelSpec:
        return dataclasses.replace(self, form=form)

    def arch(self) -> VanillaNetArch | ResNetArch:
        if self.is_vanillanet:
            arch = dataclasses.replace(VARIANTS[self.name], act_num=self.act_num,
                                       num_classes=self.num_classes)
        else:
            arch = dataclasses.replace(BASELINES[self.name], num_classes=self.num_classes)
        return arch.scaled(self.width)


def min_input_size(spec: ModelSpec) -> int:
    """The smallest square input the network accepts."""
    arch = spec.arch()
    if isinstance(arch, VanillaNetArch):
        return _vanillanet_min_input_size(arch)
    return 32  # ResNet runs at any size; below 32 its last stage would be empty of content


def has_adaptive_pooling(spec: ModelSpec) -> bool:
    """Adaptive pools have size-dependent windows: such networks export only at static sizes."""
    return spec.is_vanillanet and bool(VARIANTS[spec.name].ada_pool)
