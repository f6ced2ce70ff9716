"""Accuracy on the user's labelled images: top-1/top-5 of every stage and agreement with the reference.

The reference is the float64 training form, like verification's. A target whose top-1 falls more
than ``--max-top1-drop`` points below the reference's fails the build, naming the int8 layers that
broke first when the graph was quantized.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def top_k(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Percent of images whose label is among the ``k`` largest logits."""
    k = min(k, logits.shape[1])
    best = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float(100.0 * np.mean(np.any(best == labels[:, None], axis=1)))


def accuracy(logits: np.ndarray, labels: np.ndarray, reference_top1: np.ndarray | None = None) -> dict[str, Any]:
    """``top1``/``top5`` in percent; ``agreement``: percent of images with the reference's top-1 prediction."""
    result: dict[str, Any] = {"top1": top_k(logits, labels, 1), "top5": top_k(logits, labels, 5)}
    if reference_top1 is not None:
        result["agreement"] = float(100.0 * np.mean(np.argmax(logits, axis=1) == reference_top1))
    return result


def top1_drop(section: dict[str, Any], stage: str) -> float:
    return section["reference"]["top1"] - section[stage]["top1"]
