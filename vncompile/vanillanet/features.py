"""Backbone outputs: which feature maps a headless build returns, what they are called.

``--features`` follows the official detection backbone (huawei-noah/VanillaNet,
``object_detection/mmdet/models/backbones/vanillanet.py``): its ``out_indices`` are
0-based *stage* indices (``stages[i]``'s output for ``i in out_indices``; the stem is
never among them), e.g. ``0,1,8,10`` for VanillaNet-13 in the Mask R-CNN config.
``stem`` adds the stem's map and ``all`` is the stem and every stage (the YOLO-style
backbone). ResNet-50's stages are its four layers (C2-C5: ``0,1,2,3``), as in mmdetection.

Internally a network's feature list is ``[stem, stage 0, stage 1, ...]`` (``model.VanillaNet``'s
``out_indices``: 0 is the stem, i+1 is stage i); ``selection`` converts between the two.
Pure Python (no torch), so a request is validated without importing torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..core.errors import InputError
from .archs import ModelSpec, VanillaNetArch

ALL = "all"
STEM = "stem"


def parse_features(text: str) -> str:
    """The canonical form of a ``--features`` value ('all', or 'stem'/stage indices, comma-separated)."""
    parts = [p.strip().lower() for p in str(text).split(",") if p.strip()]
    if parts == [ALL]:
        return ALL
    if not parts or any(p != STEM and not p.isdigit() for p in parts):
        raise InputError(f"--features takes 'all', 'stem' and/or 0-based stage indices (e.g. 0,1,8,10), got '{text}'")
    tokens = sorted(set(parts), key=lambda p: -1 if p == STEM else int(p))
    return ",".join(tokens)


@dataclass(frozen=True)
class FeatureMap:
    name: str  # e.g. "stage8_s16", "stem_s4"
    index: int  # in the network's feature list: 0 is the stem, i+1 is stage i
    channels: int
    stride: int  # nominal input pixels per output pixel

    def as_dict(self) -> dict[str, int | str]:
        return {"name": self.name, "channels": self.channels, "stride": self.stride}


def feature_layout(spec: ModelSpec) -> list[FeatureMap]:
    """Every map a backbone can return, stem first."""
    arch = spec.arch()
    if isinstance(arch, VanillaNetArch):
        strides = [arch.stem_stride]
        for s in arch.strides:
            strides.append(strides[-1] * s)
        channels = list(arch.dims)
    else:  # ResNet: stem (conv + maxpool) at 1/4, then layer1..layer4 (C2..C5)
        strides = [4, 4, 8, 16, 32]
        channels = [arch.base_width] + [arch.base_width * 2**i * 4 for i in range(len(arch.layers))]
    return [FeatureMap("stem" if i == 0 else f"stage{i - 1}", i, c, s)
            for i, (c, s) in enumerate(zip(channels, strides, strict=True))]


def selection(spec: ModelSpec, features: str) -> list[FeatureMap]:
    """The maps ``features`` selects, in the order the network returns them; a one-line error if out of range."""
    layout = feature_layout(spec)
    stages = len(layout) - 1
    if features == ALL:
        chosen = layout
    else:
        chosen = []
        for token in features.split(","):
            if token == STEM:
                chosen.append(layout[0])
            elif int(token) >= stages:
                raise InputError(f"--features {features}: {spec.label} has stages 0-{stages - 1} (0-based, as the "
                                 f"official detection configs' out_indices; 'stem' for the stem's map)")
            else:
                chosen.append(layout[int(token) + 1])
    return [FeatureMap(f"{m.name}_s{m.stride}", m.index, m.channels, m.stride) for m in chosen]


def features_text(maps: list[FeatureMap] | tuple[FeatureMap, ...]) -> str | None:
    """The ``--features`` value that selects ``maps`` (None: no maps, a classifier)."""
    if not maps:
        return None
    return ",".join(STEM if m.index == 0 else str(m.index - 1) for m in maps)


def out_indices_from_config(text: str) -> str | None:
    """The backbone's ``out_indices`` in an mmdetection config (a checkpoint's ``meta``), if it says."""
    found = re.search(r"out_indices\s*=\s*[\[(]([\d,\s]+)[\])]", text)
    if not found:
        return None
    return parse_features(found.group(1))
