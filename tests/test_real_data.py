"""Real data: accuracy of every compiled artifact on labelled images, int8 calibrated on real images,
and the layer that breaks when int8 fails.

The data is real: scikit-learn's handwritten digits (UCI scans), upscaled to RGB PNGs in ImageFolder
layout, and a narrow VanillaNet-5 trained on them with the deep-training schedule run to completion
(tests/data/make_digits.py regenerates both). Held-out images were never trained on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import one_line_error
from vncompile.api.options import TargetOptions
from vncompile.api.request import InputShape
from vncompile.core.host import cpu_features
from vncompile.data.calibration import calibration_samples, sample
from vncompile.data.images import find_images, labelled_images
from vncompile.data.preprocess import Preprocessing

DIGITS = Path(__file__).parent / "data" / "digits"
CHECKPOINT, HELDOUT, CALIBRATION = DIGITS / "vanillanet5_digits.pth", DIGITS / "heldout", DIGITS / "calibration"


def build(run_cli, out: Path, *args: str):
    result = run_cli("build", CHECKPOINT, "--size", "64", "-o", out, *args)
    manifest = json.loads((out / "manifest.json").read_text()) if result.code == 0 else None
    return result, manifest


# ---------------------------------------------------------------------------- the data layer


def test_imagefolder_classes_are_sorted_folders():
    images = labelled_images(HELDOUT)
    assert images.layout == "imagefolder" and images.classes == tuple(str(d) for d in range(10))
    assert len(images.paths) == 300 and np.bincount(images.labels).tolist() == [30] * 10
    assert all(int(p.parent.name) == label for p, label in zip(images.paths, images.labels, strict=True))


def test_flat_folder_with_a_labels_file(tmp_path):
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(tmp_path / name)
    (tmp_path / "labels.txt").write_text("file label\na.png 2\nb.png 0\n\nc.png 1\n")
    images = labelled_images(tmp_path)
    assert [p.name for p in images.paths] == ["a.png", "b.png", "c.png"] and images.labels == (2, 0, 1)
    (tmp_path / "labels.txt").write_text("file label\na.png two\n")
    with pytest.raises(Exception, match=r"labels.txt:2: expected '<file> <class index>'"):
        labelled_images(tmp_path)


def test_calibration_reads_any_layout_recursively_and_samples_reproducibly():
    files = find_images(CALIBRATION)  # ImageFolder: class folders below
    assert len(files) == 200
    chosen = sample(files, 50)
    assert chosen == sample(files, 50) and len(set(chosen)) == 50
    samples = calibration_samples(CALIBRATION, InputShape(1, 3, 64, 64), 50)
    assert samples.shape == (50, 3, 64, 64) and samples.dtype == np.float32


def test_preprocessing_is_the_imagenet_evaluation_transform(tmp_path):
    """Shorter side to int(size / 0.875), center crop, [0, 1], mean/std: a 100x50 image at size 64."""
    image = np.zeros((50, 100, 3), np.uint8)
    image[:, 50:] = 255  # right half white
    Image.fromarray(image).save(tmp_path / "x.png")
    array = Preprocessing().load(tmp_path / "x.png", 64, 64)
    assert array.shape == (3, 64, 64)
    # resized to 146x73, cropped to its middle 64 columns: left black, right white, split in the middle
    assert array[0, 32, 0] == pytest.approx((0 - 0.485) / 0.229, abs=1e-5)
    assert array[0, 32, 63] == pytest.approx((1 - 0.485) / 0.229, abs=1e-5)
    custom = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=1.0).load(tmp_path / "x.png", 64, 64)
    assert custom.min() == pytest.approx(-1) and custom.max() == pytest.approx(1)


def test_options_record_the_preprocessing_the_user_set():
    options = TargetOptions(mean=(0.5, 0.5, 0.5), crop_pct=1.0)
    assert options.preprocessing() == {"mean": (0.5, 0.5, 0.5), "crop_pct": 1.0}


# ---------------------------------------------------------------------------- builds on real images


def test_fp32_build_reports_top1_of_every_stage(tmp_path, run_cli):
    result, manifest = build(run_cli, tmp_path / "b", "--target", "onnxruntime", "--eval-data", HELDOUT)
    assert result.code == 0, result.err
    accuracy = manifest["accuracy"]
    assert accuracy["images"] == 300 and accuracy["reference"]["top1"] >= 98.0
    stages = ["torch fused", "onnx exported", "onnx simplified", "target"]
    assert [s for s in accuracy if s in stages] == stages
    assert all(accuracy[s]["agreement"] == 100.0 for s in stages)
    # real images join the numerical comparison: the reference has noise and image batches
    assert all(s["passed"] for s in manifest["verification"]["stages"])


@pytest.mark.parametrize("target", ["onnxruntime", "openvino", "rknn"])
def test_int8_with_real_calibration_keeps_top1_within_a_point(tmp_path, run_cli, target, request):
    if target == "rknn":
        request.getfixturevalue("rknn_toolchain")
    result, manifest = build(run_cli, tmp_path / "b", "--target", target, "--precision", "int8", "--calibration",
                             CALIBRATION, "--calibration-size", "100", "--eval-data", HELDOUT)
    assert result.code == 0, result.err
    accuracy = manifest["accuracy"]
    assert accuracy["reference"]["top1"] - accuracy["target"]["top1"] <= 1.0
    assert manifest["verification"]["passed"]
    assert manifest["verification"]["host"]["cpu_features"] == cpu_features()  # what it was verified on
    if target != "rknn":  # the Q/DQ graph's report (rknn quantizes in its own compiler)
        assert {a["role"] for a in manifest["artifacts"]} >= {"int8-layers"}
        # 7-bit weights: no 16-bit saturation on x86 CPUs without VNNI (api.target.Target.int8_weight_bits)
        assert "per-channel 7-bit weights" in manifest["model"]["int8_scheme"]


AVX2_ONLY = ["qemu-x86_64", "-cpu", "Haswell"]  # Debian's qemu-user: an x86-64 CPU without AVX-512, VNNI or bf16


@pytest.mark.skipif(shutil.which(AVX2_ONLY[0]) is None, reason="needs qemu-user (apt-get install qemu-user)")
def test_the_int8_artifact_computes_the_same_on_a_cpu_without_vnni(tmp_path, run_cli):
    """The onnxruntime int8 bundle, run natively and on an emulated AVX2-only CPU: the same outputs (with 8-bit
    weights the saturating kernels there moved the cosine from 0.998 to 0.989)."""
    result, _ = build(run_cli, tmp_path / "b", "--target", "onnxruntime", "--precision", "int8", "--calibration",
                      CALIBRATION, "--calibration-size", "100", "--no-verify")
    assert result.code == 0, result.err
    images = labelled_images(HELDOUT)
    np.save(tmp_path / "x.npy", Preprocessing().load_many(list(images.paths[::6]), 64, 64))
    script = ("import sys, numpy as np, onnxruntime as ort\n"
              "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
              "x = np.load(sys.argv[2])\n"
              "np.save(sys.argv[3], np.concatenate([s.run(None, {'input': x[i:i + 1]})[0] for i in range(len(x))]))\n")
    args = [sys.executable, "-c", script, tmp_path / "b" / "model.optimized.onnx", tmp_path / "x.npy"]
    subprocess.run([*map(str, args), tmp_path / "native.npy"], check=True)
    subprocess.run([*AVX2_ONLY, *map(str, args), tmp_path / "avx2.npy"], check=True, capture_output=True)
    native, avx2 = np.load(tmp_path / "native.npy"), np.load(tmp_path / "avx2.npy")
    cosine = float(np.sum(native * avx2) / np.linalg.norm(native) / np.linalg.norm(avx2))
    assert cosine > 0.9999 and (native.argmax(1) == avx2.argmax(1)).all()


def test_int8_of_a_checkpoint_without_calibration_is_refused(tmp_path, run_cli):
    result, _ = build(run_cli, tmp_path / "b", "--target", "onnxruntime", "--precision", "int8")
    assert result.code == 2
    line = one_line_error(result)
    assert "needs real calibration images" in line and "--calibration synthetic" in line
    assert not (tmp_path / "b").exists()
    # the analytic planner quantizes nothing (int8 is an element size to it): no images asked for
    planned, manifest = build(run_cli, tmp_path / "plan", "--target", "analytic", "--precision", "int8")
    assert planned.code == 0, planned.err
    assert manifest["memory"]["source"] == "estimated"


def test_a_broken_int8_is_caught_and_the_layers_named(tmp_path, run_cli):
    """Calibrated on blank images, int8 clips every real activation: the build fails on the images, and the
    error names the layers that broke first."""
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(8):
        Image.new("RGB", (32, 32)).save(blank / f"{i}.png")
    result, _ = build(run_cli, tmp_path / "b", "--target", "onnxruntime", "--precision", "int8", "--calibration",
                      blank, "--eval-data", HELDOUT)
    assert result.code == 1
    line = one_line_error(result)
    assert "int8 breaks first at node_conv2d" in line and "try --keep-fp32 node_conv2d" in line
    assert not (tmp_path / "b").exists()


def test_keep_fp32_leaves_the_named_layers_unquantized(tmp_path, run_cli):
    result, manifest = build(run_cli, tmp_path / "b", "--target", "onnxruntime", "--precision", "int8",
                             "--calibration", CALIBRATION, "--calibration-size", "50", "--keep-fp32", "auto",
                             "--eval-data", HELDOUT)
    assert result.code == 0, result.err
    rows = (tmp_path / "b" / "layers.csv").read_text().splitlines()[1:]
    quantized = [row.split(",")[-1] for row in rows]
    assert quantized[0] == quantized[-1] == "False" and "True" in quantized[1:-1]  # stem and classifier kept
    bad, _ = build(run_cli, tmp_path / "c", "--target", "onnxruntime", "--precision", "int8", "--calibration",
                   CALIBRATION, "--keep-fp32", "no_such_layer")
    assert bad.code == 2 and "--keep-fp32: no conv layer named 'no_such_layer'" in one_line_error(bad)


def test_eval_data_errors_are_one_line(tmp_path, run_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    result, _ = build(run_cli, tmp_path / "b", "--target", "onnxruntime", "--eval-data", empty)
    assert result.code == 2 and "not an evaluation set" in one_line_error(result)
    eleven = tmp_path / "eleven"  # eleven class folders for a ten-class network
    for label in range(11):
        (eleven / f"c{label:02d}").mkdir(parents=True)
        shutil.copy(next((HELDOUT / "0").iterdir()), eleven / f"c{label:02d}")
    wrong, _ = build(run_cli, tmp_path / "c", "--target", "onnxruntime", "--eval-data", eleven)
    assert wrong.code == 2 and "labels go up to 10 but the network has 10 classes" in one_line_error(wrong)


def test_an_empty_class_folder_is_refused_not_skipped(tmp_path):
    shutil.copytree(HELDOUT / "0", tmp_path / "a")
    (tmp_path / "b").mkdir()  # skipping it would make the next class 1 instead of 2
    shutil.copytree(HELDOUT / "1", tmp_path / "c")
    with pytest.raises(Exception, match="a class folder without images"):
        labelled_images(tmp_path)


def test_int8_calibrates_and_reports_layers_in_the_graphs_batch(tmp_path, run_cli):
    result = run_cli("build", "--model", "vanillanet_5", "--width", "0.0625", "--target", "onnxruntime", "--size",
                     "64", "--batch", "2", "--precision", "int8", "-o", tmp_path / "b")
    assert result.code == 0, result.err
    assert (tmp_path / "b" / "layers.csv").is_file()
