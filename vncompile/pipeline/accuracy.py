"""Accuracy on the user's labelled images: top-1/top-5 of every stage and agreement with the reference.

The reference is the float64 training form, like verification's. A target whose top-1 falls more
than ``--max-top1-drop`` points below the reference's fails the build, naming the int8 layers that
broke first when the graph was quantized; a detector's mAP50-95 (``detection_accuracy``), more than
``--max-map-drop``: ``check_drop`` judges both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.errors import VerificationError

# The figure each kind of accuracy section is judged on: its key -> its name and the flag that bounds its drop.
JUDGED = {"top1": ("top-1", "--max-top1-drop"), "map50_95": ("mAP50-95", "--max-map-drop")}


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


def drop(section: dict[str, Any], stage: str, metric: str) -> float:
    """Points of ``metric`` (percent) ``stage`` lies below the reference."""
    return section["reference"][metric] - section[stage][metric]


def top1_drop(section: dict[str, Any], stage: str) -> float:
    return drop(section, stage, "top1")


def check_drop(section: dict[str, Any], stage: str, metric: str, max_drop: float, what: str,
               data: object | None = None, hint: str = "") -> float:
    """The drop of ``stage``'s ``metric`` (a key of ``JUDGED``); more than ``max_drop`` points fails, in one line
    naming ``what`` ran (e.g. "rknn int8"), on which images (``data``), and the flag that allows more."""
    gap = drop(section, stage, metric)
    if gap > max_drop:
        name, flag = JUDGED[metric]
        source = f" of {data}" if data is not None else ""
        raise VerificationError(
            f"{what} {name} on {section['images']} images{source} is {section[stage][metric]:.2f}%, {gap:.2f} points "
            f"below the reference's {section['reference'][metric]:.2f}% (allowed: {flag} {max_drop:g}){hint}")
    return gap
