"""Detection data and accuracy (``data.detection``): YOLO-layout and COCO sets read alike, Ultralytics'
validation letterbox and its way back, Detect-output and NMS-output decoding, mAP by pycocotools, and bad
input as one line each. The set is drawn here: rectangles on images of several sizes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from vncompile.core.errors import InputError
from vncompile.data.detection import (
    DecodeSettings,
    Detections,
    Geometry,
    Letterbox,
    coco_map,
    decode_detections,
    decode_nms_output,
    decode_yolo,
    load_detection_set,
    nms,
    read_coco_set,
    read_yolo_set,
    ultralytics_metadata,
)

# image name -> (width, height), [(class, x1, y1, x2, y2)] in pixels
OBJECTS = {
    "a.png": ((80, 60), [(0, 10, 10, 40, 30), (2, 50, 20, 75, 55)]),
    "b.jpg": ((50, 90), [(1, 5, 40, 45, 85)]),
    "sub/c.png": ((64, 64), [(0, 0, 0, 32, 32), (1, 30, 30, 64, 64), (2, 8, 40, 20, 60)]),
    "d.png": ((100, 40), []),  # no objects, no label file
}
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]


def draw(path, size, objects):
    rng = np.random.default_rng(len(str(path)))
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    canvas = ImageDraw.Draw(image)
    for cls, *box in objects:
        canvas.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=COLOURS[cls])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture(scope="module")
def yolo_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("yolo")
    for name, (size, objects) in OBJECTS.items():
        draw(root / "images" / name, size, objects)
        if objects:
            label = (root / "labels" / name).with_suffix(".txt")
            label.parent.mkdir(parents=True, exist_ok=True)
            w, h = size
            label.write_text("".join(f"{c} {(x1 + x2) / 2 / w} {(y1 + y2) / 2 / h} {(x2 - x1) / w} {(y2 - y1) / h}\n"
                                     for c, x1, y1, x2, y2 in objects) + "\n")
    (root / "data.yaml").write_text("names:\n  0: square\n  1: tall\n  2: small\n")
    return root


@pytest.fixture(scope="module")
def coco_set(yolo_set, tmp_path_factory):
    """The same images and boxes as a COCO json, with category ids that are not 0..N-1."""
    root = tmp_path_factory.mktemp("coco")
    images, annotations = [], []
    for i, (name, (size, objects)) in enumerate(OBJECTS.items()):
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / name).write_bytes((yolo_set / "images" / name).read_bytes())
        images.append({"id": 10 + i, "file_name": name, "width": size[0], "height": size[1]})
        for c, x1, y1, x2, y2 in objects:
            annotations.append({"id": len(annotations) + 1, "image_id": 10 + i, "category_id": [1, 3, 7][c],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": 7, "name": "small"}, {"id": 1, "name": "square"}, {"id": 3, "name": "tall"}]
    (root / "annotations").mkdir()
    (root / "annotations" / "val.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                               "categories": categories}))
    return root


def truth(name):
    size, objects = OBJECTS[name]
    return (np.array([o[1:] for o in objects], float).reshape(-1, 4), np.array([o[0] for o in objects], int))


def perfect(dataset, shift=0.0):
    return [Detections(b + shift, np.full(len(c), 0.9), c) for b, c in zip(dataset.boxes, dataset.classes, strict=True)]


def test_a_yolo_set_is_read_in_pixels_with_its_names(yolo_set):
    dataset = load_detection_set(yolo_set, num_classes=3)
    assert dataset.layout == "yolo" and dataset.names == ("square", "tall", "small")
    assert [p.relative_to(yolo_set / "images").as_posix() for p in dataset.paths] == ["a.png", "b.jpg", "d.png",
                                                                                      "sub/c.png"]
    by_name = dict(zip([p.relative_to(yolo_set / "images").as_posix() for p in dataset.paths],
                       zip(dataset.boxes, dataset.classes, dataset.sizes, strict=True), strict=True))
    for name in OBJECTS:
        boxes, classes, size = by_name[name]
        np.testing.assert_allclose(boxes, truth(name)[0], atol=1e-9)
        assert list(classes) == list(truth(name)[1]) and size == OBJECTS[name][0]
    assert dataset.objects == 6


def test_a_coco_set_reads_the_same_and_scores_the_same(yolo_set, coco_set):
    yolo, coco = load_detection_set(yolo_set), load_detection_set(coco_set)
    assert coco.layout == "coco" and coco.names == ("square", "tall", "small")  # categories in id order
    order = [[p.name for p in s.paths] for s in (yolo, coco)]
    assert sorted(order[0]) == sorted(order[1])
    for name in ("a.png", "b.jpg", "c.png"):
        i, j = order[0].index(name), order[1].index(name)
        np.testing.assert_allclose(yolo.boxes[i], coco.boxes[j], atol=1e-9)
        assert list(yolo.classes[i]) == list(coco.classes[j])
    assert coco_map(coco, perfect(coco, 3.0)) == coco_map(yolo, perfect(yolo, 3.0))


def test_perfect_predictions_score_100_and_shifted_ones_less(yolo_set):
    dataset = read_yolo_set(yolo_set)
    assert coco_map(dataset, perfect(dataset)) == {"map50_95": 100.0, "map50": 100.0}
    shifted = coco_map(dataset, perfect(dataset, 3.0))
    assert 0 < shifted["map50_95"] < 100 and shifted["map50_95"] < shifted["map50"]
    far = coco_map(dataset, perfect(dataset, 30.0))
    assert far["map50_95"] < shifted["map50_95"]
    wrong_class = [Detections(d.boxes, d.scores, (d.classes + 1) % 3) for d in perfect(dataset)]
    assert coco_map(dataset, wrong_class) == {"map50_95": 0.0, "map50": 0.0}
    assert coco_map(dataset, [Detections.empty()] * len(dataset.paths)) == {"map50_95": 0.0, "map50": 0.0}


def test_the_letterbox_keeps_the_aspect_centres_and_pads_with_114(yolo_set):
    """a.png (80x60) into 64x64: 64x48 at rows 8..55; the red rectangle lands where the geometry says."""
    array, geometry = Letterbox().load_with_geometry(yolo_set / "images" / "a.png", 64, 64)
    assert array.shape == (3, 64, 64) and array.dtype == np.float32
    assert geometry == Geometry((80, 60), (0.8, 0.8), (0, 8))
    assert np.all(array[:, :8] == np.float32(114 / 255)) and np.all(array[:, 56:] == np.float32(114 / 255))
    x1, y1, x2, y2 = np.round(np.array([10, 10, 40, 30]) * 0.8 + [0, 8, 0, 8]).astype(int)  # class 0: red
    inside = array[:, y1 + 1:y2 - 1, x1 + 1:x2 - 1]
    np.testing.assert_allclose(inside.mean(axis=(1, 2)), np.array(COLOURS[0]) / 255, atol=0.02)
    boxes = np.array([[10.0, 10.0, 40.0, 30.0]])
    np.testing.assert_allclose(geometry.to_original(boxes * 0.8 + [0, 8, 0, 8]), boxes)
    # Enlarging: 50x90 into 128x128 -> 72x128 (the long side to the input's), left pad 28.
    array, geometry = Letterbox().load_with_geometry(yolo_set / "images" / "b.jpg", 128, 128)
    assert geometry.pad == (28, 0) and geometry.size == (50, 90) and array.shape == (3, 128, 128)
    assert np.all(array[:, :, :28] == np.float32(114 / 255)) and np.all(array[:, :, 100:] == np.float32(114 / 255))
    assert Letterbox().load_many([yolo_set / "images" / "a.png"] * 2, 32, 48).shape == (2, 3, 32, 48)


def yolo_output(boxes_xyxy, classes, scores, nc=3, anchors=20):
    """A Detect output [1, 4 + nc, anchors]: the given boxes first, the other anchors scoring nothing."""
    out = np.zeros((1, 4 + nc, anchors), np.float32)
    for i, (box, cls, score) in enumerate(zip(boxes_xyxy, classes, scores, strict=True)):
        x1, y1, x2, y2 = box
        out[0, :4, i] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
        out[0, 4 + cls, i] = score
    out[0, 4:, len(boxes_xyxy):] = 0.0005  # below the confidence threshold
    return out


def test_decoding_a_detect_output_suppresses_per_class():
    boxes = [[10, 10, 50, 50], [12, 12, 52, 52], [11, 11, 51, 51], [100, 100, 120, 130], [0, 0, 5, 5]]
    output = yolo_output(boxes, [0, 0, 1, 2, 2], [0.9, 0.8, 0.7, 0.6, 0.0009])
    (found,) = decode_yolo(output)
    # The second box overlaps the first (same class, IoU 0.82 > 0.7): dropped; the third is another class: kept.
    assert list(found.classes) == [0, 1, 2]
    np.testing.assert_allclose(found.scores, [0.9, 0.7, 0.6], rtol=1e-6)
    np.testing.assert_allclose(found.boxes, np.array(boxes)[[0, 2, 3]], atol=1e-4)
    (agnostic,) = decode_yolo(output, DecodeSettings(agnostic=True))
    assert list(agnostic.classes) == [0, 2]
    (few,) = decode_yolo(output, DecodeSettings(max_det=2))
    assert list(few.classes) == [0, 1]
    # Every class above the threshold is a candidate (Ultralytics val's multi-label), unless told otherwise.
    output[0, 5, 3] = 0.5
    assert sorted(decode_yolo(output)[0].classes.tolist()) == [0, 1, 1, 2]
    assert sorted(decode_yolo(output, DecodeSettings(multi_label=False))[0].classes.tolist()) == [0, 1, 2]


def test_nms_matches_a_brute_force_greedy_suppression():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (200, 2))], axis=1)
    scores = rng.uniform(0, 1, 200)
    kept = nms(boxes, scores, 0.5)
    expected = []
    for i in np.argsort(-scores):
        ious = [_iou(boxes[i], boxes[j]) for j in expected]
        if all(v <= 0.5 for v in ious):
            expected.append(i)
    assert kept.tolist() == expected


def _iou(a, b):
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_graphs_that_end_in_nms_are_read_as_rows():
    rows = np.zeros((1, 300, 6), np.float32)  # padded as end-to-end exports pad
    rows[0, 0] = [1, 2, 30, 40, 0.4, 2]
    rows[0, 1] = [5, 6, 20, 30, 0.8, 1]
    (found,) = decode_nms_output(rows)
    assert found.classes.tolist() == [1, 2] and found.scores.tolist() == pytest.approx([0.8, 0.4])
    (same,) = decode_detections(rows[0])  # [N, 6] taken too; the kind told by the shape
    assert same.classes.tolist() == [1, 2]
    assert decode_detections(yolo_output([[1, 1, 9, 9]], [0], [0.9], nc=2))[0].classes.tolist() == [0]  # [1, 6, 20]


def test_decode_then_map_back_gives_the_labels_mAP_100(yolo_set):
    """The whole path: letterboxed geometry, a Detect output in input pixels, decoded, mapped back, scored."""
    dataset = read_yolo_set(yolo_set)
    predictions = []
    for path, boxes, classes in zip(dataset.paths, dataset.boxes, dataset.classes, strict=True):
        _, geometry = Letterbox().load_with_geometry(path, 96, 96)
        scale, pad = np.array(geometry.scale * 2), np.array(geometry.pad * 2)
        (found,) = decode_yolo(yolo_output(boxes * scale + pad, classes, [0.9] * len(classes)))
        predictions.append(found.to_original(geometry))
    assert coco_map(dataset, predictions) == {"map50_95": 100.0, "map50": 100.0}


@pytest.mark.parametrize("change,message", [
    (lambda root: (root / "labels" / "e.txt").write_text("0 0.5 0.5 0.1 0.1\n"),
     r"labels/e.txt: no image for this label file \(looked for .*images/e\{\.jpg"),
    (lambda root: (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.2 0.2\n"),
     r"labels/a.txt:2: class 3, but the model has 3 classes \(0..2\)"),
    (lambda root: (root / "labels" / "a.txt").write_text("\n0 0.5 0.5 0.1\n"),
     r"labels/a.txt:2: expected 'class cx cy w h' \(a class index and 4 numbers\), found '0 0.5 0.5 0.1'"),
    (lambda root: (root / "labels" / "a.txt").write_text("0 x 0.5 0.1 0.1\n"), r"labels/a.txt:1: expected"),
    (lambda root: (root / "labels" / "a.txt").write_text("1.5 0.5 0.5 0.1 0.1\n"), r"a.txt:1: the class must be"),
    (lambda root: (root / "labels" / "a.txt").write_text("0 40 30 20 10\n"),
     r"a.txt:1: coordinates must be normalized to \[0, 1\] of the image \(80x60\), found 40 30 20 10"),
])
def test_bad_yolo_labels_are_one_line_naming_the_file(yolo_set, tmp_path, change, message):
    import shutil

    root = tmp_path / "set"
    shutil.copytree(yolo_set, root)
    change(root)
    with pytest.raises(InputError, match=message) as error:
        load_detection_set(root, num_classes=3)
    assert "\n" not in str(error.value)


def test_bad_coco_sets_are_one_line(coco_set, tmp_path):
    data = json.loads((coco_set / "annotations" / "val.json").read_text())
    data["annotations"][0]["image_id"] = 99
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match="annotation 1 points at image id 99, which is not in 'images'"):
        read_coco_set(bad, images=coco_set / "images")
    with pytest.raises(InputError, match="image 'a.png' not found beside the annotations"):
        read_coco_set(bad)
    with pytest.raises(InputError, match="3 categories, but the model has 2 classes"):
        load_detection_set(coco_set / "annotations" / "val.json", num_classes=2)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="broken.json: not a COCO detection json"):
        load_detection_set(tmp_path / "broken.json")
    with pytest.raises(InputError, match="not a detection set: expected images/ and labels/"):
        load_detection_set(tmp_path / "nothing" if (tmp_path / "nothing").mkdir() is None else tmp_path)


def test_ultralytics_metadata_is_read_without_evaluating_anything():
    meta = ultralytics_metadata({"task": "detect", "names": "{0: 'person', 1: 'bicycle'}", "imgsz": "[640, 480]",
                                 "stride": "32", "author": "x"})
    assert (meta.task, meta.names, meta.imgsz, meta.stride) == ("detect", ("person", "bicycle"), (640, 480), 32)
    odd = ultralytics_metadata({"names": "__import__('os').system('true')", "imgsz": "640"})
    assert odd.names is None and odd.imgsz == (640, 640) and odd.task is None
