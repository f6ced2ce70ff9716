"""Detection data and accuracy: labelled sets, Ultralytics' validation preprocessing, decoding, mAP.

- Sets (``load_detection_set``): a YOLO layout (``DIR/images/...`` and ``DIR/labels/...``, one
  ``<image stem>.txt`` per image at the same relative path, lines ``class cx cy w h`` normalized to the
  image; an image without a label file has no objects; class names from ``labels/classes.txt`` or a
  ``data.yaml``'s ``names`` when present) or a COCO json (``images``, ``annotations`` with ``bbox`` as
  x, y, w, h in pixels, ``categories``: class index i is the i-th category in id order, as Ultralytics
  maps COCO's 80 categories). Boxes are kept as x1, y1, x2, y2 in the original image's pixels.
- Preprocessing: ``Letterbox`` (``data.preprocess``), as Ultralytics validates an exported model; its
  ``Geometry`` maps boxes back to the original image.
- Decoding: the YOLOv8/YOLO11 Detect output ``[B, 4 + nc, A]`` (cx, cy, w, h in input pixels, then per
  class scores), filtered and suppressed as Ultralytics' val does (``DecodeSettings``: confidence 0.001,
  class-aware NMS at IoU 0.7, at most 300 detections, every class above the threshold a candidate), in
  numpy; or a graph that ends in NMS, ``[N, 6]`` or ``[B, N, 6]`` rows of x1, y1, x2, y2, score, class.
- Accuracy (``coco_map``): mAP50-95 and mAP50 by pycocotools' COCOeval, in percent like top-1.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError
from .images import IMAGE_SUFFIXES, find_images
from .preprocess import Geometry, Letterbox

__all__ = ["Geometry", "Letterbox"]  # Ultralytics' preprocessing lives with the others; read here too


@dataclass(frozen=True)
class DetectionSet:
    root: Path
    paths: tuple[Path, ...]
    sizes: tuple[tuple[int, int], ...]  # (width, height) of each original image
    boxes: tuple[np.ndarray, ...]  # per image (n, 4) float64: x1, y1, x2, y2 in the original image's pixels
    classes: tuple[np.ndarray, ...]  # per image (n,) int64 class indices
    crowd: tuple[np.ndarray, ...]  # per image (n,) bool: COCO's iscrowd (ignored regions), else all False
    names: tuple[str, ...]  # class index -> name
    layout: str  # "yolo" | "coco"

    @property
    def objects(self) -> int:
        return sum(len(c) for c in self.classes)

    def label_bytes(self) -> bytes:
        """What the labels say (boxes, classes, crowd flags, names), as bytes: with the images' own bytes, the
        set's content hash (a changed label is a different build)."""
        parts = [json.dumps(self.names).encode()]
        for boxes, classes, crowd in zip(self.boxes, self.classes, self.crowd, strict=True):
            parts += [np.ascontiguousarray(boxes, np.float64).tobytes(), np.asarray(classes, np.int64).tobytes(),
                      np.asarray(crowd, bool).tobytes(), b"\0"]
        return b"".join(parts)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except OSError as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None


def _check_classes(classes: int, num_classes: int | None, where: str) -> None:
    if num_classes is not None and classes >= num_classes:
        raise InputError(f"{where}: class {classes}, but the model has {num_classes} classes (0..{num_classes - 1})")


def _yolo_labels(path: Path, width: int, height: int, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    boxes, classes = [], []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            values = []
        if len(fields) != 5 or len(values) != 5 or not all(math.isfinite(v) for v in values):
            raise InputError(f"{where}: expected 'class cx cy w h' (a class index and 4 numbers), "
                             f"found '{line.strip()[:60]}'")
        cls, cx, cy, w, h = values
        if cls != int(cls) or cls < 0:
            raise InputError(f"{where}: the class must be an index 0, 1, ..., found '{fields[0]}'")
        if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            raise InputError(f"{where}: coordinates must be normalized to [0, 1] of the image "
                             f"({width}x{height}), found {' '.join(fields[1:])}")
        _check_classes(int(cls), num_classes, where)
        classes.append(int(cls))
        boxes.append(((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height))
    return np.array(boxes, np.float64).reshape(-1, 4), np.array(classes, np.int64)


def _yolo_names(directory: Path) -> tuple[str, ...] | None:
    classes_txt = directory / "labels" / "classes.txt"
    if classes_txt.is_file():
        return tuple(line.strip() for line in classes_txt.read_text().splitlines() if line.strip())
    for name in ("data.yaml", "dataset.yaml"):
        if (directory / name).is_file():
            import yaml

            try:
                names = (yaml.safe_load((directory / name).read_text()) or {}).get("names")
            except (yaml.YAMLError, AttributeError) as exc:
                raise InputError(f"{directory / name}: not a readable dataset description ({exc})") from None
            if isinstance(names, dict):
                return tuple(str(names[k]) for k in sorted(names))
            if isinstance(names, list):
                return tuple(str(n) for n in names)
    return None


def read_yolo_set(directory: Path, num_classes: int | None = None) -> DetectionSet:
    """A YOLO-layout set (see the module); ``num_classes``: the model's, a label above it is refused."""
    directory = Path(directory)
    images_dir, labels_dir = directory / "images", directory / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise InputError(f"{directory}: a YOLO-layout set has images/ and labels/ folders")
    paths = find_images(images_dir, what="detection evaluation")
    expected = {labels_dir / p.relative_to(images_dir).with_suffix(".txt") for p in paths}
    for label in sorted(labels_dir.rglob("*.txt")):
        if label not in expected and label != labels_dir / "classes.txt":
            stem = label.relative_to(labels_dir).with_suffix("")
            raise InputError(f"{label}: no image for this label file (looked for {images_dir / stem}"
                             f"{{{','.join(IMAGE_SUFFIXES)}}})")
    sizes, boxes, classes = [], [], []
    for path in paths:
        size = _image_size(path)
        label = labels_dir / path.relative_to(images_dir).with_suffix(".txt")
        b, c = _yolo_labels(label, *size, num_classes) if label.is_file() else (np.zeros((0, 4)), np.zeros(0, int))
        sizes.append(size)
        boxes.append(b)
        classes.append(c.astype(np.int64))
    names = _yolo_names(directory)
    count = num_classes or len(names or ()) or 1 + max((int(c.max()) for c in classes if len(c)), default=0)
    if names is not None and len(names) < count:
        names = None
    names = names or tuple(str(i) for i in range(count))
    crowd = tuple(np.zeros(len(c), bool) for c in classes)
    return _nonempty(DetectionSet(directory, tuple(paths), tuple(sizes), tuple(boxes), tuple(classes), crowd,
                                  tuple(names), "yolo"))


def _coco_image_root(annotations: Path, first: str) -> Path:
    for root in (annotations.parent, annotations.parent / "images", annotations.parent.parent,
                 annotations.parent.parent / "images"):
        if (root / first).is_file():
            return root
    raise InputError(f"{annotations}: image '{first}' not found beside the annotations, in images/ there, "
                     "or one folder up")


def read_coco_set(annotations: Path, num_classes: int | None = None, images: Path | None = None) -> DetectionSet:
    """A COCO detection json (see the module); images under ``images``, else found next to the json."""
    annotations = Path(annotations)
    try:
        data = json.loads(annotations.read_text())
        entries, categories = data["images"], sorted(data["categories"], key=lambda c: c["id"])
        found = data.get("annotations", [])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{annotations}: not a COCO detection json ({type(exc).__name__}: {exc})") from None
    if not entries:
        raise InputError(f"{annotations}: no images")
    index = {c["id"]: i for i, c in enumerate(categories)}
    if num_classes is not None and len(categories) > num_classes:
        raise InputError(f"{annotations}: {len(categories)} categories, but the model has {num_classes} classes")
    root = Path(images) if images is not None else _coco_image_root(annotations, entries[0]["file_name"])
    position = {}
    for i, entry in enumerate(entries):
        if not (root / entry["file_name"]).is_file():
            raise InputError(f"{annotations}: image '{entry['file_name']}' (id {entry['id']}) not found in {root}")
        position[entry["id"]] = i
    boxes: list[list] = [[] for _ in entries]
    classes: list[list] = [[] for _ in entries]
    crowd: list[list] = [[] for _ in entries]
    for ann in found:
        where = f"{annotations}: annotation {ann.get('id', '?')}"
        if ann.get("image_id") not in position:
            raise InputError(f"{where} points at image id {ann.get('image_id')}, which is not in 'images'")
        if ann.get("category_id") not in index:
            raise InputError(f"{where} has category_id {ann.get('category_id')}, which is not in 'categories'")
        x, y, w, h = (float(v) for v in ann["bbox"])
        i = position[ann["image_id"]]
        boxes[i].append((x, y, x + w, y + h))
        classes[i].append(index[ann["category_id"]])
        crowd[i].append(bool(ann.get("iscrowd", 0)))
    sizes = tuple((int(e["width"]), int(e["height"])) if "width" in e and "height" in e
                  else _image_size(root / e["file_name"]) for e in entries)
    return _nonempty(DetectionSet(
        root, tuple(root / e["file_name"] for e in entries), sizes,
        tuple(np.array(b, np.float64).reshape(-1, 4) for b in boxes), tuple(np.array(c, np.int64) for c in classes),
        tuple(np.array(c, bool) for c in crowd), tuple(str(c.get("name", c["id"])) for c in categories), "coco"))


def _nonempty(dataset: DetectionSet) -> DetectionSet:
    if not dataset.objects:
        raise InputError(f"{dataset.root}: no labelled objects in {len(dataset.paths)} images; mAP needs some")
    return dataset


def _coco_files(directory: Path) -> list[Path]:
    """The COCO jsons of a folder (at its top or in annotations/): json files whose opening names "images" (a
    classification folder's class_index.json does not)."""
    def looks_coco(path: Path) -> bool:
        try:
            with open(path, "rb") as f:
                return b'"images"' in f.read(1 << 20)
        except OSError:
            return False

    return [p for p in sorted(directory.glob("*.json")) + sorted(directory.glob("annotations/*.json"))
            if looks_coco(p)]


def _detection_source(path: Path) -> tuple[str, Path] | None:
    """Which kind of detection set ``path`` is, and the file or folder it is read from; None: not one."""
    if path.is_file() and path.suffix == ".json":
        return "coco", path
    if not path.is_dir():
        return None
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return "yolo", path
    candidates = _coco_files(path)
    return ("coco", candidates[0]) if len(candidates) == 1 else None


def is_detection_set(path: Path) -> bool:
    """Whether ``path`` is laid out as a detection set (YOLO or COCO), not as labelled classification images."""
    return _detection_source(Path(path)) is not None


def load_detection_set(path: Path, num_classes: int | None = None) -> DetectionSet:
    """A detection set: a COCO json file, a folder with images/ and labels/ (YOLO), or a folder with one COCO
    json (at its top or in annotations/)."""
    path = Path(path)
    source = _detection_source(path)
    if source is not None:
        kind, where = source
        return read_yolo_set(where, num_classes) if kind == "yolo" else read_coco_set(where, num_classes)
    if not path.exists():
        raise InputError(f"{path}: no such detection set (a folder, or a COCO .json)")
    if path.is_file():
        raise InputError(f"{path}: not a detection set: a COCO .json file, or a folder with images/ and labels/")
    candidates = _coco_files(path)
    folders = [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    found = (f" (found {len(candidates)} json files: give one)" if candidates
             else " (found class folders: labels for a classifier, no boxes)" if folders else "")
    raise InputError(f"{path}: not a detection set: expected images/ and labels/ (YOLO layout) or one COCO json"
                     + found)


# ---------------------------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (n, 4) x1, y1, x2, y2
    scores: np.ndarray  # (n,)
    classes: np.ndarray  # (n,) int64

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))

    def to_original(self, geometry: Geometry) -> Detections:
        return Detections(geometry.to_original(self.boxes), self.scores, self.classes)


@dataclass(frozen=True)
class DecodeSettings:
    """Ultralytics val's: every class scoring above ``conf`` a candidate, class-aware NMS, ``max_det`` kept."""

    conf: float = 0.001
    iou: float = 0.7
    max_det: int = 300
    multi_label: bool = True  # False: each box's best class only
    agnostic: bool = False  # True: NMS across classes
    max_candidates: int = 30000  # the highest-scoring candidates NMS considers

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one x1, y1, x2, y2 box with each of ``boxes``."""
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int | None = None) -> np.ndarray:
    """Greedy non-maximum suppression: indices kept, best first (a box overlapping a kept one by more than
    ``iou`` is dropped); at most ``limit``."""
    order = np.argsort(-scores, kind="stable")
    ordered = boxes[order]
    suppressed = np.zeros(len(order), bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        if limit is not None and len(keep) >= limit:
            break
        suppressed[i + 1:] |= box_iou(ordered[i], ordered[i + 1:]) > iou
    return order[np.array(keep, np.int64)]


def _suppress(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, settings: DecodeSettings) -> Detections:
    if len(scores) > settings.max_candidates:
        top = np.argsort(-scores, kind="stable")[:settings.max_candidates]
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    # Class-aware: each class's boxes moved apart so that boxes of different classes never overlap.
    offset = 0.0 if settings.agnostic else classes[:, None] * (np.abs(boxes).max(initial=0.0) * 2 + 1)
    kept = nms(boxes + offset, scores, settings.iou, settings.max_det)
    return Detections(boxes[kept], scores[kept], classes[kept].astype(np.int64))


def decode_yolo(output: np.ndarray, settings: DecodeSettings = DecodeSettings()) -> list[Detections]:
    """The YOLOv8/YOLO11 Detect output ``[B, 4 + nc, A]`` (or ``[4 + nc, A]``) -> per image, boxes in input
    pixels."""
    output = np.asarray(output, np.float64)
    output = output[None] if output.ndim == 2 else output
    if output.ndim != 3 or output.shape[1] < 5:
        raise InputError(f"a YOLO Detect output is [batch, 4 + classes, anchors]; got {list(output.shape)}")
    results = []
    for prediction in output:
        xywh, scores = prediction[:4].T, prediction[4:].T  # (A, 4), (A, nc)
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
        if settings.multi_label:
            anchor, cls = np.nonzero(scores > settings.conf)
            score = scores[anchor, cls]
        else:
            cls = scores.argmax(axis=1)
            score = scores[np.arange(len(scores)), cls]
            anchor = np.nonzero(score > settings.conf)[0]
            cls, score = cls[anchor], score[anchor]
        results.append(_suppress(boxes[anchor], score, cls, settings))
    return results


def decode_nms_output(output: np.ndarray, settings: DecodeSettings = DecodeSettings()) -> list[Detections]:
    """A graph that ends in NMS: ``[N, 6]`` or ``[B, N, 6]`` rows of x1, y1, x2, y2, score, class (padding rows
    score 0) -> per image, those scoring above ``settings.conf``, best first, at most ``max_det``."""
    output = np.asarray(output, np.float64)
    output = output[None] if output.ndim == 2 else output
    if output.ndim != 3 or output.shape[2] != 6:
        raise InputError(f"an NMS output is [N, 6] or [batch, N, 6]; got {list(output.shape)}")
    results = []
    for rows in output:
        rows = rows[rows[:, 4] > settings.conf]
        rows = rows[np.argsort(-rows[:, 4], kind="stable")][:settings.max_det]
        results.append(Detections(rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64)))
    return results


def decode_detections(output: np.ndarray, settings: DecodeSettings = DecodeSettings(),
                      kind: str | None = None) -> list[Detections]:
    """``decode_yolo`` or ``decode_nms_output`` (``kind`` "yolo" / "nms"; None: by the shape, rows of 6 being
    NMS output unless the other axis is the longer one, as anchors are)."""
    shape = np.shape(output)
    if kind is None:
        kind = "nms" if shape[-1] == 6 and (len(shape) == 2 or shape[-2] > 6 or shape[-2] == shape[-1]) else "yolo"
    if kind not in ("yolo", "nms"):
        raise InputError(f"unknown detection output kind '{kind}'; choose yolo or nms")
    return decode_yolo(output, settings) if kind == "yolo" else decode_nms_output(output, settings)


# ---------------------------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class DetectorMetadata:
    """What Ultralytics' exporter writes into the ONNX metadata (any of it may be missing)."""

    task: str | None = None
    names: tuple[str, ...] | None = None
    imgsz: tuple[int, int] | None = None  # height, width
    stride: int | None = None


def ultralytics_metadata(properties: Mapping[str, str]) -> DetectorMetadata:
    """Parse an ONNX graph's metadata properties (``{p.key: p.value for p in model.metadata_props}``); values
    are Python literals, read without evaluating anything."""
    def literal(key: str):
        try:
            return ast.literal_eval(properties[key][:1_000_000]) if key in properties else None
        except Exception:  # noqa: BLE001 - an untrusted file's text: anything malformed is no value
            return None

    def positive(value) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 65536 else None

    names, imgsz, stride = literal("names"), literal("imgsz"), literal("stride")
    if isinstance(names, dict) and all(isinstance(k, int) for k in names):
        names = tuple(str(names[k]) for k in sorted(names))
    elif isinstance(names, (list, tuple)):
        names = tuple(str(n) for n in names)
    else:
        names = None
    if isinstance(imgsz, int):
        imgsz = (imgsz, imgsz)
    sides = tuple(positive(v) for v in imgsz) if isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 else None
    imgsz = sides if sides and None not in sides else None
    task = properties.get("task")
    return DetectorMetadata(task if isinstance(task, str) else None, names, imgsz,  # type: ignore[arg-type]
                            positive(stride))


# ---------------------------------------------------------------------------------------------- accuracy


def coco_map(dataset: DetectionSet, predictions: Sequence[Detections]) -> dict[str, float]:
    """mAP50-95 and mAP50 (percent) of ``predictions`` (one per image of ``dataset``, boxes in original-image
    pixels) by pycocotools' COCOeval."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise InputError("detection accuracy needs pycocotools: pip install 'vncompile[detection]'") from None
    if len(predictions) != len(dataset.paths):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset.paths)} images")
    images = [{"id": i + 1, "width": w, "height": h} for i, (w, h) in enumerate(dataset.sizes)]
    annotations = []
    for i, (boxes, classes, crowd) in enumerate(zip(dataset.boxes, dataset.classes, dataset.crowd, strict=True)):
        for box, cls, is_crowd in zip(boxes, classes, crowd, strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                                "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h,
                                "iscrowd": int(is_crowd)})
    results = [{"image_id": i + 1, "category_id": int(c) + 1, "score": float(s),
                "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
               for i, found in enumerate(predictions) for b, s, c in zip(found.boxes, found.scores, found.classes,
                                                                          strict=True)]
    if not results:
        return {"map50_95": 0.0, "map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": i + 1} for i in range(len(dataset.names))]}
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    map50_95, map50 = (max(float(v), 0.0) * 100.0 for v in evaluation.stats[:2])
    return {"map50_95": map50_95, "map50": map50}
