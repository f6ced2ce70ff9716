"""Labelled evaluation images, preprocessed, in batches of the input shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..api.options import TargetOptions
from ..api.request import InputShape
from ..core.errors import InputError
from .calibration import preprocessing_of
from .detection import is_detection_set
from .images import LabelledImages, labelled_images


def padded_batches(inputs: np.ndarray, batch: int) -> list[np.ndarray]:
    """Batches of the network's batch size; the last one padded by repeating its last image (dropped again from
    the outputs)."""
    chunks = []
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
        chunks.append(chunk)
    return chunks


@dataclass(frozen=True)
class EvalSet:
    images: LabelledImages
    inputs: np.ndarray  # (N, C, H, W) float32
    labels: np.ndarray  # (N,) int

    def batches(self, batch: int) -> list[np.ndarray]:
        return padded_batches(self.inputs, batch)

    def logits(self, outputs: list[list[np.ndarray]]) -> np.ndarray:
        """Per-batch outputs of ``batches`` -> (N, classes), the padding dropped."""
        stacked = np.concatenate([np.asarray(b[0]).reshape(b[0].shape[0], -1) for b in outputs])
        return stacked[:len(self.labels)]


def load_eval_set(options: TargetOptions, shape: InputShape) -> EvalSet | None:
    if options.eval_data is None:
        return None
    if is_detection_set(options.eval_data):
        raise InputError(f"{options.eval_data}: a detection set (YOLO layout or COCO json), but this network's "
                         "accuracy is top-1: give labelled images (ImageFolder, or a folder with labels.txt/.csv)")
    images = labelled_images(options.eval_data)
    inputs = preprocessing_of(options).load_many(list(images.paths), shape.height, shape.width)
    return EvalSet(images, inputs, np.asarray(images.labels))
