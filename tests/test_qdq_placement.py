"""Which compute nodes of a Q/DQ graph run quantized and which in float, on graphs whose answer is known by hand,
and on what onnxruntime's QNN quantizer makes of VanillaNet's pool -> ReLU, with and without the graph pass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vncompile.onnxtools.passes import apply_passes
from vncompile.onnxtools.quantized import qdq_placement

SHAPE = [1, 4, 8, 8]


def scalar(name, value, dtype=np.float32):
    return numpy_helper.from_array(np.array(value, dtype=dtype), name)


def model(nodes, initializers, output="y", domain=""):
    opsets = [helper.make_opsetid("", 18)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
                              initializer=initializers)
    return helper.make_model(graph, opset_imports=opsets)


def qdq(name, tensor, scale, zero, domain=""):
    """tensor -> Q -> DQ: ``name``, the dequantized tensor, with its scale and zero point initializers."""
    return ([helper.make_node("QuantizeLinear", [tensor, scale, zero], [f"{name}_q"], domain=domain),
             helper.make_node("DequantizeLinear", [f"{name}_q", scale, zero], [name], domain=domain)])


def pool_graph(out_scale: float, domain: str = "", zero_type=np.uint8):
    """x -> Q/DQ -> MaxPool -> Q/DQ -> y, the two sides at scale 0.1 and ``out_scale``."""
    nodes = [*qdq("a", "x", "s_in", "z", domain),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             *qdq("y", "p", "s_out", "z", domain)]
    return model(nodes, [scalar("s_in", 0.1), scalar("s_out", out_scale), scalar("z", 0, zero_type)], domain=domain)


def test_a_pool_between_equal_scales_is_quantized_and_between_different_ones_float():
    same, different = qdq_placement(pool_graph(0.1)), qdq_placement(pool_graph(0.05))
    assert same.quantized == ("pool",) and same.float_nodes == ()
    assert different.quantized == () and different.float_nodes == (("pool", "MaxPool"),)
    assert different.float_ops() == {"MaxPool": 1} and different.compute_nodes == 1
    # 16-bit types below opset 21: the com.microsoft Q/DQ ops count as Q/DQ too
    assert qdq_placement(pool_graph(0.1, "com.microsoft", np.uint16)).quantized == ("pool",)


def conv_graph(quantized_weight: bool, requantized: bool = True):
    weight = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    nodes = [*qdq("a", "x", "s", "z")]
    if quantized_weight:
        nodes.append(helper.make_node("DequantizeLinear", ["w_q", "s", "z"], ["w_dq"]))
        weight = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.uint8), "w_q")
    nodes.append(helper.make_node("Conv", ["a", "w_dq" if quantized_weight else "w", "bias"], ["c"], name="conv"))
    if requantized:
        nodes += qdq("y", "c", "s", "z")
    return model(nodes, [weight, scalar("s", 0.1), scalar("z", 0, np.uint8),
                         numpy_helper.from_array(np.zeros(4, np.float32), "bias")], output="y" if requantized else "c")


def test_a_conv_is_quantized_only_with_dequantized_weights_and_a_quantized_output():
    assert qdq_placement(conv_graph(quantized_weight=True)).quantized == ("conv",)  # a float bias is fine
    assert qdq_placement(conv_graph(quantized_weight=False)).float_nodes == (("conv", "Conv"),)
    assert qdq_placement(conv_graph(quantized_weight=True, requantized=False)).float_nodes == (("conv", "Conv"),)


def test_shape_inputs_are_not_computed_on_and_graph_inputs_are_float():
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [*qdq("a", "x", "s", "z"), helper.make_node("Reshape", ["a", "shape"], ["r"], name="reshape"),
             *qdq("y", "r", "s", "z"), helper.make_node("Relu", ["x"], ["unquantized"], name="relu")]
    placement = qdq_placement(model(nodes, [shape, scalar("s", 0.1), scalar("z", 0, np.uint8)]))
    assert placement.quantized == ("reshape",) and placement.float_nodes == (("relu", "Relu"),)


@pytest.mark.parametrize("passes,float_ops", [((), {"MaxPool": 1}), (("relu-before-maxpool",), {})])
def test_the_qnn_quantizer_leaves_a_pool_before_a_relu_in_float_unless_the_relu_goes_first(tmp_path, passes,
                                                                                          float_ops):
    """VanillaNet's conv -> MaxPool -> ReLU through onnxruntime's QNN QDQ configuration: the ReLU is folded into
    the pool's output scale, so the pool sits between two scales and computes in float."""
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 4, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2], name="pool"),
             helper.make_node("Relu", ["p"], ["y"], name="relu"),
             helper.make_node("Conv", ["y", "w"], ["out"], pads=[1, 1, 1, 1], name="conv_2")]
    fp32 = model(nodes, [weight], output="out")
    apply_passes(fp32, passes)
    src, dst = tmp_path / "fp32.onnx", tmp_path / "qdq.onnx"
    onnx.save(fp32, src)
    samples = iter([{"x": np.random.default_rng(i).standard_normal(SHAPE).astype(np.float32)} for i in range(4)])

    class Samples(CalibrationDataReader):
        def get_next(self):
            return next(samples, None)

    quantize(str(src), str(dst), get_qnn_qdq_config(str(src), Samples(), activation_type=QuantType.QUInt8,
                                                    weight_type=QuantType.QUInt8))
    placement = qdq_placement(dst)
    assert placement.float_ops() == float_ops and {"conv", "conv_2"} <= set(placement.quantized)
