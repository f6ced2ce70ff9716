"""A detector's head kept off an int8 NPU: the device graph ends at each level's maps, the host runs the rest.

The exported YOLOv8/YOLO11 head ends in Concat(boxes [B, 4, A], Sigmoid(logits) [B, nc, A]) along the channels:
one int8 output then carries pixel coordinates (up to the input size) and scores (0..1) with one scale, and the
scores round to zero (Rockchip's NPUs: all-zero class scores; Rockchip's model zoo splits the outputs).

``cut_host_tail`` (what builds use) cuts the graph where the head leaves the feature maps: the device computes
each level's box and class maps as separate outputs, each quantized on its own scale, and ``head_tail.onnx``
(the reshapes, the DFL, anchors, sigmoid, concat, any NMS) runs on the host in float32 (``run_with_tail``).
``split_detect_head`` / ``join_detect_head`` split only the final concat into boxes and scores: the
alternative ``benchmarks/detector_head_split.py`` measures against it (rknn int8, mAP50-95: 31.5 split,
32.9 cut at the maps, 11.4 concatenated, fp32 32.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from .files import save_onnx
from .graph_file import declared_dims


def split_detect_head(model: onnx.ModelProto) -> tuple[str, str] | None:
    """Rewrite ``model`` (in place) so that the Detect output's boxes and scores are two graph outputs, in the
    place of the concatenated one: their names, or None (graph unchanged) when it does not end that way."""
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    readers = {name for node in graph.node for name in node.input}
    for position, output in enumerate(graph.output):
        concat = producer.get(output.name)
        if concat is None or concat.op_type != "Concat" or len(concat.input) != 2 or output.name in readers:
            continue
        axis = next((helper.get_attribute_value(a) for a in concat.attribute if a.name == "axis"), None)
        scores = producer.get(concat.input[1])
        if axis not in (1, -2) or scores is None or scores.op_type != "Sigmoid":
            continue
        known = {v.name: v for v in graph.value_info}
        elem_type = output.type.tensor_type.elem_type
        parts = []
        for name in concat.input:
            part = onnx.ValueInfoProto()
            part.CopyFrom(known[name] if name in known else helper.make_tensor_value_info(name, elem_type, None))
            parts.append(part)
        outputs = [*graph.output[:position], *parts, *graph.output[position + 1:]]
        outputs = [onnx.ValueInfoProto.FromString(v.SerializeToString()) for v in outputs]
        del graph.output[:]
        graph.output.extend(outputs)
        graph.node.remove(concat)
        kept = [v for v in graph.value_info if v.name not in concat.input]
        del graph.value_info[:]
        graph.value_info.extend(kept)
        return concat.input[0], concat.input[1]
    return None


def join_detect_head(boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """A split head's outputs ([B, 4, A] and [B, nc, A]) as the Detect output [B, 4 + nc, A]."""
    return np.concatenate([boxes, scores], axis=-2)


# ---------------------------------------------------------------------------------------------- host tail


@dataclass(frozen=True)
class HostTail:
    """A detector cut where its head leaves the feature maps: the device computes up to ``cuts`` (each level's
    box and class maps, separately), the host the rest (the reshapes, DFL, anchors, sigmoid, concat, any NMS)."""

    cuts: tuple[str, ...]  # the device graph's outputs and the tail's inputs, in order
    device_nodes: int
    tail_nodes: int

    def as_dict(self) -> dict[str, object]:
        return {"outputs": list(self.cuts), "device_nodes": self.device_nodes, "tail_nodes": self.tail_nodes,
                "file": HEAD_TAIL, "runs_on": "the host CPU (ONNX Runtime, float32), after the device graph"}


HEAD_TAIL = "head_tail.onnx"


def _head_cuts(model: onnx.ModelProto) -> list[str]:
    """The tensors where the head leaves the maps: 4-D NCHW inputs (H*W > 1) of Reshape/Flatten nodes with no
    learned layer after them (an attention block's reshapes inside the network are not the head's), those
    downstream of another left out, and a per-level Concat of box and class maps along the channels taken apart
    (one int8 scale per map: box distributions and class logits differ)."""
    graph = model.graph
    shapes = {v.name: declared_dims(v) for v in (*graph.value_info, *graph.input, *graph.output)}
    producer = {name: node for node in graph.node for name in node.output}
    weights = {t.name: t for t in graph.initializer}
    constants = set(weights)

    def spatial(name: str) -> bool:
        dims = shapes.get(name, [])
        return (len(dims) == 4 and all(isinstance(d, int) for d in dims) and dims[2] * dims[3] > 1  # type: ignore
                and name not in constants and name in producer)

    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    # Whether a learned layer (a conv other than the DFL's fixed one, a Gemm or MatMul with constant weights) lies
    # after each tensor: nodes in reverse order (the graph is topologically sorted).
    learned_after: dict[str, bool] = {}
    for node in reversed(graph.node):
        learned = (node.op_type == "Conv" and not _is_fixed_conv(node, weights)) or (
            node.op_type in ("Gemm", "MatMul") and any(name in constants for name in node.input))
        below = learned or any(learned_after.get(out, False) for out in node.output)
        for name in node.input:
            learned_after[name] = learned_after.get(name, False) or below
    candidates = [node.input[0] for node in graph.node if node.op_type in ("Reshape", "Flatten")
                  and spatial(node.input[0]) and not learned_after.get(node.output[0], False)]

    def downstream(start: str) -> set[str]:
        seen, stack = set(), [start]
        while stack:
            for node in readers.get(stack.pop(), []):
                for out in node.output:
                    if out not in seen:
                        seen.add(out)
                        stack.append(out)
        return seen

    below = set().union(*(downstream(c) for c in candidates)) if candidates else set()
    cuts: list[str] = []
    for name in dict.fromkeys(c for c in candidates if c not in below):
        node = producer[name]
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)
        if node.op_type == "Concat" and axis in (1, -3) and all(spatial(i) for i in node.input):
            cuts += list(node.input)
        else:
            cuts.append(name)
    return list(dict.fromkeys(cuts))


def cut_host_tail(path: Path, device_path: Path, tail_path: Path) -> HostTail | None:
    """The graph at ``path`` cut into the device graph (``device_path``) and the host tail (``tail_path``); None
    (nothing written) when its head does not leave feature maps through reshapes."""
    from onnx.utils import Extractor

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), data_prop=True)
    cuts = _head_cuts(model)
    if not cuts:
        return None
    inputs = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    outputs = [o.name for o in model.graph.output]
    extractor = Extractor(model)
    device, tail = extractor.extract_model(inputs, cuts), extractor.extract_model(cuts, outputs)
    tail_weights = {t.name: t for t in tail.graph.initializer}
    if not tail.graph.node or any(n.op_type == "Conv" and not _is_fixed_conv(n, tail_weights)
                                  for n in tail.graph.node):
        return None  # the cut would leave learned layers on the host: not a head this understands
    for part in (device, tail):
        part.metadata_props.extend(model.metadata_props)
    save_onnx(device, device_path)
    save_onnx(tail, tail_path)
    return HostTail(tuple(cuts), len(device.graph.node), len(tail.graph.node))


def _is_fixed_conv(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> bool:
    """The DFL's conv (weights 0..reg_max-1, the expectation of a distribution): decoding, not a learned layer."""
    if len(node.input) < 2 or node.input[1] not in weights:
        return False
    from onnx import numpy_helper

    values = numpy_helper.to_array(weights[node.input[1]]).ravel()
    return values.size > 1 and np.allclose(values, np.arange(values.size))


def run_with_tail(tail_path: Path):
    """A function from the device graph's outputs (in ``cuts`` order) to the whole graph's."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(tail_path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(device_outputs: list[np.ndarray]) -> list[np.ndarray]:
        feed = {name: np.asarray(value, np.float32) for name, value in zip(names, device_outputs, strict=True)}
        return [np.asarray(o, np.float32) for o in session.run(None, feed)]

    return run
