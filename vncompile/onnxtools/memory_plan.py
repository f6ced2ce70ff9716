"""An analytic memory plan from an ONNX graph alone: why shortcuts cost memory.

Tensor sizes come from shape inference; each activation lives from the step of the
node that produces it (graph inputs: from the start) to the step of its last
consumer (graph outputs: to the end), nodes running in the graph's topological
order. While a node runs, its inputs and outputs are all live. Two figures:

- ``peak_live_bytes``: the most bytes live at any one step, a lower bound for any
  allocator that keeps every tensor whole;
- ``arena_bytes``: what a static planner allocates: tensors placed greedily, largest
  first, at the lowest offset that no tensor alive at the same time occupies (the
  scheme of TFLite's and most NPU compilers' arena planners).

A residual block keeps its input alive across the whole block for the final add;
the plan's ``live_at_peak`` shows exactly that tensor beside the block's own maps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..api.target import MemoryFigure
from ..core.errors import InputError
from ..core.units import kb

ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


@dataclass(frozen=True)
class TensorLife:
    name: str
    bytes: int
    first: int  # step that produces it (0 for graph inputs)
    last: int  # step of its last consumer (the last step for graph outputs)


@dataclass(frozen=True)
class MemoryPlan:
    weight_bytes: int
    peak_live_bytes: int
    arena_bytes: int
    peak_step: int
    peak_node: str
    live_at_peak: list[tuple[str, int]]  # (tensor, bytes), largest first
    steps: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.arena_bytes

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "total_bytes": self.total_bytes}

    def figure(self) -> MemoryFigure:
        """The plan as a memory figure: weights + arena, ``estimated``, with the tensors live at its peak."""
        live = ", ".join(f"{name} {kb(size):,.0f} KB" for name, size in self.live_at_peak[:4])
        return MemoryFigure(kb(self.total_bytes), "estimated", weights_kb=kb(self.weight_bytes),
                            activations_kb=kb(self.arena_bytes),
                            detail=f"analytic plan (greedy arena); peak at {self.peak_node} with {live} live")


def _element_bytes(elem_type: int, element_bytes: int | None) -> int:
    """Bytes per element; ``element_bytes`` re-sizes floating tensors (plan a precision from an fp32 graph)."""
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    if element_bytes is not None and dtype.kind == "f":
        return element_bytes
    return dtype.itemsize


def _static_sizes(model: onnx.ModelProto, element_bytes: int | None) -> dict[str, int]:
    graph = model.graph
    sizes = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not tensor.HasField("shape") or any(d is None for d in dims):
            raise InputError(f"the analytic plan needs static shapes; tensor '{info.name}' has shape {dims}")
        sizes[info.name] = int(np.prod(dims, dtype=np.int64)) * _element_bytes(tensor.elem_type, element_bytes)
    return sizes


def _weight_bytes(model: onnx.ModelProto, element_bytes: int | None) -> tuple[int, set[str]]:
    graph = model.graph
    total, names = 0, set()
    for init in graph.initializer:
        total += int(np.prod(init.dims, dtype=np.int64)) * _element_bytes(init.data_type, element_bytes)
        names.add(init.name)
    for node in graph.node:
        if node.op_type == "Constant":
            value = numpy_helper.to_array(next(a.t for a in node.attribute if a.name == "value"))
            total += value.size * (element_bytes if element_bytes and value.dtype.kind == "f" else value.itemsize)
            names.update(node.output)
    return total, names


def tensor_lifetimes(model: onnx.ModelProto, element_bytes: int | None = None) -> tuple[list[TensorLife], int]:
    """Activation lifetimes in topological order, and the weight bytes."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    sizes = _static_sizes(model, element_bytes)
    weight_bytes, weights = _weight_bytes(model, element_bytes)
    graph = model.graph
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    last_step = max(len(nodes) - 1, 0)
    first: dict[str, int] = {i.name: 0 for i in graph.input if i.name not in weights}
    last: dict[str, int] = dict(first)
    for step, node in enumerate(nodes):
        for name in node.input:
            if name and name not in weights:
                last[name] = step
        for name in node.output:
            if name:
                first[name], last[name] = step, step
    for output in graph.output:
        last[output.name] = last_step
    missing = [name for name in first if name not in sizes]
    if missing:
        raise InputError(f"the analytic plan needs static shapes; no shape for tensor '{missing[0]}'")
    lives = [TensorLife(name, sizes[name], first[name], last[name]) for name in first]
    return lives, weight_bytes


def greedy_arena(lives: list[TensorLife]) -> tuple[int, dict[str, int]]:
    """Place tensors largest first at the lowest offset free for their whole lifetime."""
    placed: list[tuple[int, int, TensorLife]] = []  # (offset, end, life)
    offsets: dict[str, int] = {}
    for life in sorted(lives, key=lambda t: (-t.bytes, t.first, t.name)):
        busy = sorted((o, e) for o, e, other in placed if other.first <= life.last and life.first <= other.last)
        offset = 0
        for start, end in busy:
            if offset + life.bytes <= start:
                break
            offset = max(offset, end)
        placed.append((offset, offset + life.bytes, life))
        offsets[life.name] = offset
    return max((end for _, end, _ in placed), default=0), offsets


def plan_memory(model: onnx.ModelProto | str | Path, precision: str | None = None) -> MemoryPlan:
    """The memory plan of a static-shape graph; ``precision`` re-sizes its float tensors."""
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    element_bytes = ELEMENT_BYTES[precision] if precision else None
    lives, weight_bytes = tensor_lifetimes(model, element_bytes)
    steps = max((t.last for t in lives), default=0) + 1
    live_bytes = [0] * steps
    for t in lives:
        for step in range(t.first, t.last + 1):
            live_bytes[step] += t.bytes
    peak_step = int(np.argmax(live_bytes)) if lives else 0
    live = sorted(((t.name, t.bytes) for t in lives if t.first <= peak_step <= t.last), key=lambda x: -x[1])
    nodes = [n for n in model.graph.node if n.op_type != "Constant"]
    peak_node = (nodes[peak_step].name or nodes[peak_step].op_type) if nodes else ""
    arena_bytes, _ = greedy_arena(lives)
    return MemoryPlan(weight_bytes, max(live_bytes, default=0), arena_bytes, peak_step, peak_node, live, steps)
