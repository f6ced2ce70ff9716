"""``vncompile inspect``: the facts about a network, as one JSON-ready dict."""

from __future__ import annotations

from typing import Any

from ..vanillanet.complexity import complexity
from .stages import LoadedModel


def describe(loaded: LoadedModel, input_size: int = 224) -> dict[str, Any]:
    spec = loaded.spec
    facts: dict[str, Any] = {
        "model": spec.name,
        "width": spec.width,
        "form": spec.form,
        "act_num": spec.act_num if loaded.family.series_activation else None,
        "num_classes": spec.num_classes,
        "act_learn": loaded.act_learn.as_dict(),
        "input_size": input_size,
        "train": complexity(spec.with_form("train"), input_size).as_dict(),
        "deploy": complexity(spec.with_form("deploy"), input_size).as_dict(),
        "checkpoint": None,
        "outputs": [m.as_dict() for m in loaded.features] or None,  # a backbone's maps; None: logits
    }
    if loaded.checkpoint is not None:
        ckpt = loaded.checkpoint
        facts["checkpoint"] = {
            "path": str(ckpt.path),
            "sha256": ckpt.sha256,
            "weights": ckpt.weights_key,
            "epoch": ckpt.epoch,
            "notes": list(ckpt.notes),
            "kind": ckpt.detector.kind if ckpt.detector else "classifier",
            "detector": ckpt.detector.as_dict() if ckpt.detector else None,
        }
    return facts
