"""The ONNX -> torch module the ethos-u toolchain converts from (``toolchains/workers/onnx_as_torch.py``; it
needs only torch, onnx and numpy, so it runs here too): node for node the same function as ONNX Runtime on
the ops' edge cases, and what it refuses, by name."""

from __future__ import annotations

import importlib.util

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from vncompile.toolchains.spec import WORKERS_DIR

_spec = importlib.util.spec_from_file_location("onnx_as_torch", WORKERS_DIR / "onnx_as_torch.py")
onnx_as_torch = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(onnx_as_torch)

RNG = np.random.default_rng(0)


def constant(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def graph(nodes, initializers, in_shape=(1, 4, 9, 10)):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


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
}


@pytest.mark.parametrize("case", CASES)
def test_the_module_is_the_graphs_function(case):
    nodes, initializers = CASES[case]
    shape = (1, 4, 8, 10) if case == "space to depth" else (1, 4, 9, 10)
    model = graph(nodes, initializers, shape)
    x = RNG.standard_normal(shape).astype(np.float32)
    (expected,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    with torch.no_grad():
        got = onnx_as_torch.OnnxAsTorch(model)(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nodes,initializers,message", [
    ([helper.make_node("Sigmoid", ["x"], ["y"])], [], "operators this converter does not take: Sigmoid"),
    ([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])], [],
     "operators this converter does not take: Shape"),
    ([helper.make_node("Conv", ["x", "x"], ["y"])], [], "takes 'x' from the graph, not as a constant"),
    ([helper.make_node("Pad", ["x", "p", "", "a"], ["y"])],
     [constant("p", np.array([1, 1])), constant("a", np.array([2]))], "Pad with axes is not taken"),
    ([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], auto_pad="SAME_UPPER")], [],
     "MaxPool with auto_pad"),
])
def test_what_it_does_not_take_is_refused_by_name(nodes, initializers, message):
    with pytest.raises(ValueError, match=message):  # on building the module, or at the latest on tracing it
        onnx_as_torch.OnnxAsTorch(graph(nodes, initializers))(torch.zeros(1, 4, 9, 10))
