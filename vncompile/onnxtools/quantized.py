"""How fully a Q/DQ graph is quantized: which compute nodes run on integers and which in float.

A runtime that consumes Q/DQ graphs (ONNX Runtime's QDQ node units, which the QNN execution provider
builds its HTP graph from) runs a node on integers only as a unit ``DequantizeLinear -> node ->
QuantizeLinear``; any other node computes in float, with its Q/DQ neighbours as real conversions.
A compute node (anything but QuantizeLinear, DequantizeLinear and Constant) is quantized when

- every float input it computes on comes from a DequantizeLinear (a Conv/Gemm bias may stay float;
  shape, axes and scale inputs of the ops that move values are not computed on);
- each output feeds exactly one node, a QuantizeLinear, and is no graph output;
- an op that only moves values (MaxPool, Reshape, Transpose, ...) has the same scale and zero point
  on both sides: only then is its DQ/Q pair dropped. With different ones (VanillaNet's MaxPool whose
  ReLU the quantizer folded into the output's scale) the op runs in float between a Dequantize and a
  Quantize.

The com.microsoft Q/DQ ops (16-bit types below opset 21) count as Q/DQ too.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
NOT_COMPUTE = QDQ_OPS | {"Constant"}
# ONNX Runtime's "drop Q/DQ" ops: they move values, so a unit needs one scale and zero point across them.
MOVES_VALUES = frozenset({"Expand", "Flatten", "Gather", "GatherElements", "MaxPool", "Reshape", "Resize", "Squeeze",
                          "Tile", "Transpose", "Unsqueeze"})
# Ops whose inputs after the first are parameters (bounds, pads, starts), not values computed on.
DATA_FIRST = MOVES_VALUES | {"Clip", "Pad", "Slice", "Split"}
FLOAT_BIAS = frozenset({"Conv", "ConvTranspose", "Gemm"})  # input 2 may be a float bias
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
                         onnx.TensorProto.DOUBLE})


@dataclass(frozen=True)
class QdqPlacement:
    """A Q/DQ graph's compute nodes: those in a quantized unit, and those that compute in float."""

    quantized: tuple[str, ...]  # node names, in graph order
    float_nodes: tuple[tuple[str, str], ...]  # (node name, op type), in graph order

    @property
    def compute_nodes(self) -> int:
        return len(self.quantized) + len(self.float_nodes)

    def float_ops(self) -> dict[str, int]:
        """How many nodes of each op type compute in float, e.g. ``{"MaxPool": 3}``."""
        return dict(sorted(Counter(op for _, op in self.float_nodes).items()))


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant nodes' values by name (read lazily: weights may be external, unloaded)."""
    values = {init.name: init for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = value
    return values


def _same_quantization(dq: onnx.NodeProto, q: onnx.NodeProto, constants: dict[str, onnx.TensorProto]) -> bool:
    """The DequantizeLinear before a node and the QuantizeLinear after it have equal scale and zero point."""
    for slot in (1, 2):
        a = dq.input[slot] if len(dq.input) > slot else ""
        b = q.input[slot] if len(q.input) > slot else ""
        if a == b:
            continue
        if a not in constants or b not in constants:
            return False
        x, y = numpy_helper.to_array(constants[a]), numpy_helper.to_array(constants[b])
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(x, y):
            return False
    return True


def qdq_placement(model: onnx.ModelProto | str | Path) -> QdqPlacement:
    """Which compute nodes of a Q/DQ graph are quantized and which compute in float."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)  # scales and zero points are small, inline
    # Element types of the tensors nodes produce (a shape is no float input); without them, each counts as float.
    with contextlib.suppress(Exception):
        model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    constants = _constants(graph)
    producer = {name: node for node in graph.node for name in node.output if name}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types.update({name: tensor.data_type for name, tensor in constants.items()})
    graph_outputs = {o.name for o in graph.output}

    def float_input(name: str) -> bool:
        """A value the node computes on in float: not from a DequantizeLinear, and of a float type."""
        source = producer.get(name)
        if source is not None and source.op_type == "DequantizeLinear":
            return False
        elem_type = types.get(name, onnx.TensorProto.UNDEFINED)
        return elem_type in FLOAT_TYPES or elem_type == onnx.TensorProto.UNDEFINED  # unknown: assume float

    quantized: list[str] = []
    float_nodes: list[tuple[str, str]] = []
    for node in graph.node:
        if node.op_type in NOT_COMPUTE:
            continue
        inputs = [(slot, name) for slot, name in enumerate(node.input) if name]
        if node.op_type in DATA_FIRST:
            inputs = inputs[:1]
        ok = not any(float_input(name) for slot, name in inputs
                     if not (node.op_type in FLOAT_BIAS and slot == 2))
        outputs = [name for name in node.output if name]
        quantizers = [consumers.get(name, []) for name in outputs]
        ok = ok and bool(outputs) and all(
            name not in graph_outputs and len(users) == 1 and users[0].op_type == "QuantizeLinear"
            for name, users in zip(outputs, quantizers, strict=True))
        if ok and node.op_type in MOVES_VALUES:
            dq = producer.get(node.input[0])
            ok = dq is not None and _same_quantization(dq, quantizers[0][0], constants)
        if ok:
            quantized.append(node.name or node.op_type)
        else:
            float_nodes.append((node.name or node.op_type, node.op_type))
    return QdqPlacement(tuple(quantized), tuple(float_nodes))
