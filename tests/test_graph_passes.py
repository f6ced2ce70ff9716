"""The exact graph passes for int8 NPUs: each on its own is the same function (ONNX Runtime, fp32), rewrites
what it should and nothing it cannot rewrite exactly; a build records them and refuses unknown names."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import NARROW, one_line_error
from vncompile.api.request import InputShape, ModelSource
from vncompile.onnxtools.deploy_fusion import DEPLOY_FUSION
from vncompile.onnxtools.passes import PASSES, apply_passes
from vncompile.pipeline import stages


@pytest.fixture(scope="module")
def vanillanet_onnx(tmp_path_factory):
    loaded = stages.network_for_export(stages.fuse(stages.load_model(ModelSource(model_name="vanillanet_5",
                                                                                width=NARROW))))
    path = tmp_path_factory.mktemp("passes") / "vanillanet_5.onnx"
    return stages.export_onnx(loaded, InputShape.square(96), path, opset=18, dynamic=False)


def rel_error(before: onnx.ModelProto, after: onnx.ModelProto) -> float:
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96), dtype=np.float32)
    a, b = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
            for m in (before, after))
    return float(np.abs(a - b).max() / np.abs(a).max())


@pytest.mark.parametrize("name", sorted(PASSES))
def test_each_pass_alone_is_the_same_function(vanillanet_onnx, name):
    before = onnx.load(str(vanillanet_onnx))
    after = onnx.load(str(vanillanet_onnx))
    counts = apply_passes(after, (name,))
    onnx.checker.check_model(after, full_check=True)
    # VanillaNet-5: 3 pools; in deploy form, nothing is left for the deploy-fusion passes (the graph unchanged)
    assert counts == {name: {"relu-before-maxpool": 3, "stem-space-to-depth": 1}.get(name, 0)}
    assert rel_error(before, after) <= 1e-5
    ops = [n.op_type for n in after.graph.node]
    if name in DEPLOY_FUSION:
        assert after == before
    elif name == "relu-before-maxpool":
        producers = {o: n.op_type for n in after.graph.node for o in n.output}
        assert not any(n.op_type == "Relu" and producers.get(n.input[0]) == "MaxPool" for n in after.graph.node)
        assert ops.count("MaxPool") == 3
    else:
        assert ops[0] == "SpaceToDepth"
        stem = next(n for n in after.graph.node if n.op_type == "Conv")
        assert [list(a.ints) for a in stem.attribute if a.name == "kernel_shape"] == [[1, 1]]


def test_a_stem_the_pass_cannot_rewrite_exactly_is_left_alone():
    """30 rows are not a multiple of the stride 4: the strided conv drops the last two, SpaceToDepth cannot."""
    weight = numpy_helper.from_array(np.ones((8, 3, 4, 4), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[4, 4], strides=[4, 4], name="stem")
    graph = helper.make_graph([conv], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 30, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 7, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    assert apply_passes(model, ("stem-space-to-depth",)) == {"stem-space-to-depth": 0}
    assert [n.op_type for n in model.graph.node] == ["Conv"]


def test_a_build_records_its_passes_and_refuses_unknown_ones(tmp_path, run_cli):
    out = tmp_path / "b"
    result = run_cli("build", "--model", "vanillanet_5", "--width", str(NARROW), "--target", "onnxruntime", "--size",
                     "64", "--graph-passes", "relu-before-maxpool,stem-space-to-depth", "-o", out)
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["graph_passes"] == {"relu-before-maxpool": 3, "stem-space-to-depth": 1}
    assert manifest["verification"]["passed"]
    assert [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node][0] == "SpaceToDepth"
    bad = run_cli("build", "--model", "vanillanet_5", "--width", str(NARROW), "--target", "onnxruntime", "--size",
                  "64", "--graph-passes", "fold-everything", "-o", tmp_path / "c")
    assert bad.code == 2 and "unknown graph pass 'fold-everything'" in one_line_error(bad)
    assert not (tmp_path / "c").exists()


def test_the_stem_pass_looks_through_an_fp16_graphs_input_cast(tmp_path):
    loaded = stages.network_for_export(stages.fuse(stages.load_model(ModelSource(model_name="vanillanet_5",
                                                                                width=NARROW))))
    path = stages.export_onnx(loaded, InputShape.square(96), tmp_path / "fp16.onnx", opset=18, dynamic=False,
                              compute="fp16", io_dtype="fp32")
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node][0] == "Cast"
    before = onnx.load(str(path))
    assert apply_passes(model, ("stem-space-to-depth",)) == {"stem-space-to-depth": 1}
    assert [n.op_type for n in model.graph.node][:2] == ["Cast", "SpaceToDepth"]
    assert rel_error(before, model) <= 1e-3


def test_a_targets_default_passes_key_its_builds(tmp_path, run_cli, monkeypatch):
    """What a target applies unasked is part of what its build depends on: when its default passes change,
    the cache does not serve the build made with the old ones."""
    from vncompile.targets.onnxruntime import OnnxRuntimeTarget

    args = ("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "onnxruntime", "--size", "64")
    assert run_cli(*args, "-o", tmp_path / "a").code == 0
    monkeypatch.setattr(OnnxRuntimeTarget, "graph_passes", ("relu-before-maxpool",))
    result = run_cli(*args, "-o", tmp_path / "b")
    assert result.code == 0 and "served from the cache" not in result.err
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["model"]["graph_passes"] == {"relu-before-maxpool": 3}


def _negate_the_output(model: onnx.ModelProto) -> int:
    """A broken pass: the graph's output negated."""
    output = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{o}_pre" if o == output else o for o in node.output]
    model.graph.node.append(helper.make_node("Neg", [f"{output}_pre"], [output], name="broken_pass_neg"))
    return 1


@pytest.mark.parametrize("simplifier", ["onnxslim", "none"])
def test_a_pass_that_changes_the_function_fails_the_build(tmp_path, run_cli, monkeypatch, simplifier):
    """Checked against the exported graph, also when nothing simplified it (the cache then stores the exported
    graph once under two names: rewriting one must not rewrite the other it is checked against)."""
    from vncompile.onnxtools.passes import GraphPass

    monkeypatch.setitem(PASSES, "relu-before-maxpool", GraphPass("relu-before-maxpool", "broken", _negate_the_output))
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "onnxruntime", "--size", "64",
                     "--simplifier", simplifier, "--graph-passes", "relu-before-maxpool", "-o", tmp_path / "b")
    assert result.code != 0
    assert "graph passes relu-before-maxpool changed the graph's outputs" in one_line_error(result)
    assert not (tmp_path / "b").exists()
