"""VanillaNet as a detection backbone: detector checkpoints (mmdetection, prefixed state_dicts),
``--features`` multi-output builds on every target that runs here, and their one-line errors."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import NARROW, official_checkpoint, one_line_error, random_network
from vncompile.api.request import InputShape
from vncompile.ci.matrix import load_ci_config
from vncompile.onnxtools.run import run_onnx, seeded_inputs
from vncompile.vanillanet.archs import ModelSpec
from vncompile.vanillanet.features import feature_layout, parse_features, selection
from vncompile.vanillanet.zoo import create_model, init_random_weights

W = str(NARROW)
SHAPE = "1x3x96x160"  # non-square, both sides multiples of 32 (mmdetection's padding)
MMDET_CONFIG = ("model = dict(backbone=dict(type='Vanillanet', act_num=4, dims=[...], out_indices=[0, 1, 8, 10], "
                "strides=[1,2,2,1,1,1,1,1,1,2,1]), neck=dict(type='FPN'))")


def detection_backbone(seed: int = 3):
    """A narrow VanillaNet-13 backbone with act_num 4, as the official detection configs train it."""
    spec = ModelSpec("vanillanet_13", width=NARROW, act_num=4, num_classes=0)
    return init_random_weights(create_model(spec), seed=seed)


def official_detection_forward(net, x: torch.Tensor) -> list[torch.Tensor]:
    """Every stage's map as the official mmdetection backbone computes it: no leaky ReLU anywhere
    (object_detection/mmdet/models/backbones/vanillanet.py), written out here, not taken from vncompile."""
    def act(module, t):
        return module.bn(F.conv2d(F.relu(t), module.weight, padding=module.act_num, groups=module.dim))

    x = net.stem1(x)
    x = act(net.stem2[2], net.stem2[1](net.stem2[0](x)))
    outs = []
    for stage in net.stages:
        x = act(stage.act, stage.pool(stage.conv2(stage.conv1(x))))
        outs.append(x)
    return outs


class ForeignHook:
    """Any other object a checkpoint might pickle: never constructed on load."""


class FakeHistoryBuffer:
    """What mmengine's message_hub pickles: a logging object over numpy arrays."""

    def __init__(self) -> None:
        self._log_history = np.array([0.5, 0.25])
        self._count_history = np.array([1, 1])
        self.max_length = 1000000


def save_with_fake_mmengine(payload, path: Path) -> None:
    """torch.save with ``mmengine.logging.history_buffer.HistoryBuffer`` importable, then gone again:
    the loader must read the file without mmengine."""
    names = ("mmengine", "mmengine.logging", "mmengine.logging.history_buffer")
    modules = {name: types.ModuleType(name) for name in names}
    modules[names[-1]].HistoryBuffer = FakeHistoryBuffer
    FakeHistoryBuffer.__module__, FakeHistoryBuffer.__qualname__ = names[-1], "HistoryBuffer"
    try:
        sys.modules.update(modules)
        torch.save(payload, path)
    finally:
        for name in names:
            sys.modules.pop(name, None)


def mmdet_checkpoint(path: Path, net, *, meta_extra=None) -> Path:
    """The layout mmdetection (mmengine) saves: backbone/neck/head tensors, meta, message_hub, optimizer."""
    state_dict = {f"backbone.{k}": v for k, v in net.state_dict().items()}
    state_dict.update({"neck.lateral_convs.0.conv.weight": torch.zeros(8, 32, 1, 1),
                       "neck.fpn_convs.0.conv.weight": torch.zeros(8, 8, 3, 3),
                       "rpn_head.rpn_conv.weight": torch.zeros(8, 8, 3, 3),
                       "roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 16)})
    meta = {"cfg": MMDET_CONFIG, "epoch": 3, "iter": 300, "seed": 0, "experiment_name": "mask_rcnn_vanillanet_13",
            "mmengine_version": "0.10.4", "time": "20240101_000000",
            "dataset_meta": {"classes": ("person", "car"), "palette": [(220, 20, 60), (0, 0, 142)]},
            **(meta_extra or {})}
    payload = {"meta": meta, "state_dict": state_dict,
               "message_hub": {"log_scalars": {"train/loss": FakeHistoryBuffer()}, "runtime_info": {"epoch": 3}},
               "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 0.05}]}}
    save_with_fake_mmengine(payload, path)
    return path


def ultralytics_state_dict(path: Path, net) -> Path:
    """A YOLO model's state_dict whose layer 0 is the backbone (the blog's YOLO11-VanillaNet)."""
    state_dict = {f"model.0.{k}": v for k, v in net.state_dict().items()}
    state_dict.update({"model.9.cv1.conv.weight": torch.zeros(8, 8, 1, 1),
                       "model.23.dfl.conv.weight": torch.zeros(1, 16, 1, 1)})
    torch.save(state_dict, path)
    return path


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def assert_matches_float64(onnx_path: Path, net, shape: str, names: list[str], indices: list[int],
                           rel: float = 1e-4) -> None:
    """The ONNX's outputs, by name, against the float64 official forward, each on its own."""
    model = onnx.load(str(onnx_path))
    assert [o.name for o in model.graph.output] == names
    inputs = seeded_inputs(InputShape.parse(shape), 1, seed=7)
    outputs = run_onnx(onnx_path, inputs)[0]
    with torch.no_grad():
        maps = official_detection_forward(net.double(), torch.from_numpy(inputs[0]).double())
    assert len(outputs) == len(indices)
    for output, index in zip(outputs, indices, strict=True):
        expected = maps[index].numpy()
        assert output.shape == expected.shape
        assert np.abs(output - expected).max() <= rel * np.abs(expected).max()


# ---------------------------------------------------------------------------- the naming convention


def test_features_follow_the_official_out_indices():
    spec = ModelSpec("vanillanet_13")
    maps = selection(spec, parse_features("0,1,8,10"))
    # official Mask R-CNN config: out_indices=[0, 1, 8, 10] feed an FPN with in_channels [512, 1024, 2048, 4096]
    assert [(m.name, m.channels) for m in maps] == [("stage0_s4", 512), ("stage1_s8", 1024),
                                                    ("stage8_s16", 2048), ("stage10_s32", 4096)]
    assert [m.name for m in selection(spec, parse_features("stem,1"))] == ["stem_s4", "stage1_s8"]
    assert len(selection(spec, "all")) == 12
    resnet = feature_layout(ModelSpec("resnet50"))
    assert [(m.channels, m.stride) for m in resnet[1:]] == [(256, 4), (512, 8), (1024, 16), (2048, 32)]


# ---------------------------------------------------------------------------- detector checkpoints


def test_mmdetection_checkpoint_builds_the_configs_backbone(tmp_path, run_cli):
    net = detection_backbone()
    ckpt = mmdet_checkpoint(tmp_path / "mask_rcnn_vanillanet_13.pth", net)
    facts = run_cli("inspect", ckpt, "--json")
    assert facts.code == 0, facts.err
    described = facts.json()
    assert described["checkpoint"]["kind"] == "mmdetection" and described["act_num"] == 4
    assert described["checkpoint"]["detector"]["ignored_tensors"] == 4
    assert described["checkpoint"]["detector"]["ignored_groups"] == ["neck", "rpn_head", "roi_head"]
    assert described["act_learn"]["source"] == "detection backbone" and described["act_learn"]["fusable"]

    out = tmp_path / "bundle"
    result = run_cli("build", ckpt, "--target", "onnxruntime", "--input-shape", SHAPE, "-o", out)
    assert result.code == 0, result.err
    manifest = manifest_of(out)
    names = ["stage0_s4", "stage1_s8", "stage8_s16", "stage10_s32"]  # the config's out_indices, no flag needed
    assert manifest["model"]["features"] == "0,1,8,10" and manifest["model"]["form"] == "deploy"
    assert manifest["outputs"] == [
        {"name": "stage0_s4", "shape": [1, 32, 24, 40], "channels": 32, "stride": 4},
        {"name": "stage1_s8", "shape": [1, 64, 12, 20], "channels": 64, "stride": 8},
        {"name": "stage8_s16", "shape": [1, 128, 6, 10], "channels": 128, "stride": 16},
        {"name": "stage10_s32", "shape": [1, 256, 3, 5], "channels": 256, "stride": 32},
    ]
    assert manifest["verification"]["passed"]
    for stage in manifest["verification"]["stages"]:
        assert [o["name"] for o in stage["outputs"]] == names and all(o["passed"] for o in stage["outputs"])
    assert_matches_float64(out / "model.onnx", net, SHAPE, names, [0, 1, 8, 10])


def test_ultralytics_prefixed_state_dict_builds_every_map_on_openvino(tmp_path, run_cli):
    net = detection_backbone(seed=5)
    ckpt = ultralytics_state_dict(tmp_path / "yolo11-vanillanet.pt", net)
    facts = run_cli("inspect", ckpt, "--json").json()
    assert facts["checkpoint"]["detector"]["prefix"] == "model.0."
    assert facts["checkpoint"]["detector"]["ignored_groups"] == ["model.9", "model.23"]
    out = tmp_path / "bundle"
    result = run_cli("build", ckpt, "--features", "stem,0,1,8,10", "--target", "openvino", "--input-shape", SHAPE,
                     "-o", out)
    assert result.code == 0, result.err
    manifest = manifest_of(out)
    names = ["stem_s4", "stage0_s4", "stage1_s8", "stage8_s16", "stage10_s32"]
    assert [o["name"] for o in manifest["outputs"]] == names
    final = manifest["verification"]["stages"][-1]
    assert final["stage"].startswith("openvino") and [o["name"] for o in final["outputs"]] == names
    assert manifest["verification"]["passed"]
    # the stem's map is before any stage: check it against the official forward's stem directly
    model = onnx.load(str(out / "model.onnx"))
    assert [o.name for o in model.graph.output] == names
    inputs = seeded_inputs(InputShape.parse(SHAPE), 1, seed=7)
    outputs = run_onnx(out / "model.onnx", inputs)[0]
    with torch.no_grad():
        x = torch.from_numpy(inputs[0]).double()
        double = net.double()
        stem = double.stem2(double.stem1(x))
        maps = [stem, *official_detection_forward(double, x)]
    for output, expected in zip(outputs, [maps[i] for i in (0, 1, 2, 9, 11)], strict=True):
        assert np.abs(output - expected.numpy()).max() <= 1e-4 * np.abs(expected.numpy()).max()


def test_explicit_prefix_and_a_classifier_checkpoint_as_backbone(tmp_path, run_cli):
    net = random_network("vanillanet_5")
    ckpt = tmp_path / "wrapped.pt"
    torch.save({"detector.trunk." + k: v for k, v in net.state_dict().items()}, ckpt)
    wrong = run_cli("inspect", ckpt, "--prefix", "detector.body.")
    assert wrong.code == 2 and "no backbone under --prefix 'detector.body.'" in one_line_error(wrong)
    found = run_cli("inspect", ckpt, "--prefix", "detector.trunk.", "--features", "1,2", "--json")
    assert found.code == 0, found.err
    assert [o["name"] for o in found.json()["outputs"]] == ["stage1_s16", "stage2_s32"]
    # a classifier's checkpoint with --features: the head is dropped, the maps verified
    classifier = official_checkpoint(tmp_path / "vanillanet_5.pth", net)
    out = tmp_path / "bundle"
    result = run_cli("build", classifier, "--features", "0,1,2", "--target", "analytic", "--input-shape", "1x3x64x96",
                     "-o", out)
    assert result.code == 0, result.err
    manifest = manifest_of(out)
    assert manifest["model"]["num_classes"] == 1000 and manifest["model"]["features"] == "0,1,2"
    assert [o["name"] for o in manifest["outputs"]] == ["stage0_s8", "stage1_s16", "stage2_s32"]
    assert manifest["verification"]["passed"]
    # the analytic plan names what is alive at its peak, the backbone's outputs among the candidates
    plan = json.loads((out / "memory_plan.json").read_text())
    assert plan["live_at_peak"] and "peak at" in manifest["memory"]["detail"]


# ---------------------------------------------------------------------------- the other targets


def test_tensorrt_deferred_bundle_names_every_output(tmp_path, run_cli, monkeypatch):
    from tests.fake_tensorrt import TRT10, install

    install(monkeypatch, TRT10, gpus=())  # TensorRT without a GPU: the deferred bundle, wherever this runs
    out = tmp_path / "bundle"
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, "--features", "all", "--target", "tensorrt",
                     "--precision", "fp16", "--input-shape", SHAPE, "-o", out)
    assert result.code == 0, result.err
    manifest = manifest_of(out)
    names = ["stem_s4", "stage0_s8", "stage1_s16", "stage2_s32"]
    assert manifest["status"] == "deferred" and manifest["target"]["facts"]["outputs"] == names
    assert f"# outputs (the engine's output bindings, as the ONNX names them): {', '.join(names)}." in (
        out / "build_engine.sh").read_text()
    assert [o.name for o in onnx.load(str(out / "model.onnx")).graph.output] == names
    assert manifest["verification"]["passed"]


def test_rknn_verifies_every_output_on_the_simulator(tmp_path, run_cli, rknn_toolchain):
    out = tmp_path / "bundle"
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, "--features", "stem,0,2", "--target", "rknn",
                     "--input-shape", "1x3x64x96", "-o", out)
    assert result.code == 0, result.err
    manifest = manifest_of(out)
    final = manifest["verification"]["stages"][-1]
    assert final["stage"] == "rknn simulator" and final["passed"]
    assert [o["name"] for o in final["outputs"]] == ["stem_s4", "stage0_s8", "stage2_s32"]
    assert all(o["passed"] for o in final["outputs"])


def test_profile_compares_backbones_with_resnet50_c2_c5(tmp_path, run_cli):
    result = run_cli("profile", "--models", "vanillanet_5,resnet50", "--width", W, "--features", "all",
                     "--targets", "analytic", "--sizes", "64", "--format", "markdown")
    assert result.code == 0, result.err
    assert "| vanillanet_5-w0.0625[all] |" in result.out and "| resnet50-w0.0625[all] |" in result.out
    assert "vanillanet_5-w0.0625[all] vs resnet50-w0.0625[all]" in result.out
    assert "## At the memory peak" in result.out and "live" in result.out


def test_ci_matrix_models_take_features(tmp_path):
    (tmp_path / "devices").mkdir()
    (tmp_path / "devices" / "cpu.yaml").write_text("target: onnxruntime\nprecision: fp32\nsizes: [640]\n"
                                                   "runner: ubuntu-latest\n")
    (tmp_path / "ci.yaml").write_text("models:\n  - vanillanet_13\n  - {name: vanillanet_13, features: [0, 1, 8, 10]}\n"
                                      "devices: [cpu]\n")
    cells = load_ci_config(tmp_path / "ci.yaml").cells
    assert sorted(c.id for c in cells) == ["vanillanet_13-features0_1_8_10/cpu/640", "vanillanet_13/cpu/640"]
    assert {c.model.source.features for c in cells} == {None, "0,1,8,10"}


# ---------------------------------------------------------------------------- one-line errors


@pytest.mark.parametrize("args,message", [
    (("--features", "11"), "vanillanet_13-w0.0625-a4 has stages 0-10"),
    (("--features", "0,x"), "--features takes 'all', 'stem' and/or 0-based stage indices"),
    (("--input-shape", "1x3x800x1340"), "multiples of 32, got 800x1340"),
])
def test_bad_features_and_sizes_are_one_line(tmp_path, run_cli, args, message):
    ckpt = mmdet_checkpoint(tmp_path / "det.pth", detection_backbone())
    result = run_cli("build", ckpt, "--target", "onnxruntime", *args, "-o", tmp_path / "out")
    assert result.code == 2 and message in one_line_error(result)
    assert not (tmp_path / "out").exists()


def test_checkpoints_without_a_backbone_or_with_foreign_objects_are_refused(tmp_path, run_cli):
    heads = tmp_path / "heads.pt"
    torch.save({"neck.conv.weight": torch.zeros(2, 2, 1, 1), "bbox_head.cls.weight": torch.zeros(2, 2)}, heads)
    result = run_cli("build", heads, "--features", "0", "--target", "onnxruntime", "-o", tmp_path / "out")
    assert result.code == 2 and "nor a detector with one inside" in one_line_error(result)

    unsafe = mmdet_checkpoint(tmp_path / "unsafe.pth", detection_backbone(), meta_extra={"hook": ForeignHook()})
    result = run_cli("inspect", unsafe)
    assert result.code == 2
    assert "refusing to load: it pickles tests.test_detection.ForeignHook" in one_line_error(result)
