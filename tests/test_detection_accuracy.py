"""A detector's mAP on the user's images, per stage: the committed test detector (``tests/data/detector``) run by
ONNX Runtime on its letterboxed validation set, decoded from its concatenated Detect output, from the same head
split into boxes and scores, and from NMS rows; the --max-map-drop check; int8 calibration through the letterbox;
and the one-line refusals of bad sets and settings."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from rich.console import Console

from tests.conftest import one_line_error
from vncompile.api.options import TargetOptions
from vncompile.api.request import InputShape
from vncompile.console import render_verification
from vncompile.core.errors import InputError, VerificationError
from vncompile.data.calibration import calibration_set, with_data_hashes
from vncompile.data.detection import DecodeSettings
from vncompile.data.evaluation import load_eval_set
from vncompile.onnxtools.detect_head import split_detect_head
from vncompile.onnxtools.run import run_onnx
from vncompile.pipeline.detection_accuracy import (
    check_map_drop,
    decode_settings_of,
    detection_section,
    detections,
    load_detection_eval,
    map_of,
)

DETECTOR = Path(__file__).parent / "data" / "detector"
VAL = DETECTOR / "val"
SHAPE = InputShape(1, 3, 128, 128)
CLASSES = 3
GREY = np.float32(114 / 255)


@pytest.fixture(scope="module")
def evaluation():
    return load_detection_eval(TargetOptions(eval_data=VAL, preprocess="letterbox"), SHAPE, CLASSES)


@pytest.fixture(scope="module")
def concatenated(evaluation):
    """The exported detector's run over the set: one output [1, 4 + 3, 336] per batch."""
    return run_onnx(DETECTOR / "detector_train_form.onnx", np.stack(evaluation.batches(SHAPE.batch)))


def test_the_test_detectors_map_on_its_letterboxed_set(evaluation, concatenated):
    assert evaluation.inputs.shape == (48, 3, 128, 128) and len(evaluation.geometries) == 48
    assert (evaluation.settings.conf, evaluation.settings.iou, evaluation.settings.max_det) == (0.001, 0.7, 300)
    found = map_of(evaluation, concatenated, ["output"])
    assert 50 <= found["map50"] <= 100 and 20 <= found["map50_95"] < found["map50"]  # it learned the shapes


def test_the_split_head_and_nms_rows_give_the_same_map(tmp_path, evaluation, concatenated):
    """What an int8 NPU build returns (boxes and scores apart, in either order) and a graph ending in NMS decode to
    the concatenated output's detections, so every stage is scored alike."""
    model = onnx.load(str(DETECTOR / "detector_train_form.onnx"))
    names = split_detect_head(model)
    onnx.save(model, str(tmp_path / "split.onnx"))
    split = run_onnx(tmp_path / "split.onnx", np.stack(evaluation.batches(SHAPE.batch)))
    assert [o.shape for o in split[0]] == [(1, 4, 336), (1, CLASSES, 336)]
    expected = map_of(evaluation, concatenated, ["output"])
    assert map_of(evaluation, split, list(names)) == expected
    assert map_of(evaluation, [outputs[::-1] for outputs in split], list(names[::-1])) == expected
    rows = []
    for (output,) in concatenated:
        (found,) = detections([output], ["output"], evaluation.settings)
        padded = np.zeros((1, 300, 6), np.float32)  # an NMS graph's fixed-size output, unused rows all zero
        padded[0, :len(found.scores)] = np.column_stack([found.boxes, found.scores, found.classes])
        rows.append([padded])
    assert map_of(evaluation, rows, ["detections"]) == pytest.approx(expected, abs=1e-6)


def test_the_section_and_a_drop_past_max_map_drop(evaluation, concatenated):
    # The boxes shifted by 3 pixels: what a target that loses localization precision returns.
    shifted = [[np.concatenate([o[:, :2] + 3, o[:, 2:]], axis=1)] for (o,) in concatenated]
    section = detection_section(evaluation, {"reference": concatenated, "onnx simplified": concatenated},
                                ["output"])
    assert {k: section[k] for k in ("images", "objects", "classes", "layout")} == {
        "images": 48, "objects": sum(len(c) for c in evaluation.dataset.classes), "classes": 3, "layout": "yolo"}
    assert section["preprocessing"]["kind"] == "letterbox" and section["decode"]["iou"] == 0.7
    assert section["onnx simplified"] == section["reference"]
    section["target"] = map_of(evaluation, shifted, ["output"])
    drop = section["reference"]["map50_95"] - section["target"]["map50_95"]
    assert drop > 1
    assert check_map_drop(section, "onnx simplified", 1.0, "onnxruntime fp32") == 0
    assert check_map_drop(section, "target", drop + 0.01, "rknn int8") == pytest.approx(drop)
    with pytest.raises(VerificationError) as failed:
        check_map_drop(section, "target", 1.0, "rknn int8", VAL)
    line = str(failed.value)
    assert "\n" not in line and line.startswith(f"rknn int8 mAP50-95 on 48 images of {VAL} is ")
    assert line.endswith("(allowed: --max-map-drop 1)")


def test_the_console_shows_map_per_stage(evaluation, concatenated):
    section = detection_section(evaluation, {"reference": concatenated}, ["output"])
    section["onnx exported"] = section["reference"]
    verification = {"tolerance": {}, "stages": [{"stage": "onnx exported", "precision": "fp32", "outputs": [
        {"name": "output", "max_abs": 0.0, "rel": 0.0, "cosine": 1.0, "top1_agreement": None, "passed": True}]}]}
    console = Console(record=True, width=200)
    render_verification(verification, section, console)
    text = console.export_text()
    assert "mAP50-95" in text and f"{section['reference']['map50_95']:.2f}%" in text and "top-1 images" not in text


def test_calibration_goes_through_the_letterbox(evaluation):
    """An int8 detector calibrates on images as its mAP is measured: a YOLO set as the calibration folder (its
    images/ found), letterboxed: grey 114 at the borders of a non-square image, [0, 1], no mean or std."""
    options = TargetOptions(calibration=VAL, calibration_size=6, preprocess="letterbox")
    samples = calibration_set(options, SHAPE)
    assert samples.shape == (6, 3, 128, 128) and samples.min() >= 0 and samples.max() <= 1
    for sample in samples:  # every image of the set is non-square: padded at its sides, or above and below it
        borders = (sample[:, :, 0], sample[:, :, -1], sample[:, 0, :], sample[:, -1, :])
        assert any(np.all(border == GREY) for border in borders)
    assert all(any(np.array_equal(sample, x) for x in evaluation.inputs) for sample in samples)  # as evaluated
    center_cropped = calibration_set(dataclasses.replace(options, preprocess=None), SHAPE)
    assert center_cropped.min() < 0  # ImageNet's mean and std, as before


def test_a_detection_set_has_a_content_hash(tmp_path):
    root = tmp_path / "val"
    shutil.copytree(VAL, root)
    first = with_data_hashes(TargetOptions(eval_data=root)).eval_sha256
    label = root / "labels" / "0000.txt"
    label.write_text(label.read_text() + "0 0.5 0.5 0.1 0.1\n")
    assert first and with_data_hashes(TargetOptions(eval_data=root)).eval_sha256 not in (None, first)


def _small_set(tmp_path: Path, labels: dict[str, str]) -> Path:
    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in ("0000.jpg", "0001.jpg"):
        shutil.copy(VAL / "images" / name, root / "images" / name)
    for name, text in labels.items():
        (root / "labels" / name).write_text(text)
    return root


@pytest.mark.parametrize("labels, expected", [
    ({"0000.txt": "0 0.5 0.5 0.2 0.2\n", "0002.txt": "1 0.5 0.5 0.2 0.2\n"},
     r"0002.txt: no image for this label file \(looked for .*images/0002"),
    ({"0000.txt": "3 0.5 0.5 0.2 0.2\n"}, r"0000.txt:1: class 3, but the model has 3 classes \(0..2\)"),
    ({"0000.txt": "\n"}, r"no labelled objects in 2 images; mAP needs some"),
])
def test_bad_detection_sets_are_one_line(tmp_path, labels, expected):
    root = _small_set(tmp_path, labels)
    with pytest.raises(InputError, match=expected) as refused:
        load_detection_eval(TargetOptions(eval_data=root), SHAPE, CLASSES)
    assert "\n" not in str(refused.value)


def test_sets_of_the_other_kind_are_refused_in_one_line(tmp_path):
    classes = tmp_path / "imagefolder"
    (classes / "cat").mkdir(parents=True)
    shutil.copy(VAL / "images" / "0000.jpg", classes / "cat" / "a.jpg")
    with pytest.raises(InputError, match=r"not a detection set: .* \(found class folders: labels for a classifier"):
        load_detection_eval(TargetOptions(eval_data=classes), SHAPE, CLASSES)
    with pytest.raises(InputError, match="a detection set .* but this network's accuracy is top-1"):
        load_eval_set(TargetOptions(eval_data=VAL), SHAPE)


def test_preprocessing_that_makes_no_sense_is_refused(run_cli):
    with pytest.raises(InputError, match="^--mean and --crop-pct: center-crop settings, but the preprocessing is "
                                         "letterbox .* choose --preprocess center-crop$"):
        TargetOptions(mean=(0.5, 0.5, 0.5), crop_pct=1.0).with_default_preprocess("letterbox")
    with pytest.raises(InputError, match="a detector's mAP is measured on letterboxed images"):
        load_detection_eval(TargetOptions(eval_data=VAL, preprocess="center-crop"), SHAPE, CLASSES)
    result = run_cli("build", "--model", "vanillanet_5", "--target", "onnxruntime", "--preprocess", "letterbox",
                     "--std", "0.5,0.5,0.5")
    assert result.code != 0 and "--std: center-crop settings" in one_line_error(result)
    with pytest.raises(InputError, match=r"cannot read detections from the outputs a \[1, 5, 10\], b \[1, 7\]"):
        detections([np.zeros((1, 5, 10)), np.zeros((1, 7))], ["a", "b"])


def test_decoding_settings_come_from_the_options(run_cli):
    options = TargetOptions(conf=0.25, iou=0.5, max_det=100)
    assert decode_settings_of(options).as_dict() == {**DecodeSettings().as_dict(), "conf": 0.25, "iou": 0.5,
                                                     "max_det": 100}
    for value, message in (("1", "--conf must be below 1, got 1"), ("nan", "'--conf': must be a number in [0, 1)")):
        result = run_cli("build", "--model", "vanillanet_5", "--target", "analytic", "--conf", value)
        assert result.code == 2 and message in one_line_error(result), result.err
