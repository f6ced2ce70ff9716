"""Deploy fusion as graph passes (``onnxtools.deploy_fusion``): each pass alone computes the graph's function
(ONNX Runtime, rel <= 1e-5), on a plain conv chain and on vncompile's own VanillaNet exported in training
form, whose fused graph has exactly the deploy form's convs; what is not exact is left alone and reported."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import NARROW, random_network
from vncompile.api.request import InputShape
from vncompile.core.errors import InputError
from vncompile.onnxtools.deploy_fusion import DEPLOY_FUSION, fuse_for_deploy, vanillanet_blocks
from vncompile.onnxtools.export import export_onnx
from vncompile.onnxtools.passes import GROUPS, apply_passes, expand_pass_names
from vncompile.vanillanet.fusion import switch_to_deploy

RNG = np.random.default_rng(0)


def copy(model: onnx.ModelProto) -> onnx.ModelProto:
    duplicate = onnx.ModelProto()
    duplicate.CopyFrom(model)
    return duplicate


def run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def rel_error(before: onnx.ModelProto, after: onnx.ModelProto, shape) -> float:
    x = RNG.standard_normal(shape).astype(np.float32)
    errors = [np.abs(a - b).max() / np.abs(a).max() for a, b in zip(run(before, x), run(after, x), strict=True)]
    return float(max(errors))


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


class Builder:
    """A tiny graph: 1x8x12x12 in, nodes appended one by one with random weights."""

    def __init__(self, channels: int = 8, size: int = 12) -> None:
        self.nodes, self.inits, self.channels, self.last, self.size = [], [], channels, "x", size

    def _const(self, array, hint):
        name = f"{hint}{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def node(self, op, *inputs, **attrs):
        out = f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, [self.last, *inputs], [out], name=f"{op.lower()}{len(self.nodes)}",
                                           **attrs))
        self.last = out
        return self

    def conv(self, out, k=1, bias=True, **attrs):
        w = self._const(RNG.standard_normal((out, self.channels // attrs.get("group", 1), k, k)) / np.sqrt(
            self.channels * k * k), "w")
        inputs = [w] + ([self._const(RNG.uniform(-0.1, 0.1, out), "b")] if bias else [])
        self.channels = out
        return self.node("Conv", *inputs, kernel_shape=[k, k], **attrs)

    def bn(self):
        c = self.channels
        stats = [RNG.uniform(0.5, 1.5, c), RNG.uniform(-0.2, 0.2, c), RNG.uniform(-0.2, 0.2, c), RNG.uniform(0.5, 2, c)]
        return self.node("BatchNormalization", *[self._const(s, "bn") for s in stats], epsilon=1e-5)

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                  [1, 8, self.size, self.size])],
                                  [helper.make_tensor_value_info(self.last, TensorProto.FLOAT, None)], self.inits)
        model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
        onnx.checker.check_model(model, full_check=True)
        return model


def plain_chain() -> onnx.ModelProto:
    """No VanillaNet in sight: a strided padded 3x3 conv, BN, two 1x1 convs (one without bias), ReLU, a 1x1 conv
    and BN, and a bottleneck whose merge would cost more than its two convs."""
    b = Builder().conv(16, 3, strides=[2, 2], pads=[1, 0, 2, 1]).bn().conv(16).conv(12, bias=False).node("Relu")
    return b.conv(12).bn().conv(32).node("Relu").conv(4, 3, pads=[1, 1, 1, 1]).conv(32).model()


def test_the_group_expands_to_its_passes_and_unknown_names_are_refused():
    assert GROUPS["deploy-fusion"] == DEPLOY_FUSION
    assert expand_pass_names(("relu-before-maxpool", "deploy-fusion")) == ("relu-before-maxpool", *DEPLOY_FUSION)
    with pytest.raises(InputError, match="unknown graph pass 'fold-all'; choose from .*deploy-fusion"):
        expand_pass_names(("fold-all",))


@pytest.mark.parametrize("name,count", [("fold-batchnorm", 2), ("drop-identity-leaky-relu", 0),
                                        ("merge-pointwise-convs", 1)])
def test_each_pass_alone_on_a_plain_conv_chain(name, count):
    before = plain_chain()
    after = copy(before)
    assert apply_passes(after, (name,)) == {name: count}
    onnx.checker.check_model(after, full_check=True)
    assert rel_error(before, after, (1, 8, 12, 12)) <= 1e-5
    convs = ops(after).count("Conv")
    assert convs == {"fold-batchnorm": 7, "drop-identity-leaky-relu": 7, "merge-pointwise-convs": 6}[name]


def test_the_whole_group_on_a_plain_conv_chain():
    before = plain_chain()
    after = copy(before)
    report = fuse_for_deploy(after)
    # conv3x3+BN+1x1+1x1 -> one conv; 1x1+BN+1x1 -> one conv; the bottleneck 3x3 (32 -> 4) -> 1x1 (4 -> 32) stays.
    assert ops(after) == ["Conv", "Relu", "Conv", "Relu", "Conv", "Conv"]
    assert rel_error(before, after, (1, 8, 12, 12)) <= 1e-5
    assert (report.blocks_found, report.blocks_fused, report.convs_before, report.convs_after) == (0, 0, 7, 4)
    assert (report.nodes_before, report.nodes_after) == (11, 6)
    assert report.summary() == "deploy fusion: no VanillaNet block; 11 -> 6 nodes, 7 -> 4 convs"
    assert report.finding() is None
    assert len(after.graph.initializer) == 8  # the replaced weights are gone


def training_form_block(alpha: float, *, bn: bool) -> onnx.ModelProto:
    """A VanillaNet block as exported: 1x1 conv, [BN], LeakyRelu(alpha), 1x1 conv, [BN], pool, series activation."""
    b = Builder().conv(8)
    b = b.bn() if bn else b
    b = b.node("LeakyRelu", alpha=alpha).conv(16)
    b = b.bn() if bn else b
    b = b.node("MaxPool", kernel_shape=[2, 2], strides=[2, 2]).node("Relu").conv(16, 3, group=16, pads=[1] * 4,
                                                                                  bias=not bn)
    return (b.bn() if bn else b).model()


@pytest.mark.parametrize("bn", [True, False], ids=["with BN (torch export)", "BN folded (Ultralytics export)"])
def test_a_training_form_block_fuses_to_the_deploy_forms_two_convs(bn):
    before = training_form_block(1.0, bn=bn)
    assert [b.alpha for b in vanillanet_blocks(before)] == [1.0]
    after = copy(before)
    report = fuse_for_deploy(after)
    assert ops(after) == ["Conv", "MaxPool", "Relu", "Conv"]
    assert rel_error(before, after, (1, 8, 12, 12)) <= 1e-5
    assert report.counts == {"fold-batchnorm": 3 if bn else 0, "drop-identity-leaky-relu": 1,
                             "merge-pointwise-convs": 1}
    assert (report.blocks_found, report.blocks_fused, report.convs_before, report.convs_after) == (1, 1, 3, 2)
    assert report.summary().startswith("deploy fusion: 1 of 1 VanillaNet blocks fused")


def test_a_mid_schedule_export_is_left_unfused_and_says_so_with_its_alpha():
    before = training_form_block(0.25, bn=True)
    after = copy(before)
    report = fuse_for_deploy(after)
    assert ops(after) == ["Conv", "LeakyRelu", "Conv", "MaxPool", "Relu", "Conv"]  # only the BNs folded
    assert rel_error(before, after, (1, 8, 12, 12)) <= 1e-5
    assert (report.blocks_found, report.blocks_fused) == (1, 0)
    assert report.as_dict()["mid_schedule"] == [{"node": "leakyrelu2", "alpha": 0.25}]
    assert report.finding() == ("1 VanillaNet block(s) left unfused: LeakyRelu alpha 0.25, not 1 (a mid-schedule "
                                "export: act_learn had not reached 1), e.g. 'leakyrelu2'")


def test_what_cannot_be_fused_exactly_is_left_alone():
    """A BN whose conv output is also read elsewhere, a conv whose weight is computed in the graph, a 1x1 conv
    with a stride: none is rewritten. An identity LeakyRelu that is the graph's output is dropped, the conv
    before it writing the output instead."""
    b = Builder().conv(8)
    shared = b.last
    b.bn()
    b.nodes.append(helper.make_node("Add", [b.last, shared], ["sum"]))
    b.last = "sum"
    b.conv(8).conv(8, strides=[2, 2])  # a strided 1x1 after a conv: not pointwise
    b.nodes.append(helper.make_node("Neg", [b.inits[-2].name], ["neg_w"]))
    b.nodes.append(helper.make_node("Conv", [b.last, "neg_w"], ["c"], kernel_shape=[1, 1]))  # a computed weight
    b.last = "c"
    before = b.node("LeakyRelu", alpha=1.0).model()
    after = copy(before)
    assert apply_passes(after, ("deploy-fusion",)) == {"fold-batchnorm": 0, "drop-identity-leaky-relu": 1,
                                                      "merge-pointwise-convs": 0}
    assert ops(after) == ["Conv", "BatchNormalization", "Add", "Conv", "Conv", "Neg", "Conv"]
    assert after.graph.node[-1].output[0] == after.graph.output[0].name
    assert rel_error(before, after, (1, 8, 12, 12)) <= 1e-5


def export_keeping_batchnorm(network, size: int) -> onnx.ModelProto:
    """torch's exporter without its optimizer (which folds BN into the convs, as Ultralytics' exporter does):
    BatchNormalization nodes kept, constants folded (the depthwise convs' zero biases)."""
    import torch
    from onnxscript import ir
    from onnxscript.ir.passes.common import RemoveUnusedNodesPass
    from onnxscript.optimizer import fold_constants

    with torch.no_grad():
        program = torch.onnx.export(network, (torch.zeros(1, 3, size, size),), dynamo=True, optimize=False,
                                    opset_version=18, input_names=["input"], output_names=["logits"], verbose=False)
    fold_constants(program.model)
    RemoveUnusedNodesPass()(program.model)
    return ir.serde.serialize_model(program.model)


@pytest.fixture(scope="module")
def vanillanet_exports(tmp_path_factory):
    """vanillanet_5 (narrow, seeded BN statistics) exported in training form (act_learn 1) with its BNs, and in
    deploy form."""
    train = random_network("vanillanet_5", width=NARROW, form="train").eval()
    path = export_onnx(switch_to_deploy(train).eval(), InputShape.square(64),
                       tmp_path_factory.mktemp("deploy_fusion") / "deploy.onnx", label="deploy",
                       output_names=["logits"], opset=18, dynamic=False)
    return {"train": export_keeping_batchnorm(train, 64), "deploy": onnx.load(str(path))}


@pytest.mark.parametrize("position", range(len(DEPLOY_FUSION)), ids=DEPLOY_FUSION)
def test_each_pass_alone_on_vanillanet_in_training_form(vanillanet_exports, position):
    """Each pass checked against the graph the passes before it in the group left: 13 BNs (the stem's 2, each
    stage's 3 and the classifier's, the series activations' included), 5 blocks."""
    before = copy(vanillanet_exports["train"])
    apply_passes(before, DEPLOY_FUSION[:position])
    after = copy(before)
    name = DEPLOY_FUSION[position]
    assert apply_passes(after, (name,)) == {name: {"fold-batchnorm": 13, "drop-identity-leaky-relu": 5,
                                                   "merge-pointwise-convs": 5}[name]}
    onnx.checker.check_model(after, full_check=True)
    assert rel_error(before, after, (1, 3, 64, 64)) <= 1e-5


def test_vanillanet_in_training_form_fuses_to_exactly_the_deploy_forms_convs(vanillanet_exports):
    before, deploy = vanillanet_exports["train"], vanillanet_exports["deploy"]
    after = copy(before)
    report = fuse_for_deploy(after)
    assert report.convs_after == ops(deploy).count("Conv") < report.convs_before
    assert report.nodes_after == len(deploy.graph.node) < report.nodes_before  # 41 -> 18 for vanillanet_5
    assert "LeakyRelu" not in ops(after) and "BatchNormalization" not in ops(after)
    # stem, 3 stages and the classifier: five blocks, each two 1x1 convs (the stem: 4x4 then 1x1) merged.
    assert (report.blocks_found, report.blocks_fused) == (5, 5)
    assert report.convs_before - report.convs_after == 5
    assert rel_error(before, after, (1, 3, 64, 64)) <= 1e-5
    assert rel_error(deploy, after, (1, 3, 64, 64)) <= 1e-5  # the same function as vncompile's own fusion
    again = copy(after)
    assert set(apply_passes(again, ("deploy-fusion",)).values()) == {0}  # nothing left to fuse
    deployed = copy(deploy)
    assert fuse_for_deploy(deployed).summary() == ("deploy fusion: no VanillaNet block and nothing to fold; the graph "
                                                   "is unchanged")
