"""The ONNX -> torch module the ethos-u toolchain converts from and the float64 reference of external graphs
(``toolchains/workers/onnx_as_torch.py``; it needs only torch, onnx and numpy, so it runs here too): node for
node the same function as ONNX Runtime on the ops' edge cases (a YOLO-style detection head included), in
float64 when asked, and what it refuses, by name."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from vncompile.toolchains.spec import WORKERS_DIR

_spec = importlib.util.spec_from_file_location("onnx_as_torch", WORKERS_DIR / "onnx_as_torch.py")
onnx_as_torch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(onnx_as_torch)

RNG = np.random.default_rng(0)


def constant(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def graph(nodes, initializers, in_shape=(1, 4, 9, 10), opset=18):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def weights(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


CASES = {
    "conv, asymmetric pads": ([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[0, 1, 2, 1], strides=[2, 1])],
                              [constant("w", weights(3, 4, 3, 3)), constant("b", weights(3))]),
    "pad": ([helper.make_node("Pad", ["x", "p"], ["y"])], [constant("p", np.array([0, 0, 1, 2, 0, 0, 3, 0]))]),
    "slice, negative and huge ends": ([helper.make_node("Slice", ["x", "s", "e", "a"], ["y"])],
                                      [constant("s", np.array([1, -4])), constant("e", np.array([2**62, -1])),
                                       constant("a", np.array([2, 3]))]),
    "reshape 0 and -1, gemm transB=0": ([helper.make_node("Reshape", ["x", "shape"], ["r"]),
                                         helper.make_node("Gemm", ["r", "w", "b"], ["y"])],
                                        [constant("shape", np.array([0, -1])), constant("w", weights(360, 5)),
                                         constant("b", weights(5))]),
    "maxpool without strides": ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 3])], []),
    "add of a constant, then relu": ([helper.make_node("Add", ["x", "c"], ["a"]),
                                      helper.make_node("Relu", ["a"], ["y"])], [constant("c", weights(1, 4, 1, 1))]),
    "space to depth": ([helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2)], []),
    "split by sizes, concat in another order": ([helper.make_node("Split", ["x", "s"], ["a", "b"], axis=1),
                                                 helper.make_node("Concat", ["b", "a"], ["y"], axis=1)],
                                                [constant("s", np.array([1, 3]))]),
    "split in equal parts, the last smaller": ([helper.make_node("Split", ["x"], ["a", "b"], axis=2, num_outputs=2),
                                                helper.make_node("Concat", ["b", "a"], ["y"], axis=2)], []),
    "transpose, reshape": ([helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
                            helper.make_node("Reshape", ["t", "shape"], ["y"])],
                           [constant("shape", np.array([1, -1, 4]))]),
    "softmax, sigmoid, mul, sub, div": ([helper.make_node("Softmax", ["x"], ["s"], axis=1),
                                         helper.make_node("Sigmoid", ["x"], ["g"]),
                                         helper.make_node("Mul", ["s", "g"], ["m"]),
                                         helper.make_node("Sub", ["m", "c"], ["d"]),
                                         helper.make_node("Div", ["d", "c2"], ["y"])],
                                        [constant("c", weights(1, 4, 1, 1)), constant("c2", np.float32([3.0]))]),
    "resize nearest x2 (torch's Upsample)": ([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest",
                                                               coordinate_transformation_mode="asymmetric",
                                                               nearest_mode="floor")],
                                             [constant("scales", np.float32([1, 1, 2, 2]))]),
    "resize nearest to sizes, half pixel": ([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"])],
                                            [constant("sizes", np.array([1, 4, 14, 7]))]),
    "resize linear x2, half pixel": ([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")],
                                     [constant("scales", np.float32([1, 1, 2, 2]))]),
    "resize linear to sizes, align corners": ([helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear",
                                                                coordinate_transformation_mode="align_corners")],
                                              [constant("sizes", np.array([1, 4, 5, 13]))]),
    "matmul, gather, unsqueeze, squeeze": ([helper.make_node("Reshape", ["x", "shape"], ["r"]),
                                            helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
                                            helper.make_node("MatMul", ["t", "w"], ["m"]),
                                            helper.make_node("Gather", ["m", "i"], ["g"], axis=2),
                                            helper.make_node("Unsqueeze", ["g", "one"], ["u"]),
                                            helper.make_node("Squeeze", ["u", "zero"], ["y"])],
                                           [constant("shape", np.array([1, 4, 90])), constant("w", weights(4, 3)),
                                            constant("i", np.array([2, -3])), constant("one", np.array([1])),
                                            constant("zero", np.array([0]))]),
    "reduce max, argmax": ([helper.make_node("ReduceMax", ["x", "axes"], ["r"]),
                            helper.make_node("ArgMax", ["x"], ["a"], axis=1),
                            helper.make_node("Cast", ["a"], ["f"], to=TensorProto.FLOAT),
                            helper.make_node("Add", ["r", "f"], ["y"])], [constant("axes", np.array([1]))]),
    "constants folded, a shape computed from them": ([helper.make_node("Constant", [], ["c"], value_ints=[1, 4]),
                                                      helper.make_node("Constant", [], ["k"], value_float=2.0),
                                                      helper.make_node("Mul", ["minus", "two"], ["last"]),
                                                      helper.make_node("Concat", ["c", "last"], ["shape"], axis=0),
                                                      helper.make_node("Reshape", ["x", "shape"], ["r"]),
                                                      helper.make_node("Mul", ["r", "k"], ["y"])],
                                                     [constant("minus", np.array([-1])),
                                                      constant("two", np.array([1]))]),
    "clip, hard swish, exp, sqrt, pow, tanh, average pool": (
        [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("HardSwish", ["c"], ["h"]),
         helper.make_node("Neg", ["h"], ["n"]), helper.make_node("Exp", ["n"], ["e"]),
         helper.make_node("Sqrt", ["e"], ["s"]), helper.make_node("Pow", ["s", "p"], ["q"]),
         helper.make_node("Tanh", ["q"], ["t"]),
         helper.make_node("AveragePool", ["t"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
        [constant("lo", np.float32(-1.5)), constant("hi", np.float32(2.0)), constant("p", np.float32(3.0))]),
    "an end-to-end postprocess: reduce max, top-k, gather elements, mod, greater, where": (
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("ReduceMax", ["r", "one"], ["m"],
                                                                               keepdims=0),
         helper.make_node("TopK", ["m", "k"], ["values", "indices"]),
         helper.make_node("GatherElements", ["m", "indices"], ["g"], axis=1),
         helper.make_node("Mod", ["indices", "seven"], ["rest"]), helper.make_node("Cast", ["rest"], ["f"], to=1),
         helper.make_node("Greater", ["g", "zero"], ["mask"]), helper.make_node("Where", ["mask", "g", "f"], ["w"]),
         helper.make_node("Concat", ["w", "values"], ["y"], axis=1)],
        [constant("shape", np.array([1, 4, 90])), constant("one", np.array([1])), constant("k", np.array([5])),
         constant("seven", np.array([7])), constant("zero", np.float32(0.0))]),
    "reduce sum and min, expand, max, min, abs, log, erf, tile, equal, not": (
        [helper.make_node("ReduceSum", ["x", "two"], ["s"]), helper.make_node("ReduceMin", ["x", "three"], ["n"]),
         helper.make_node("Expand", ["n", "full"], ["e"]), helper.make_node("Max", ["x", "e", "s"], ["mx"]),
         helper.make_node("Min", ["mx", "cap"], ["mi"]), helper.make_node("Abs", ["mi"], ["ab"]),
         helper.make_node("Add", ["ab", "cap"], ["ap"]), helper.make_node("Log", ["ap"], ["lg"]),
         helper.make_node("Erf", ["lg"], ["er"]), helper.make_node("Tile", ["er", "twice"], ["t"]),
         helper.make_node("Equal", ["t", "cap"], ["same"]), helper.make_node("Not", ["same"], ["differ"]),
         helper.make_node("Where", ["differ", "t", "cap"], ["y"])],
        [constant("two", np.array([2])), constant("three", np.array([3])), constant("full", np.array([1, 4, 9, 10])),
         constant("cap", np.float32(1.5)), constant("twice", np.array([1, 1, 1, 2]))]),
}
SHAPES = {"space to depth": (1, 4, 8, 10)}


@pytest.mark.parametrize("case", CASES)
def test_the_module_is_the_graphs_function(case):
    nodes, initializers = CASES[case]
    shape = SHAPES.get(case, (1, 4, 9, 10))
    model = graph(nodes, initializers, shape)
    x = RNG.standard_normal(shape).astype(np.float32)
    (expected,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    with torch.no_grad():
        got = onnx_as_torch.OnnxAsTorch(model)(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_softmax_before_opset_13_is_over_the_flattened_input():
    model = graph([helper.make_node("Softmax", ["x"], ["y"], axis=2)], [], opset=11)
    x = RNG.standard_normal((1, 4, 9, 10)).astype(np.float32)
    (expected,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    got = onnx_as_torch.OnnxAsTorch(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_in_float64_every_value_is_float64():
    """The reference of an external graph: its fp16 casts too run in float64; the weights are the graph's."""
    w = weights(3, 4, 3, 3)
    nodes = [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16),
             helper.make_node("Cast", ["h"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Conv", ["f", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Sigmoid", ["c"], ["y"])]
    module = onnx_as_torch.OnnxAsTorch(graph(nodes, [constant("w", w)]), dtype=torch.float64)
    x = RNG.standard_normal((1, 4, 9, 10))
    got = module(torch.from_numpy(x.astype(np.float32)))
    assert got.dtype == torch.float64
    expected = torch.sigmoid(F.conv2d(torch.from_numpy(x.astype(np.float32)).double(), torch.from_numpy(w).double(),
                                      padding=1))
    assert torch.equal(got, expected)  # no rounding to fp16 or fp32 anywhere


@pytest.mark.parametrize("attrs", [dict(pads=[3, 3, 3, 3]), dict(pads=[0, 1, 2, 1], strides=[2, 2], dilations=[2, 1])])
def test_a_depthwise_conv_in_float64(attrs):
    """Computed as shifted sums (torch's float64 grouped conv is one slow conv per channel): the same values."""
    k = 3 if "strides" in attrs else 7
    w, b = weights(4, 1, k, k), weights(4)
    model = graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], group=4, **attrs)],
                  [constant("w", w), constant("b", b)])
    x = torch.from_numpy(RNG.standard_normal((1, 4, 9, 10)))
    got = onnx_as_torch.OnnxAsTorch(model, dtype=torch.float64)(x)
    pads = attrs["pads"]
    expected = F.conv2d(F.pad(x, (pads[1], pads[3], pads[0], pads[2])), torch.from_numpy(w).double(),
                        torch.from_numpy(b).double(), attrs.get("strides", 1), 0, attrs.get("dilations", 1), 4)
    assert got.shape == expected.shape and torch.allclose(got, expected, rtol=1e-12, atol=1e-12)


def yolo_style_detector(nc=3, reg_max=4, size=32, width=8):
    """A tiny anchor-free detector as YOLOv8/YOLO11 export it: three levels (strides 8, 16, 32) with a
    nearest-upsampled neck, per level box (4 x reg_max DFL bins) and class convs, reshaped and concatenated
    over anchors, DFL (softmax over bins, then a 1x1 conv with weights 0..reg_max-1), distances to boxes
    (cx, cy, w, h in input pixels, times the stride), sigmoid scores: output [1, 4 + nc, A]."""
    nodes, inits = [], []

    def const(name, array):
        inits.append(constant(name, np.asarray(array)))
        return name

    def node(op, inputs, output, **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    levels, previous, anchors, strides = [], "x", [], []
    for i, stride in enumerate((8, 16, 32)):
        step = 8 if i == 0 else 2
        previous = node("Conv", [previous, const(f"wb{i}", weights(width, 3 if i == 0 else width, step, step))],
                        f"p{i}", strides=[step, step])
        levels.append(previous)
        cells = size // stride
        ys, xs = np.meshgrid(np.arange(cells) + 0.5, np.arange(cells) + 0.5, indexing="ij")
        anchors.append(np.stack([xs.ravel(), ys.ravel()]))
        strides.append(np.full(cells * cells, stride))
    up = node("Resize", [levels[2], "", const("scales", np.float32([1, 1, 2, 2]))], "up", mode="nearest",
              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    levels[1] = node("Add", [levels[1], up], "neck1")
    flat = []
    for i, level in enumerate(levels):
        box = node("Conv", [level, const(f"wbox{i}", weights(4 * reg_max, width, 1, 1)), const(f"bbox{i}",
                                                                                               weights(4 * reg_max))],
                   f"box{i}")
        cls = node("Conv", [level, const(f"wcls{i}", weights(nc, width, 1, 1))], f"cls{i}")
        both = node("Concat", [box, cls], f"head{i}", axis=1)
        flat.append(node("Reshape", [both, const(f"shape{i}", np.array([1, 4 * reg_max + nc, -1]))], f"flat{i}"))
    a = sum(s.size for s in strides)
    out = node("Concat", flat, "all", axis=2)
    node("Split", [out, const("split", np.array([4 * reg_max, nc]))], "unused", axis=1)
    nodes[-1].output[:] = ["dist", "scores"]
    bins = node("Reshape", ["dist", const("bins_shape", np.array([1, 4, reg_max, a]))], "bins")
    bins = node("Transpose", [bins], "bins_t", perm=[0, 2, 1, 3])
    bins = node("Softmax", [bins], "bins_p", axis=1)
    dfl = node("Conv", [bins, const("dfl_w", np.arange(reg_max, dtype=np.float32).reshape(1, reg_max, 1, 1))], "dfl")
    dist = node("Reshape", [dfl, const("dist_shape", np.array([1, 4, a]))], "distances")
    lt = node("Slice", [dist, const("s0", np.array([0])), const("e2", np.array([2])), const("ax", np.array([1]))], "lt")
    rb = node("Slice", [dist, const("s2", np.array([2])), const("e4", np.array([4])), "ax"], "rb")
    anchor = const("anchors", np.concatenate(anchors, axis=1)[None].astype(np.float32))
    x1y1 = node("Sub", [anchor, lt], "x1y1")
    x2y2 = node("Add", [anchor, rb], "x2y2")
    centre = node("Div", [node("Add", [x1y1, x2y2], "sum"), const("two", np.float32([2.0]))], "centre")
    wh = node("Sub", [x2y2, x1y1], "wh")
    boxes = node("Mul", [node("Concat", [centre, wh], "cxcywh", axis=1),
                         const("strides", np.concatenate(strides)[None].astype(np.float32))], "boxes")
    node("Concat", [boxes, node("Sigmoid", ["scores"], "probs")], "y", axis=1)
    return graph(nodes, inits, (1, 3, size, size)), 4 + nc, a


def test_a_yolo_style_detection_head_in_float32_and_float64():
    model, channels, anchors = yolo_style_detector()
    x = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
    (expected,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    assert expected.shape == (1, channels, anchors) == (1, 7, 21)
    with torch.no_grad():
        got = onnx_as_torch.OnnxAsTorch(model)(torch.from_numpy(x)).numpy()
        reference = onnx_as_torch.OnnxAsTorch(model, dtype=torch.float64)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    assert reference.dtype == np.float64
    assert np.abs(reference - expected).max() / np.abs(reference).max() <= 1e-6


@pytest.mark.parametrize("nodes,initializers,message", [
    ([helper.make_node("Einsum", ["x"], ["y"], equation="ij->ji", name="mix")], [],
     "operators this converter does not take: Einsum \\(node 'mix'\\)"),
    ([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])], [],
     "operators this converter does not take: Shape \\(node 's'\\)"),
    ([helper.make_node("Conv", ["x", "x"], ["y"])], [], "takes 'x' from the graph, not as a constant"),
    ([helper.make_node("Pad", ["x", "p", "", "a"], ["y"])],
     [constant("p", np.array([1, 1])), constant("a", np.array([2]))], "Pad with axes is not taken"),
    ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], auto_pad="SAME_UPPER")], [],
     "MaxPool with auto_pad"),
    ([helper.make_node("Resize", ["x", "", "s"], ["y"], mode="cubic", name="up")],
     [constant("s", np.float32([1, 1, 2, 2]))], "Resize node 'up': mode cubic"),
])
def test_what_it_does_not_take_is_refused_by_name(nodes, initializers, message):
    with pytest.raises(ValueError, match=message):  # on building the module, or at the latest on tracing it
        onnx_as_torch.OnnxAsTorch(graph(nodes, initializers))(torch.zeros(1, 4, 9, 10))
