"""ONNX files from any exporter as the model: build, inspect, profile and ci take them; the given graph is the
reference; exact deploy fusion by default; fixed-size graphs build at their own size; bad files are one line."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from tests.conftest import one_line_error, random_network
from vncompile.api.request import InputShape
from vncompile.onnxtools.export import export_onnx

DETECTOR = Path(__file__).parent / "data" / "detector" / "detector_train_form.onnx"


@pytest.fixture(scope="module")
def dynamic_vanillanet(tmp_path_factory) -> Path:
    """A VanillaNet-5 classifier in training form, exported with dynamic height and width (as a user's own
    export leaves it: BN, LeakyRelu(1.0), two 1x1 convs per block, shape computations)."""
    path = tmp_path_factory.mktemp("graphs") / "vanillanet_train.onnx"
    export_onnx(random_network(), InputShape.square(64), path, label="vanillanet_5", output_names=["logits"],
                opset=18, dynamic=True)
    return path


def manifest(directory: Path) -> dict:
    return json.loads((directory / "manifest.json").read_text())


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_a_whole_detector_builds_verified_against_its_own_graph(run_cli, tmp_path, target):
    result = run_cli("build", DETECTOR, "--target", target, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    model = manifest(tmp_path / "out")["model"]
    assert (model["form"], model["family"], model["num_classes"]) == ("onnx", "external detector", 3)
    assert model["reference"].startswith("float64")
    assert model["detector"]["decode"] == "yolo" and model["detector"]["names"] == ["rectangle", "ellipse", "triangle"]
    fusion = model["deploy_fusion"]  # the exporter left the training form: each block's 1x1 convs merged
    assert (fusion["blocks_found"], fusion["blocks_fused"], fusion["convs_before"] - fusion["convs_after"]) == (4, 4, 4)
    assert "4 of 4 VanillaNet blocks fused" in result.err and "reference: float64" in result.err
    stages = manifest(tmp_path / "out")["verification"]["stages"]
    assert all(s["passed"] for s in stages) and len(stages) == 3  # exported, simplified, the target


def test_a_fixed_size_graph_builds_at_its_own_size_and_refuses_others(run_cli, tmp_path):
    result = run_cli("build", DETECTOR, "--target", "analytic", "-o", tmp_path / "out")
    assert result.code == 0, result.err
    assert manifest(tmp_path / "out")["input_shape"] == [1, 3, 128, 128]
    refused = run_cli("build", DETECTOR, "--target", "analytic", "--size", "640", "-o", tmp_path / "other")
    assert refused.code == 2
    line = one_line_error(refused)
    assert "fixed input size 128x128" in line and "dynamic" in line
    assert not (tmp_path / "other").exists()
    profiled = run_cli("profile", DETECTOR, "--targets", "analytic", "--sizes", "256")
    assert profiled.code == 2 and "fixed input size 128x128" in one_line_error(profiled)


def test_a_dynamic_graph_builds_at_any_size_and_dynamic(run_cli, tmp_path, dynamic_vanillanet):
    result = run_cli("build", dynamic_vanillanet, "--target", "onnxruntime", "--size", "96", "-o", tmp_path / "a")
    assert result.code == 0, result.err
    built = manifest(tmp_path / "a")
    assert built["input_shape"] == [1, 3, 96, 96] and built["model"]["family"] == "external classifier"
    fusion = built["model"]["deploy_fusion"]
    assert fusion["blocks_fused"] == fusion["blocks_found"] == 5
    dynamic = run_cli("build", dynamic_vanillanet, "--target", "onnxruntime", "--size", "64", "--dynamic",
                      "-o", tmp_path / "b")
    assert dynamic.code == 0, dynamic.err
    stages = [s["stage"] for s in manifest(tmp_path / "b")["verification"]["stages"]]
    assert any("@96" in s for s in stages)  # verified at a second size


def test_a_graph_without_vanillanet_blocks_builds_unchanged_and_says_so(run_cli, tmp_path):
    network = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    path = tmp_path / "plain.onnx"
    export_onnx(network, InputShape.square(32), path, label="plain", output_names=["logits"], opset=18,
                dynamic=False)
    result = run_cli("build", path, "--target", "onnxruntime", "-o", tmp_path / "out")
    assert result.code == 0, result.err
    assert "no VanillaNet block and nothing to fold; the graph is unchanged" in result.err


def test_a_mid_schedule_export_is_not_merged_and_one_line_says_why(run_cli, tmp_path):
    model = onnx.load(str(DETECTOR))
    leaky = next(n for n in model.graph.node if n.op_type == "LeakyRelu")
    leaky.attribute[0].f = 0.5
    path = tmp_path / "mid.onnx"
    onnx.save(model, str(path))
    result = run_cli("inspect", path)
    assert result.code == 0, result.err
    assert "3 of 4 VanillaNet blocks fused" in result.err and "alpha 0.5" in result.err


def test_inspect_says_what_the_graph_is(run_cli):
    result = run_cli("inspect", DETECTOR, "--json")
    assert result.code == 0, result.err
    facts = result.json()
    assert facts["kind"] == "onnx" and facts["fixed_size"] == [128, 128]
    assert facts["detector"]["imgsz"] == [128, 128] and facts["deploy_fusion"]["blocks_fused"] == 4


def test_external_data_is_read_and_keys_the_build(run_cli, tmp_path):
    folder = tmp_path / "external"
    folder.mkdir()
    model = onnx.load(str(DETECTOR))
    onnx.save(model, str(folder / "det.onnx"), save_as_external_data=True, location="det.weights",
              size_threshold=0)
    result = run_cli("build", folder / "det.onnx", "--target", "onnxruntime", "-o", tmp_path / "out")
    assert result.code == 0, result.err
    assert manifest(tmp_path / "out")["model"]["onnx"]["external_data"] == ["det.weights"]
    (folder / "det.weights").unlink()
    missing = run_cli("build", folder / "det.onnx", "--target", "onnxruntime", "-o", tmp_path / "other")
    assert missing.code == 2 and "external-data file 'det.weights'" in one_line_error(missing)


def test_an_op_the_rebuild_does_not_take_gets_onnx_runtime_as_reference(run_cli, tmp_path):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 8, 3])
    weight = numpy_helper.from_array(np.full((3, 3, 1, 1), 0.5, np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Einsum", ["c"], ["y"],
                               equation="nchw->nhwc")], "g", [x], [y], [weight])
    path = tmp_path / "einsum.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    result = run_cli("build", path, "--target", "onnxruntime", "-o", tmp_path / "out")
    assert result.code == 0, result.err
    assert "onnxruntime fp32" in manifest(tmp_path / "out")["model"]["reference"]
    assert "Einsum" in manifest(tmp_path / "out")["model"]["reference"]


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    not_onnx = tmp_path / "text.onnx"
    not_onnx.write_text("hello")
    two_inputs = tmp_path / "two.onnx"
    a, b = (helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 3, 8, 8]) for n in "ab")
    out = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [out]),
                                opset_imports=[helper.make_opsetid("", 18)]), str(two_inputs))
    unchecked = tmp_path / "unchecked.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "g", [a], [out]),
                                opset_imports=[helper.make_opsetid("", 18)]), str(unchecked))
    outside = tmp_path / "sub"
    outside.mkdir()
    model = onnx.load(str(DETECTOR))
    onnx.save(model, str(tmp_path / "escape.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    escaping = onnx.load(str(tmp_path / "escape.onnx"), load_external_data=False)
    for tensor in escaping.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    onnx.save(escaping, str(outside / "escape.onnx"))
    return {"not onnx": (not_onnx, "not an ONNX model"), "two inputs": (two_inputs, "2 inputs"),
            "checker": (unchecked, "ONNX checker refuses"), "escape": (outside / "escape.onnx", "outside the model")}


def test_bad_onnx_files_are_one_line_each(run_cli, tmp_path):
    for what, (path, expected) in _bad_files(tmp_path).items():
        result = run_cli("build", path, "--target", "onnxruntime", "-o", tmp_path / f"out-{what}")
        assert result.code == 2, (what, result.err)
        assert expected in one_line_error(result), (what, result.err)
        assert not (tmp_path / f"out-{what}").exists()


def test_options_of_vncompile_own_networks_are_refused_for_an_onnx_file(run_cli, tmp_path):
    for args, expected in ((["--features", "0,1"], "--features does not apply to an ONNX file"),
                           (["--opset", "17"], "--opset does not apply to an ONNX file"),
                           (["--fit-memory", "1MB"], "--fit-memory tiles VanillaNet networks")):
        result = run_cli("build", DETECTOR, "--target", "onnxruntime", *args, "-o", tmp_path / "out")
        assert result.code == 2 and expected in one_line_error(result), result.err


def test_a_pickled_ultralytics_checkpoint_gets_the_export_command(run_cli, tmp_path):
    """Ultralytics' best.pt pickles its DetectionModel: named, with the export that makes the ONNX; nothing run."""
    import sys
    import types

    module = types.ModuleType("ultralytics.nn.tasks")

    class DetectionModel:  # stands in for the class the pickle names; never imported by vncompile
        pass

    DetectionModel.__module__, DetectionModel.__qualname__ = "ultralytics.nn.tasks", "DetectionModel"
    module.DetectionModel = DetectionModel
    sys.modules.update({"ultralytics": types.ModuleType("ultralytics"),
                        "ultralytics.nn": types.ModuleType("ultralytics.nn"), "ultralytics.nn.tasks": module})
    try:
        torch.save({"model": DetectionModel(), "epoch": 10}, tmp_path / "best.pt",
                   pickle_protocol=pickle.DEFAULT_PROTOCOL)
    finally:
        for name in ("ultralytics.nn.tasks", "ultralytics.nn", "ultralytics"):
            sys.modules.pop(name)
    result = run_cli("build", tmp_path / "best.pt", "--target", "onnxruntime", "-o", tmp_path / "out")
    assert result.code == 2
    line = one_line_error(result)
    assert "Ultralytics checkpoint" in line and "format=onnx opset=19" in line and "best.onnx" in line


def test_a_ci_matrix_takes_an_onnx_path_at_its_own_size(tmp_path):
    from vncompile.ci.matrix import load_ci_config

    shutil.copy(DETECTOR, tmp_path / "det.onnx")
    devices = Path(__file__).parents[1] / "configs" / "devices"
    config = tmp_path / "ci.yaml"
    config.write_text(f"devices_dir: {devices}\nmodels: [{tmp_path / 'det.onnx'}]\n"
                      "devices: [intel-cpu-openvino-fp32]\n")
    cells = load_ci_config(config).cells
    assert {c.size for c in cells} == {128} and all(c.request.source.is_onnx for c in cells)


VAL = DETECTOR.parent / "val"


def test_an_int8_detector_is_judged_by_map_with_its_head_on_the_host(run_cli, tmp_path):
    """ONNX Runtime int8: calibrated on the letterboxed images, the head after the per-level maps left in float on
    the host, mAP50-95/mAP50 per stage and on the target."""
    result = run_cli("build", DETECTOR, "--target", "onnxruntime", "--precision", "int8", "--calibration", VAL,
                     "--eval-data", VAL, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    built = manifest(tmp_path / "out")
    tail = built["model"]["host_tail"]
    assert len(tail["outputs"]) == 6  # three levels, box and class maps apart
    assert "head_tail.onnx" in {a["path"] for a in built["artifacts"]}
    accuracy = built["accuracy"]
    assert accuracy["images"] == 48 and accuracy["preprocessing"]["kind"] == "letterbox"
    assert (accuracy["decode"]["conf"], accuracy["decode"]["iou"], accuracy["decode"]["max_det"]) == (0.001, 0.7, 300)
    assert set(accuracy) >= {"reference", "onnx exported", "onnx simplified", "onnx int8 qdq", "target"}
    assert accuracy["reference"]["map50"] >= 50
    assert accuracy["reference"]["map50_95"] - accuracy["target"]["map50_95"] <= 1.0  # --max-map-drop's default
    assert "mAP50" in result.err
    import subprocess
    import sys

    ran = subprocess.run([sys.executable, "load_model.py"], cwd=tmp_path / "out", capture_output=True, text=True)
    assert "output0: 1x7x336 float32" in ran.stdout, ran.stderr  # the bundle's loader applies the host tail


def test_detect_head_applies_to_detectors_only(run_cli, tmp_path, dynamic_vanillanet):
    result = run_cli("build", dynamic_vanillanet, "--target", "onnxruntime", "--detect-head", "host",
                     "-o", tmp_path / "out")
    assert result.code == 2 and "--detect-head applies to ONNX detectors" in one_line_error(result)


def test_rknn_int8_runs_a_detectors_head_on_the_host_and_keeps_its_map(run_cli, tmp_path, rknn_toolchain):
    result = run_cli("build", DETECTOR, "--target", "rknn", "--precision", "int8", "--calibration", VAL,
                     "--eval-data", VAL, "-o", tmp_path / "out")
    assert result.code == 0, result.err
    built = manifest(tmp_path / "out")
    assert built["model"]["host_tail"] is not None
    accuracy = built["accuracy"]
    assert accuracy["reference"]["map50_95"] - accuracy["target"]["map50_95"] <= 1.0


def test_an_op_no_reference_runs_is_one_line(run_cli, tmp_path):
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Mystery", ["x"], ["y"], domain="com.example")], "g", [x], [y])
    path = tmp_path / "custom.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                      helper.make_opsetid("com.example", 1)]), str(path))
    result = run_cli("build", path, "--target", "onnxruntime", "-o", tmp_path / "out")
    assert result.code == 2
    line = one_line_error(result)
    assert "no reference can run this graph" in line and "Mystery" in line


class _AttentionThenHead(torch.nn.Module):
    """A backbone with an attention block (reshapes of its own, as YOLO11's C2PSA) before a DFL head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.qkv, self.proj = (torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.Conv2d(8, 24, 1),
                                          torch.nn.Conv2d(8, 8, 1))
        self.box, self.cls, self.dfl = torch.nn.Conv2d(8, 8, 1), torch.nn.Conv2d(8, 2, 1), torch.nn.Conv2d(2, 1, 1)
        self.dfl.weight.data[:] = torch.arange(2.0).view(1, 2, 1, 1)

    def forward(self, x):
        x = self.stem(x)
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).view(b, 3, c, h * w).unbind(1)
        y = (v @ (q.transpose(1, 2) @ k).softmax(-1).transpose(1, 2)).view(b, c, h, w)
        x = x + self.proj(y)
        box, cls = self.box(x).flatten(2), self.cls(x).flatten(2)
        distances = self.dfl(box.view(b, 4, 2, h * w).transpose(2, 1).softmax(1)).view(b, 4, h * w)
        return torch.cat([distances, cls.sigmoid()], 1)


def test_the_head_is_cut_after_the_networks_own_reshapes(tmp_path):
    """An attention block's reshapes inside the network are not the head: the cut is at the box and class maps."""
    from vncompile.onnxtools.detect_head import cut_host_tail, run_with_tail
    from vncompile.onnxtools.run import run_onnx

    path = tmp_path / "attention.onnx"
    export_onnx(_AttentionThenHead().eval(), InputShape.square(64), path, label="attention", output_names=["output0"],
                opset=18, dynamic=False)
    cut = cut_host_tail(path, tmp_path / "device.onnx", tmp_path / "tail.onnx")
    assert cut is not None and len(cut.cuts) == 2
    x = np.random.default_rng(0).standard_normal((1, 1, 3, 64, 64)).astype(np.float32)
    whole = run_onnx(path, x)[0]
    rejoined = run_with_tail(tmp_path / "tail.onnx")(run_onnx(tmp_path / "device.onnx", x)[0])
    assert np.allclose(rejoined[0], whole[0], atol=1e-6)


def test_a_dynamic_detectors_sides_must_be_multiples_of_its_stride(tmp_path):
    from vncompile.core.errors import InputError
    from vncompile.onnxtools.graph_file import GraphFile
    from vncompile.pipeline.families import graph_family

    graph = GraphFile(tmp_path / "yolo.onnx", "images", (1, 3, "height", "width"), (("output0", (1, 84, "anchors")),),
                      19, {"task": "detect", "stride": "32", "names": str({i: str(i) for i in range(80)})})
    family = graph_family(graph)
    assert family.detector == "yolo" and family.classes == 80
    family.check_graph_input(graph, InputShape.square(640), dynamic=False)
    with pytest.raises(InputError, match="multiples of 32.*use 608x608"):
        family.check_graph_input(graph, InputShape.square(600), dynamic=False)


def test_malformed_metadata_reads_as_none():
    from vncompile.data.detection import ultralytics_metadata

    meta = ultralytics_metadata({"imgsz": "['a', 1]", "names": "{'a': 1, 2: 'b'}", "stride": "1e999",
                                 "task": "detect"})
    assert (meta.task, meta.names, meta.imgsz, meta.stride) == ("detect", None, None, None)
    assert ultralytics_metadata({"imgsz": "[0, 0]", "names": "{[1]: 2}"}).imgsz is None
