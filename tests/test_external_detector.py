"""The building blocks of external detector graphs together, on the committed test detector
(``tests/data/detector``, made by ``tests/data/make_detector.py``: VanillaNet-5 in training form with a neck
and an anchor-free head, exported by torch as Ultralytics' exporter leaves such graphs, and its synthetic
validation set): its metadata, exact deploy fusion (mAP unchanged), its float64 rebuild, its mAP, its head split
into box and score outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from vncompile.data.detection import Letterbox, coco_map, decode_yolo, read_yolo_set, ultralytics_metadata
from vncompile.onnxtools.deploy_fusion import fuse_for_deploy
from vncompile.onnxtools.detect_head import join_detect_head, split_detect_head
from vncompile.toolchains.workers.onnx_as_torch import OnnxAsTorch

DETECTOR = Path(__file__).parent / "data" / "detector"


@pytest.fixture(scope="module")
def detector():
    model = onnx.load(str(DETECTOR / "detector_train_form.onnx"))
    meta = ultralytics_metadata({p.key: p.value for p in model.metadata_props})
    dataset = read_yolo_set(DETECTOR / "val", num_classes=len(meta.names))
    loaded = [Letterbox().load_with_geometry(p, *meta.imgsz) for p in dataset.paths]
    return model, meta, dataset, loaded


def run(model, inputs):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[None]})[0] for x in inputs])


def test_its_metadata_is_ultralytics_style(detector):
    _, meta, dataset, _ = detector
    assert (meta.task, meta.names, meta.imgsz, meta.stride) == ("detect", ("rectangle", "ellipse", "triangle"),
                                                                (128, 128), 32)
    assert dataset.names == meta.names and len(dataset.paths) == 48


def test_deploy_fusion_is_exact_and_keeps_the_map(detector):
    model, meta, dataset, loaded = detector
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    report = fuse_for_deploy(fused)
    # The stem and 3 stages: each block's two 1x1 convs merged, its LeakyRelu(1.0) dropped; nothing else.
    assert (report.blocks_found, report.blocks_fused, report.convs_before - report.convs_after) == (4, 4, 4)
    assert report.counts == {"fold-batchnorm": 0, "drop-identity-leaky-relu": 4, "merge-pointwise-convs": 4}
    inputs = np.stack([array for array, _ in loaded])
    outputs = {name: run(graph, inputs) for name, graph in (("exported", model), ("fused", fused))}
    assert outputs["exported"].shape == (48, 4 + len(meta.names), 16 * 16 + 8 * 8 + 4 * 4)
    scale = np.abs(outputs["exported"]).max()
    assert np.abs(outputs["fused"] - outputs["exported"]).max() / scale <= 1e-5
    maps = {}
    for name, output in outputs.items():
        found = [decode_yolo(o[None])[0].to_original(g) for o, (_, g) in zip(output, loaded, strict=True)]
        maps[name] = coco_map(dataset, found)
    assert maps["exported"]["map50"] >= 50  # it learned to find the shapes
    assert abs(maps["fused"]["map50_95"] - maps["exported"]["map50_95"]) <= 0.1


def test_the_float64_rebuild_is_the_graphs_function(detector):
    model, _, _, loaded = detector
    inputs = np.stack([array for array, _ in loaded[:2]])
    rebuilt = OnnxAsTorch(model, dtype=torch.float64)
    with torch.no_grad():
        reference = np.concatenate([rebuilt(torch.from_numpy(x[None])).numpy() for x in inputs])
    assert reference.dtype == np.float64
    assert np.abs(run(model, inputs) - reference).max() / np.abs(reference).max() <= 1e-5


def test_the_detect_head_splits_into_boxes_and_scores(detector):
    """For int8 NPUs: the concatenated Detect output becomes two outputs; joined again, the same values."""
    model, meta, _, loaded = detector
    split = onnx.ModelProto()
    split.CopyFrom(model)
    names = split_detect_head(split)
    onnx.checker.check_model(split, full_check=True)
    assert names is not None and [o.name for o in split.graph.output] == list(names)
    session = ort.InferenceSession(split.SerializeToString(), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(None, {"input": loaded[0][0][None]})
    assert boxes.shape == (1, 4, 336) and scores.shape == (1, len(meta.names), 336)
    np.testing.assert_array_equal(join_detect_head(boxes, scores), run(model, loaded[0][0][None]))
    assert split_detect_head(split) is None  # nothing left to split
