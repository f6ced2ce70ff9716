"""Backbones inside detector checkpoints: mmdetection's, and any detector's state_dict.

mmdetection (mmcv 1.x and mmengine) saves ``{"state_dict": {backbone.* / neck.* / *_head.*},
"meta": {...}, ...}``. Its ``meta`` holds plain data (strings, numbers, the config's text,
class-name tuples); mmengine adds a top-level ``message_hub`` whose logged scalars are
``HistoryBuffer`` objects over numpy arrays. Those are the only non-container types allowed
(``SAFE_GLOBALS``), and a HistoryBuffer loads as an inert record of its attributes: nothing
of mmengine is imported or run. Any other pickled type is refused by the loader.

Other detectors (an Ultralytics model whose layer 0 is the backbone, a wrapper module) keep
the backbone under a key prefix: ``--prefix`` names it, else the common ones are tried.

The official mmdetection VanillaNet backbone has no leaky ReLU between the two 1x1 convs
(nor after the stem's conv): its train form is the classification train form at act_learn 1,
so its fusion is always exact, whatever epoch the detector was saved at.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.errors import CheckpointError
from .features import out_indices_from_config


class PickledRecord:
    """An inert stand-in for a pickled logging object: its attributes, kept as data."""

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state


def _numpy_globals() -> list[Any]:
    """What numpy arrays pickle as (numpy 1.x and 2.x module paths): array reconstruction, no code."""
    multiarray = (np._core if hasattr(np, "_core") else np.core).multiarray
    found: list[Any] = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        found += [(multiarray._reconstruct, f"{module}._reconstruct"), (multiarray.scalar, f"{module}.scalar")]
    found += [type(np.dtype(t)) for t in ("f4", "f8", "i4", "i8", "u1", "bool")]
    return found


SAFE_GLOBALS: list[Any] = [(PickledRecord, "mmengine.logging.history_buffer.HistoryBuffer"), *_numpy_globals()]

# Where detectors keep their backbone, most specific first.
BACKBONE_PREFIXES = ("module.backbone.", "model.backbone.", "backbone.", "module.model.0.", "model.model.0.",
                     "model.0.", "backbone.body.", "model.backbone.body.")
_STEMS = ("stem1.0.weight", "stem.0.weight", "conv1.weight")  # VanillaNet train / deploy, ResNet
_VANILLANET_FUSION_NOTE = ("the mmdetection VanillaNet backbone has no leaky ReLU between its 1x1 convs, "
                           "so fusion is exact at every epoch")


@dataclass(frozen=True)
class DetectorBackbone:
    """A backbone found inside a detector checkpoint, and what was left out."""

    kind: str  # "mmdetection" or "detector state_dict"
    prefix: str
    ignored_tensors: int  # tensors outside the backbone (neck, heads)
    ignored_groups: tuple[str, ...]  # their top-level names, e.g. ("neck", "rpn_head")
    features: str | None  # the config's out_indices, when the checkpoint carries its config
    exact_fusion: str | None  # why fusion is exact regardless of act_learn (the mmdetection backbone)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "prefix": self.prefix, "ignored_tensors": self.ignored_tensors,
                "ignored_groups": list(self.ignored_groups), "config_out_indices": self.features}


def _has_stem(sd: Mapping[str, torch.Tensor], prefix: str) -> bool:
    return any(f"{prefix}{stem}" in sd for stem in _STEMS)


def is_mmdetection(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("meta"), Mapping) and isinstance(obj.get("state_dict"),
                                                                                             Mapping)


def _config_text(obj: Any) -> str:
    meta = obj.get("meta") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping):
        return ""
    config = meta.get("config", meta.get("cfg", ""))  # mmcv 1.x: config; mmengine: cfg
    return config if isinstance(config, str) else ""


def find_backbone(obj: Any, sd: dict[str, torch.Tensor],
                  prefix: str | None) -> tuple[dict[str, torch.Tensor], DetectorBackbone | None]:
    """The backbone's tensors (prefix stripped) and where they came from; ``None`` for a plain classifier."""
    if prefix is None:
        if _has_stem(sd, "") and not is_mmdetection(obj):
            return sd, None
        prefix = next((p for p in BACKBONE_PREFIXES if _has_stem(sd, p)), None)
        if prefix is None:
            shown = ", ".join(list(sd)[:3])
            raise CheckpointError(f"not a VanillaNet or ResNet-50 checkpoint, nor a detector with one inside (keys "
                                  f"begin {shown}); if a detector keeps its backbone under another prefix, pass "
                                  "--prefix (e.g. --prefix model.0.)")
    elif not _has_stem(sd, prefix):
        raise CheckpointError(f"no backbone under --prefix '{prefix}': no {prefix}stem1.0.weight, "
                              f"{prefix}stem.0.weight or {prefix}conv1.weight")
    backbone = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    rest = [k for k in sd if not k.startswith(prefix)]
    depth = prefix.count(".")  # name what was left out at the backbone's own level: neck, bbox_head, model.9
    groups = tuple(dict.fromkeys(".".join(k.split(".")[:depth]) for k in rest))
    mmdet = is_mmdetection(obj)
    vanillanet = "stem1.0.weight" in backbone
    info = DetectorBackbone(
        kind="mmdetection" if mmdet else "detector state_dict", prefix=prefix, ignored_tensors=len(rest),
        ignored_groups=groups, features=out_indices_from_config(_config_text(obj)) if mmdet else None,
        exact_fusion=_VANILLANET_FUSION_NOTE if mmdet and vanillanet else None,
    )
    return backbone, info


def without_head(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A classifier's state_dict minus its head (VanillaNet ``cls*``, ResNet ``fc``): a features build drops it."""
    return {k: v for k, v in sd.items() if not k.startswith(("cls1.", "cls2.", "cls.", "fc."))}
