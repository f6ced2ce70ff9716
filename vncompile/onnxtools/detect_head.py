"""The YOLOv8/YOLO11 Detect output split into box and class-score outputs, for int8 NPUs.

The exported head ends in Concat(boxes [B, 4, A], Sigmoid(logits) [B, nc, A]) along the channels: one int8
output then carries pixel coordinates (up to the input size) and scores (0..1) with one scale, and the
scores round to zero (Rockchip's NPUs: all-zero class scores; Rockchip's model zoo splits the outputs).
``split_detect_head`` makes the two tensors the graph's outputs instead; ``join_detect_head`` puts a run's
two outputs back together for decoding (``data.detection.decode_yolo``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


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
