"""Exact graph rewrites for int8 NPUs, in a registry (as onnxslim keeps its passes).

Each pass rewrites an ONNX graph into the same function in a form NPU compilers and quantizers
handle better, and says how many places it rewrote:

- ``relu-before-maxpool``: VanillaNet's block pools, then its series activation starts with a
  ReLU. ReLU(MaxPool(x)) == MaxPool(ReLU(x)) (max is monotone), and with the ReLU first a
  quantizer sees one scale on both sides of the pool: onnxruntime's QNN quantizer otherwise
  folds the ReLU into the pool's output scale (QNN then runs the pool in float), and the TFLite
  converter refuses the mismatched scales outright.
- ``stem-space-to-depth``: a k x k stride-k convolution on the graph input (VanillaNet's 4x4/s4
  stem) becomes SpaceToDepth(k) and a 1x1 convolution with the weights rearranged to match: the
  same sums, but a compiler that tiles a strided conv window by window (vela: one convolution
  per output position) runs one dense 1x1 conv instead.

A pass leaves a graph it cannot rewrite exactly unchanged (e.g. a stem whose input size is not a
multiple of its stride, or a dynamic shape).

Passes can be named together as a group (``GROUPS``): ``deploy-fusion`` is the exact deploy fusion of a
graph still in training form (``deploy_fusion``: BN folded into convs, identity LeakyRelus dropped,
linear conv chains merged). A group's name expands to its passes, which are counted one by one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..core.errors import InputError
from .files import save_onnx


@dataclass(frozen=True)
class GraphPass:
    name: str
    summary: str
    run: Callable[[onnx.ModelProto], int]  # rewrites the model in place; how many places


PASSES: dict[str, GraphPass] = {}
GROUPS: dict[str, tuple[str, ...]] = {}  # a name for several passes, run in this order


def register(name: str, summary: str) -> Callable[[Callable[[onnx.ModelProto], int]], Callable[[onnx.ModelProto], int]]:
    def add(run: Callable[[onnx.ModelProto], int]) -> Callable[[onnx.ModelProto], int]:
        PASSES[name] = GraphPass(name, summary, run)
        return run

    return add


def check_pass_names(names: tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in PASSES and n not in GROUPS]
    if unknown:
        raise InputError(f"unknown graph pass '{unknown[0]}'; choose from {', '.join((*PASSES, *GROUPS))}, or none")


def expand_pass_names(names: tuple[str, ...]) -> tuple[str, ...]:
    """``names`` with each group replaced by its passes (checked: an unknown name is one line)."""
    check_pass_names(names)
    return tuple(p for name in names for p in GROUPS.get(name, (name,)))


def apply_passes(model: onnx.ModelProto, names: tuple[str, ...]) -> dict[str, int]:
    """Run the passes ``names`` (groups expanded) in order on ``model`` (in place): how many places each
    rewrote (a pass named twice: the sum)."""
    counts: dict[str, int] = {}
    for name in expand_pass_names(names):
        counts[name] = counts.get(name, 0) + PASSES[name].run(model)
    return counts


def apply_passes_to_file(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """``apply_passes`` on the ONNX file at ``path``, rewritten (by a rename: see ``files``)."""
    model = onnx.load(str(path))
    counts = apply_passes(model, names)
    save_onnx(model, path)
    return counts


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _drop_value_info(graph: onnx.GraphProto, names: set[str]) -> None:
    """Forget inferred shapes of tensors a pass re-shaped (shape inference finds them again)."""
    kept = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)


@register("relu-before-maxpool", "MaxPool -> ReLU becomes ReLU -> MaxPool (the same function; one int8 scale "
                                 "across the pool)")
def relu_before_maxpool(model: onnx.ModelProto) -> int:
    graph = model.graph
    outputs = {o.name for o in graph.output}
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in graph.node]
    position = {id(n): i for i, n in enumerate(nodes)}
    users = {}
    for node in nodes:
        for name in node.input:
            users.setdefault(name, []).append(node)
    moved: dict[int, int] = {}  # ReLU position -> the pool position it now runs at
    reshaped = set()
    for pool in [n for n in nodes if n.op_type == "MaxPool"]:
        pooled = pool.output[0]
        following = users.get(pooled, [])
        if len(pool.output) != 1 or pooled in outputs or len(following) != 1 or following[0].op_type != "Relu":
            continue
        relu = following[0]
        activated = relu.output[0]
        relu.input[0], relu.output[0] = pool.input[0], f"{pooled}_relu_first"
        pool.input[0], pool.output[0] = relu.output[0], activated
        moved[position[id(relu)]] = position[id(pool)]
        reshaped.add(pooled)
    if moved:  # each ReLU now runs right before its pool
        order = sorted(range(len(nodes)), key=lambda i: (moved.get(i, i), 0 if i in moved else 1))
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)
        _drop_value_info(graph, reshaped)
    return len(moved)


def _static_dims(info: onnx.ValueInfoProto) -> list[int] | None:
    dims = [d.dim_value if d.HasField("dim_value") else None for d in info.type.tensor_type.shape.dim]
    return None if any(d is None for d in dims) else dims  # type: ignore[return-value]


@register("stem-space-to-depth", "a k x k stride-k conv on the input becomes SpaceToDepth(k) + a 1x1 conv "
                                 "(the same sums, one dense conv)")
def stem_space_to_depth(model: onnx.ModelProto) -> int:
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    users = _consumers(graph)
    rewrites = 0
    for graph_input in graph.input:
        dims = _static_dims(graph_input)
        # The image, or its cast (an fp16 graph with fp32 inputs casts first).
        images = [graph_input.name] + [n.output[0] for n in users.get(graph_input.name, []) if n.op_type == "Cast"]
        for image, conv in [(i, n) for i in images for n in users.get(i, []) if n.op_type == "Conv"]:
            attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
            weight = initializers.get(conv.input[1])
            if conv.input[0] != image:
                continue
            if weight is None or dims is None or len(dims) != 4:
                continue
            w = numpy_helper.to_array(weight)
            k = w.shape[2]
            if (w.shape[2] != w.shape[3] or k < 2 or list(attrs.get("strides", [1, 1])) != [k, k]
                    or any(attrs.get("pads", [0] * 4)) or attrs.get("group", 1) != 1
                    or list(attrs.get("dilations", [1, 1])) != [1, 1]
                    or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")
                    or dims[2] % k or dims[3] % k):
                continue
            # SpaceToDepth puts input channel c of block offset (dy, dx) at channel (dy * k + dx) * C + c.
            rearranged = w.transpose(0, 2, 3, 1).reshape(w.shape[0], k * k * w.shape[1], 1, 1)
            name = f"{conv.input[1]}_space_to_depth"
            if name not in initializers:  # two stems sharing one weight share its rearrangement too
                initializers[name] = numpy_helper.from_array(np.ascontiguousarray(rearranged), name)
                graph.initializer.append(initializers[name])
            blocks = f"{image}_space_to_depth_{k}"
            if blocks not in {o for n in graph.node for o in n.output}:
                nodes = list(graph.node)  # right after the image's producer (the graph input: first)
                at = next((i + 1 for i, n in enumerate(nodes) if image in n.output), 0)
                graph.node.insert(at, helper.make_node("SpaceToDepth", [image], [blocks], blocksize=k,
                                                       name=f"{image}_space_to_depth"))
            conv.input[0], conv.input[1] = blocks, name
            for attribute in conv.attribute:
                if attribute.name in ("kernel_shape", "strides"):
                    attribute.ints[:] = [1, 1]
            rewrites += 1
    if rewrites:  # the replaced stem weights, now unused
        still_used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        kept = [init for init in graph.initializer if init.name in still_used]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return rewrites


# The deploy-fusion passes register themselves (and their group) here; they need ``register`` above.
from . import deploy_fusion as _deploy_fusion  # noqa: E402, F401
