"""An analytic memory plan from an ONNX graph alone: why shortcuts cost memory.

Tensor sizes come from shape inference. The graph is first read as the compilers run it: each
Conv (or Gemm) absorbs the activation and the residual Add that only it feeds (rknn's ConvRelu /
ConvAdd, onnxruntime's FusedConv, OpenVINO's fused eltwise), so a fused chain writes one tensor,
not three. Each activation then lives from the step of the op that produces it (graph inputs: from
the start) to the step of its last consumer (graph outputs: to the end), ops running in the graph's
order. While an op runs, its inputs and outputs are all live. Two figures:

- ``peak_live_bytes``: the most bytes live at any one step, a lower bound for any
  allocator that keeps every tensor whole;
- ``arena_bytes``: what a static planner working in execution order allocates: each output at
  the best-fitting free hole (the smallest that holds it), else on top of the arena, its bytes
  freed after its last consumer. This is the strategy rknn's compiler names
  (``memory_plan_strategy=BestFit``) and it reproduces its "Total Internal Memory Size"; holes
  that a later, larger tensor cannot use are why an arena exceeds the peak of live bytes.

A residual block keeps its input alive across the whole block for the final add;
the plan's ``live_at_peak`` shows exactly that tensor beside the block's own maps. ``memory_timeline``
gives the live bytes step by step, the peak marked: where across the network the memory goes.
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

# Bytes per activation element at each precision, and per weight element where that differs: int16 is
# 16-bit activations with 8-bit weights (QNN's A16W8).
ELEMENT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int16": 2}
WEIGHT_BYTES = {**ELEMENT_BYTES, "int16": 1}


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
                            detail=f"analytic plan (fused ops, best-fit arena in execution order); peak at "
                                   f"{self.peak_node} with {live} live")


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


# Ops a compiler folds into the Conv that alone feeds them: activations, and one residual Add.
FUSED_ACTIVATIONS = {"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "PRelu"}
FUSED_ADDS = {"Add", "Sum"}
FUSING_OPS = {"Conv", "Gemm"}


@dataclass(frozen=True)
class PlannedOp:
    """One op as the compiler runs it: a node, or a Conv with the activation / Add it absorbed."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fused: tuple[str, ...] = ()  # op types folded in, e.g. ("Add", "Relu")
    op_type: str = ""  # the node's own

    @property
    def op(self) -> str:
        """What runs, as one word: ``Conv+Add+Relu``."""
        return "+".join((self.op_type, *self.fused))


def fused_ops(graph: onnx.GraphProto, weights: set[str]) -> list[PlannedOp]:
    """The graph's nodes in order, each Conv/Gemm with the activation and residual Add that only it feeds.

    An Add is folded into the Conv that runs last of its inputs' producers (its other input must
    exist before that Conv runs), so a projection shortcut's Add joins whichever branch ends later.
    """
    nodes = [n for n in graph.node if n.op_type != "Constant"]
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    graph_outputs = {o.name for o in graph.output}
    node_outputs = {name for node in nodes for name in node.output}
    produced_at: dict[str, int] = {}
    absorbed: set[int] = set()
    ops: list[PlannedOp] = []
    for index, node in enumerate(nodes):
        if index in absorbed:
            continue
        inputs = [name for name in node.input if name and name not in weights]
        outputs, fused = list(node.output), []
        while node.op_type in FUSING_OPS and len(outputs) == 1 and outputs[0] not in graph_outputs:
            users = consumers.get(outputs[0], [])
            if len(users) != 1 or users[0] in absorbed:
                break
            user = nodes[users[0]]
            others = [name for name in user.input if name and name != outputs[0] and name not in weights]
            if user.op_type in FUSED_ACTIVATIONS and not others:
                pass
            elif (user.op_type in FUSED_ADDS and not set(fused) & (FUSED_ACTIVATIONS | FUSED_ADDS)
                  and len(others) == 1 and (others[0] in produced_at or others[0] not in node_outputs)):
                inputs.extend(others)
            else:
                break
            absorbed.add(users[0])
            fused.append(user.op_type)
            outputs = list(user.output)
        for name in outputs:
            produced_at[name] = len(ops)
        ops.append(PlannedOp(node.name or node.op_type, tuple(inputs), tuple(o for o in outputs if o), tuple(fused),
                             node.op_type))
    return ops


def tensor_lifetimes(model: onnx.ModelProto, element_bytes: int | None = None,
                     weight_element_bytes: int | None = None) -> tuple[list[TensorLife], int, list[PlannedOp]]:
    """Activation lifetimes over the fused ops in execution order, the weight bytes and the ops; float weights
    are re-sized to ``weight_element_bytes`` (default: ``element_bytes``)."""
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    sizes = _static_sizes(model, element_bytes)
    weight_bytes, weights = _weight_bytes(model, element_bytes if weight_element_bytes is None
                                          else weight_element_bytes)
    graph = model.graph
    ops = fused_ops(graph, weights)
    last_step = max(len(ops) - 1, 0)
    first: dict[str, int] = {i.name: 0 for i in graph.input if i.name not in weights}
    last: dict[str, int] = dict(first)
    for step, op in enumerate(ops):
        for name in op.inputs:
            last[name] = step
        for name in op.outputs:
            first[name], last[name] = step, step
    for output in graph.output:
        last[output.name] = last_step
    missing = [name for name in first if name not in sizes]
    if missing:
        raise InputError(f"the analytic plan needs static shapes; no shape for tensor '{missing[0]}'")
    lives = [TensorLife(name, sizes[name], first[name], last[name]) for name in first]
    return lives, weight_bytes, ops


def best_fit_arena(lives: list[TensorLife]) -> tuple[int, dict[str, int]]:
    """Place tensors in the order they are produced, each in the smallest free hole that holds it
    (else on top of the arena, joining a free hole at the top), freeing it after its last step."""
    holes: list[tuple[int, int]] = []  # free (start, end) below ``top``, sorted, coalesced
    top = 0
    offsets: dict[str, int] = {}
    by_step: dict[int, list[TensorLife]] = {}
    for life in lives:
        by_step.setdefault(life.first, []).append(life)
    ending: dict[int, list[TensorLife]] = {}
    for life in lives:
        ending.setdefault(life.last, []).append(life)
    for step in range(max((t.last for t in lives), default=-1) + 1):
        for life in by_step.get(step, []):
            fitting = [(end - start, start, end) for start, end in holes if end - start >= life.bytes]
            if fitting:
                _, start, end = min(fitting)
                holes.remove((start, end))
                if start + life.bytes < end:
                    holes = _free(holes, start + life.bytes, end)
            elif holes and holes[-1][1] == top:
                start = holes.pop()[0]
                top = start + life.bytes
            else:
                start, top = top, top + life.bytes
            offsets[life.name] = start
        for life in ending.get(step, []):
            holes = _free(holes, offsets[life.name], offsets[life.name] + life.bytes)
    return top, offsets


def _free(holes: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for a, b in sorted([*holes, (start, end)]):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _lifetimes(model: onnx.ModelProto | str | Path,
               precision: str | None) -> tuple[list[TensorLife], int, list[PlannedOp]]:
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    element_bytes = ELEMENT_BYTES[precision] if precision else None
    return tensor_lifetimes(model, element_bytes, WEIGHT_BYTES[precision] if precision else None)


def _live_bytes(lives: list[TensorLife]) -> list[int]:
    """The bytes live at each step."""
    live_bytes = [0] * (max((t.last for t in lives), default=0) + 1)
    for t in lives:
        for step in range(t.first, t.last + 1):
            live_bytes[step] += t.bytes
    return live_bytes


def _live_at(lives: list[TensorLife], step: int) -> list[tuple[str, int]]:
    return sorted(((t.name, t.bytes) for t in lives if t.first <= step <= t.last), key=lambda x: -x[1])


def plan_memory(model: onnx.ModelProto | str | Path, precision: str | None = None) -> MemoryPlan:
    """The memory plan of a static-shape graph; ``precision`` re-sizes its float tensors (activations and
    weights each at the precision's element size)."""
    lives, weight_bytes, ops = _lifetimes(model, precision)
    live_bytes = _live_bytes(lives)
    peak_step = int(np.argmax(live_bytes)) if lives else 0
    peak_node = ops[peak_step].name if ops else ""
    arena_bytes, _ = best_fit_arena(lives)
    return MemoryPlan(weight_bytes, max(live_bytes, default=0), arena_bytes, peak_step, peak_node,
                      _live_at(lives, peak_step), len(live_bytes))


@dataclass(frozen=True)
class TimelineStep:
    """One op of the plan: the bytes live while it runs; at the peak, which tensors they are."""

    step: int
    node: str
    op: str  # with what it absorbed: Conv+Relu
    live_bytes: int
    is_peak: bool
    live_at_peak: tuple[tuple[str, int], ...] = ()  # (tensor, bytes), largest first; the peak step's only


def memory_timeline(model: onnx.ModelProto | str | Path, precision: str | None = None) -> list[TimelineStep]:
    """The plan step by step (``plan_memory``'s ops and lifetimes): live bytes per op, the first peak marked."""
    lives, _, ops = _lifetimes(model, precision)
    live_bytes = _live_bytes(lives)
    peak_step = int(np.argmax(live_bytes)) if lives else 0
    return [TimelineStep(step, op.name, op.op, live_bytes[step], step == peak_step,
                         tuple(_live_at(lives, step)) if step == peak_step else ())
            for step, op in enumerate(ops)]
