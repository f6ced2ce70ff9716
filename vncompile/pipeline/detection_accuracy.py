"""A detector's accuracy on the user's labelled images: mAP50-95 and mAP50 of every stage.

Ultralytics' val, reproduced: the images letterboxed to the build's input size (``data.preprocess.Letterbox``),
the outputs decoded and suppressed with ``DecodeSettings`` (--conf, --iou, --max-det: val's 0.001, 0.7, 300),
the boxes mapped back to each original image, and scored by pycocotools (``data.detection.coco_map``), in
percent points like a classifier's top-1. The outputs decoded: the YOLOv8/YOLO11 Detect output, the same head
split into boxes and scores (``onnxtools.detect_head``, for int8 NPUs), or a graph that ends in NMS. The
reference is the float64 graph, like verification's; a target whose mAP50-95 falls more than --max-map-drop
points below it fails the build (``check_map_drop``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..api.options import TargetOptions
from ..api.request import InputShape
from ..core.errors import InputError
from ..data.calibration import preprocessing_of
from ..data.detection import (
    DecodeSettings,
    Detections,
    DetectionSet,
    coco_map,
    decode_detections,
    decode_yolo,
    load_detection_set,
)
from ..data.evaluation import padded_batches
from ..data.preprocess import Geometry, Letterbox
from .accuracy import check_drop

# One run of a stage over ``DetectionEval.batches``: per batch, the graph's outputs in order.
BatchOutputs = Sequence[Sequence[np.ndarray]]


@dataclass(frozen=True)
class DetectionEval:
    """The labelled set, letterboxed at the build's input size once, and how its outputs are decoded."""

    dataset: DetectionSet
    letterbox: Letterbox
    settings: DecodeSettings
    inputs: np.ndarray  # (N, 3, H, W) float32, letterboxed
    geometries: tuple[Geometry, ...]  # per image: where it lies in its input
    kind: str | None = None  # how the model's output decodes, as its family says ("yolo", "nms"); None: by shape

    def batches(self, batch: int) -> list[np.ndarray]:
        return padded_batches(self.inputs, batch)


def decode_settings_of(options: TargetOptions) -> DecodeSettings:
    return DecodeSettings(conf=options.conf, iou=options.iou, max_det=options.max_det)


def load_detection_eval(options: TargetOptions, shape: InputShape, num_classes: int | None,
                        kind: str | None = None) -> DetectionEval | None:
    """The detector's evaluation set (None without --eval-data): a YOLO-layout folder or a COCO json, checked
    against the model's ``num_classes``, letterboxed at ``shape``'s size."""
    if options.eval_data is None:
        return None
    letterbox = preprocessing_of(options) if options.preprocess is not None else Letterbox()
    if not isinstance(letterbox, Letterbox):
        raise InputError(f"--preprocess {options.preprocess}: a detector's mAP is measured on letterboxed images "
                         "(its boxes map back to the original image through the letterbox); drop --preprocess or "
                         "give letterbox")
    dataset = load_detection_set(options.eval_data, num_classes)
    loaded = [letterbox.load_with_geometry(path, shape.height, shape.width) for path in dataset.paths]
    inputs = np.stack([array for array, _ in loaded]).astype(np.float32)
    return DetectionEval(dataset, letterbox, decode_settings_of(options), inputs,
                         tuple(geometry for _, geometry in loaded), kind)


def _described(outputs: Sequence[np.ndarray], output_names: Sequence[str]) -> str:
    names = list(output_names) + [f"output {i}" for i in range(len(output_names), len(outputs))]
    return ", ".join(f"{name} {list(np.shape(o))}" for name, o in zip(names, outputs, strict=False))


def detections(outputs: Sequence[np.ndarray], output_names: Sequence[str],
               settings: DecodeSettings = DecodeSettings(), kind: str | None = None) -> list[Detections]:
    """One run's outputs -> per image of the batch, its detections in input pixels. The outputs: the Detect output
    ``[B, 4 + nc, A]`` or an NMS output ``[B, N, 6]`` alone, or the split head's boxes ``[B, 4, A]`` and scores
    ``[B, nc, A]`` (told apart by their 4 channels; both 4: in ``split_detect_head``'s order, boxes first)."""
    arrays = [np.asarray(o) for o in outputs]
    if len(arrays) == 1:
        return decode_detections(arrays[0], settings, kind)
    if len(arrays) == 2 and all(a.ndim == 3 for a in arrays) and arrays[0].shape[::2] == arrays[1].shape[::2]:
        boxes, scores = arrays if arrays[0].shape[1] == 4 else arrays[::-1]
        if boxes.shape[1] == 4:
            return decode_yolo(np.concatenate([boxes, scores], axis=1), settings)
    raise InputError(f"cannot read detections from the outputs {_described(arrays, output_names)}: expected a YOLO "
                     "Detect output [batch, 4 + classes, anchors], its boxes [batch, 4, anchors] and scores "
                     "[batch, classes, anchors] apart, or an NMS output [batch, N, 6]")


def map_of(evaluation: DetectionEval, per_batch_outputs: BatchOutputs,
           output_names: Sequence[str]) -> dict[str, float]:
    """``map50_95`` and ``map50`` (percent) of one stage's run over ``evaluation.batches``: the padding of the last
    batch dropped, the boxes mapped back to the original images."""
    found = [d for outputs in per_batch_outputs
             for d in detections(outputs, output_names, evaluation.settings, evaluation.kind)]
    if len(found) < len(evaluation.geometries):
        raise ValueError(f"{len(found)} images' detections for {len(evaluation.geometries)} images")
    return coco_map(evaluation.dataset, [d.to_original(g) for d, g in zip(found, evaluation.geometries,
                                                                          strict=False)])


def detection_section(evaluation: DetectionEval, runs: Mapping[str, BatchOutputs],
                      output_names: Sequence[str]) -> dict[str, Any]:
    """The manifest's ``accuracy`` for a detector: the set, the preprocessing and decoding used, and the mAP of
    each run (``runs``: stage -> its outputs over ``evaluation.batches``; "reference" among them). The build adds
    "target" (``map_of`` its run)."""
    if "reference" not in runs:
        raise ValueError("the detection accuracy section needs the reference's run")
    dataset = evaluation.dataset
    section: dict[str, Any] = {"images": len(dataset.paths), "objects": dataset.objects,
                               "classes": len(dataset.names), "layout": dataset.layout,
                               "preprocessing": evaluation.letterbox.as_dict(), "decode": evaluation.settings.as_dict()}
    for stage, outputs in runs.items():
        section[stage] = map_of(evaluation, outputs, output_names)
    return section


def check_map_drop(section: dict[str, Any], stage: str, max_drop: float, what: str, data: object | None = None,
                   hint: str = "") -> float:
    """``stage``'s mAP50-95 more than ``max_drop`` points (--max-map-drop) below the reference's fails in one line;
    the drop otherwise."""
    return check_drop(section, stage, "map50_95", max_drop, what, data, hint)
