"""Exact deploy fusion of an ONNX graph still in training form, as graph passes (the ``deploy-fusion`` group).

A VanillaNet block in training form is 1x1 conv -> BN -> LeakyRelu(act_learn) -> 1x1 conv -> BN -> pool
-> ReLU -> depthwise conv -> BN. Once act_learn is 1 the LeakyRelu is the identity, and the network is the
deploy form's function with twice its 1x1 convs. Exporters keep that form: Ultralytics' folds BN into the
convs but keeps every conv and the LeakyRelu(alpha=1.0) between them (ONNX Runtime's optimizer drops the
LeakyRelu, never a conv). Three passes, each exact and each useful on any network:

- ``fold-batchnorm``: an inference BatchNormalization folded into the Conv before it, when that conv's
  output feeds nothing else (the series activation's BN into its depthwise conv included);
- ``drop-identity-leaky-relu``: a LeakyRelu whose alpha is exactly 1.0 removed (it is the identity);
- ``merge-pointwise-convs``: a Conv (any kernel, stride, pads, dilation; group 1) followed by a 1x1 Conv
  (stride 1, no pads, group 1) with nothing between them becomes one conv with the first one's geometry:
  W = W2 W1, b = W2 b1 + b2, exact at every position, padded borders included, since the 1x1 conv acts
  pointwise. Any chain of linear convs is merged, VanillaNet's or not, unless the merged conv would cost
  more than the two (a bottleneck: 256 -> 64 channels (3x3) -> 256 stays two convs).

Weights are combined in float64 and cast back to the graph's dtype; only weights stored as initializers
are read (a weight computed in the graph, or one listed as a graph input that a caller could replace,
leaves its conv alone). A LeakyRelu with alpha below 1 between a conv and a 1x1 conv is a mid-schedule
export (act_learn had not reached 1): nothing is merged across it, and ``DeployFusionReport`` says so with
the alpha it found.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .passes import GROUPS, register

FOLD_BN = "fold-batchnorm"
DROP_LEAKY_RELU = "drop-identity-leaky-relu"
MERGE_CONVS = "merge-pointwise-convs"
DEPLOY_FUSION = (FOLD_BN, DROP_LEAKY_RELU, MERGE_CONVS)
DEPLOY_FUSION_GROUP = "deploy-fusion"
GROUPS[DEPLOY_FUSION_GROUP] = DEPLOY_FUSION


class _View:
    """Who produces and who reads each tensor, and the graph's constant weights (rebuilt after each rewrite)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.outputs = {o.name for o in graph.output}
        self.inputs = {i.name for i in graph.input}
        self.initializers = {t.name: t for t in graph.initializer if t.name not in self.inputs}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.users: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.output:
                self.producer[name] = node
            for name in node.input:
                self.users.setdefault(name, []).append(node)

    def constant(self, name: str) -> np.ndarray | None:
        init = self.initializers.get(name) if name else None
        return None if init is None else numpy_helper.to_array(init)

    def shape(self, name: str) -> tuple[int, ...] | None:
        """A constant's shape, without reading its values."""
        init = self.initializers.get(name) if name else None
        return None if init is None else tuple(init.dims)

    def only_user(self, tensor: str) -> onnx.NodeProto | None:
        """The one node reading ``tensor``, if exactly one does and it is not a graph output."""
        users = self.users.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def add_constant(self, array: np.ndarray, base: str) -> str:
        taken = set(self.initializers) | self.inputs | set(self.producer) | set(self.users)
        name, i = base, 1
        while name in taken:
            name, i = f"{base}_{i}", i + 1
        init = numpy_helper.from_array(np.ascontiguousarray(array), name)
        self.graph.initializer.append(init)
        self.initializers[name] = init
        return name


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _set_conv_weights(view: _View, conv: onnx.NodeProto, weight: np.ndarray, bias: np.ndarray, dtype) -> None:
    label = conv.name or conv.output[0]
    names = [view.add_constant(weight.astype(dtype), f"{label}_fused_weight"),
             view.add_constant(bias.astype(dtype), f"{label}_fused_bias")]
    del conv.input[1:]
    conv.input.extend(names)


def _conv_weights(view: _View, conv: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """A Conv's weight and bias (zeros when it has none) as constants, or None when either is computed."""
    weight = view.constant(conv.input[1]) if len(conv.input) > 1 else None
    if weight is None or weight.dtype.kind != "f":
        return None
    if len(conv.input) > 2 and conv.input[2]:
        bias = view.constant(conv.input[2])
        if bias is None:
            return None
    else:
        bias = np.zeros(weight.shape[0], weight.dtype)
    return weight, bias


def _tidy(graph: onnx.GraphProto) -> None:
    """Drop initializers no node reads any more and inferred shapes of tensors that no longer exist."""
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    alive = read | {name for node in graph.node for name in node.output}
    infos = [v for v in graph.value_info if v.name in alive]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _remove(graph: onnx.GraphProto, node: onnx.NodeProto) -> None:
    for i, candidate in enumerate(graph.node):
        if candidate is node:
            del graph.node[i]
            return


def _fold_one_bn(view: _View, bn: onnx.NodeProto) -> bool:
    attrs = _attrs(bn)
    if attrs.get("training_mode", 0) or len([o for o in bn.output if o]) != 1 or len(bn.input) != 5:
        return False
    conv = view.producer.get(bn.input[0])
    if conv is None or conv.op_type != "Conv" or view.only_user(bn.input[0]) is not bn:
        return False
    weights = _conv_weights(view, conv)
    stats = [view.constant(name) for name in bn.input[1:5]]
    if weights is None or any(s is None for s in stats):
        return False
    weight, bias = weights
    scale, shift, mean, var = (np.asarray(s, np.float64).reshape(-1) for s in stats)  # type: ignore[arg-type]
    if any(len(s) != weight.shape[0] for s in (scale, shift, mean, var)):
        return False
    factor = scale / np.sqrt(var + float(attrs.get("epsilon", 1e-5)))
    folded_weight = weight.astype(np.float64) * factor.reshape(-1, *([1] * (weight.ndim - 1)))
    folded_bias = shift + (bias.astype(np.float64) - mean) * factor
    _set_conv_weights(view, conv, folded_weight, folded_bias, weight.dtype)
    conv.output[0] = bn.output[0]
    _remove(view.graph, bn)
    return True


def _rewrite_until_done(model: onnx.ModelProto, op_type: str, rewrite) -> int:
    """Apply ``rewrite(view, node)`` to nodes of ``op_type`` until none is rewritten: how many were."""
    graph, count = model.graph, 0
    while True:
        view = _View(graph)
        if not any(rewrite(view, node) for node in list(graph.node) if node.op_type == op_type):
            break
        count += 1
    if count:
        _tidy(graph)
    return count


@register(FOLD_BN, "an inference BatchNormalization folded into the Conv before it (exact)")
def fold_batchnorm(model: onnx.ModelProto) -> int:
    return _rewrite_until_done(model, "BatchNormalization", _fold_one_bn)


def _bypass(view: _View, node: onnx.NodeProto) -> bool:
    """Remove a one-input, one-output identity node, its readers reading its input instead."""
    source, result = node.input[0], node.output[0]
    if result not in view.outputs:
        for user in view.users.get(result, []):
            user.input[:] = [source if name == result else name for name in user.input]
    else:  # the graph's output keeps its name: the node before writes it
        producer = view.producer.get(source)
        if producer is None or source in view.outputs:
            return False
        producer.output[:] = [result if name == source else name for name in producer.output]
        for user in view.users.get(source, []):
            user.input[:] = [result if name == source else name for name in user.input]
    _remove(view.graph, node)
    return True


def _leaky_alpha(node: onnx.NodeProto) -> float:
    return float(_attrs(node).get("alpha", 0.01))


@register(DROP_LEAKY_RELU, "a LeakyRelu with alpha exactly 1.0 (the identity) removed")
def drop_identity_leaky_relu(model: onnx.ModelProto) -> int:
    return _rewrite_until_done(model, "LeakyRelu", lambda view, node: _leaky_alpha(node) == 1.0 and _bypass(view, node))


def _is_pointwise(view: _View, conv: onnx.NodeProto) -> bool:
    """A 1x1 conv with stride 1, no pads, group 1 and a constant weight."""
    shape = view.shape(conv.input[1]) if conv.op_type == "Conv" and len(conv.input) > 1 else None
    if shape is None or len(shape) < 3:
        return False
    attrs, spatial = _attrs(conv), len(shape) - 2
    return (all(k == 1 for k in shape[2:]) and attrs.get("group", 1) == 1
            and list(attrs.get("strides", [1] * spatial)) == [1] * spatial
            and not any(attrs.get("pads", [0] * 2 * spatial))
            and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET", b"VALID", "VALID"))


def _merge_one(view: _View, outer: onnx.NodeProto) -> bool:
    inner = view.producer.get(outer.input[0])
    if (inner is None or inner.op_type != "Conv" or view.only_user(outer.input[0]) is not outer
            or _attrs(inner).get("group", 1) != 1 or not _is_pointwise(view, outer)):
        return False
    outer_weights, inner_weights = _conv_weights(view, outer), _conv_weights(view, inner)
    if outer_weights is None or inner_weights is None:
        return False
    (w2, b2), (w1, b1) = outer_weights, inner_weights
    out, mid, cin, taps = w2.shape[0], w1.shape[0], w1.shape[1], int(np.prod(w1.shape[2:]))
    if w2.shape[1] != mid or out * cin * taps > mid * cin * taps + out * mid:
        return False  # the merged conv would cost more multiply-adds per position than the two
    pointwise = w2.reshape(out, mid).astype(np.float64)
    weight = np.tensordot(pointwise, w1.astype(np.float64), axes=(1, 0))
    bias = pointwise @ b1.astype(np.float64) + b2.astype(np.float64)
    _set_conv_weights(view, inner, weight, bias, w1.dtype)
    inner.output[0] = outer.output[0]
    _remove(view.graph, outer)
    return True


@register(MERGE_CONVS, "a Conv followed by a 1x1 Conv with nothing between them merged into one conv (exact)")
def merge_pointwise_convs(model: onnx.ModelProto) -> int:
    return _rewrite_until_done(model, "Conv", _merge_one)


@dataclass(frozen=True)
class Block:
    """A conv -> [BN] -> LeakyRelu -> 1x1 conv pair: the two 1x1 convs of a VanillaNet block in training form."""

    node: str  # the LeakyRelu
    alpha: float
    tensors: tuple[str, str]  # the LeakyRelu's input and output


def vanillanet_blocks(model: onnx.ModelProto) -> list[Block]:
    """The training-form blocks of a graph: a LeakyRelu (any alpha) after a Conv, directly or through a
    BatchNormalization, whose output only a 1x1 Conv reads."""
    view, blocks = _View(model.graph), []
    for node in model.graph.node:
        if node.op_type != "LeakyRelu":
            continue
        before = view.producer.get(node.input[0])
        if before is not None and before.op_type == "BatchNormalization":
            before = view.producer.get(before.input[0])
        after = view.only_user(node.output[0])
        if before is None or before.op_type != "Conv" or after is None or not _is_pointwise(view, after):
            continue
        blocks.append(Block(node.name or node.output[0], _leaky_alpha(node), (node.input[0], node.output[0])))
    return blocks


@dataclass(frozen=True)
class DeployFusionReport:
    counts: dict[str, int]  # pass -> places rewritten
    blocks_found: int
    blocks_fused: int
    nodes_before: int
    nodes_after: int
    convs_before: int
    convs_after: int
    mid_schedule: tuple[Block, ...] = field(default=())  # blocks left unfused: their LeakyRelu is not the identity

    def as_dict(self) -> dict[str, Any]:
        """For a manifest: counts, blocks, nodes and convs before/after, and the findings."""
        result = asdict(self)
        result["mid_schedule"] = [{"node": b.node, "alpha": b.alpha} for b in self.mid_schedule]
        result["summary"], result["finding"] = self.summary(), self.finding()
        return result

    def summary(self) -> str:
        """One line for the console."""
        if not self.blocks_found and not any(self.counts.values()):
            return "deploy fusion: no VanillaNet block and nothing to fold; the graph is unchanged"
        blocks = (f"{self.blocks_fused} of {self.blocks_found} VanillaNet blocks fused"
                  if self.blocks_found else "no VanillaNet block")
        return (f"deploy fusion: {blocks}; {self.nodes_before} -> {self.nodes_after} nodes, "
                f"{self.convs_before} -> {self.convs_after} convs")

    def finding(self) -> str | None:
        """One line when blocks were left unfused because their LeakyRelu is not the identity."""
        if not self.mid_schedule:
            return None
        alphas = ", ".join(f"{a:g}" for a in sorted({b.alpha for b in self.mid_schedule}))
        return (f"{len(self.mid_schedule)} VanillaNet block(s) left unfused: LeakyRelu alpha {alphas}, not 1 "
                f"(a mid-schedule export: act_learn had not reached 1), e.g. '{self.mid_schedule[0].node}'")


def _census(model: onnx.ModelProto) -> tuple[int, int]:
    return len(model.graph.node), sum(n.op_type == "Conv" for n in model.graph.node)


def deploy_fusion_report(before: onnx.ModelProto, after: onnx.ModelProto, counts: dict[str, int]) -> DeployFusionReport:
    """What the deploy-fusion passes (``counts``) did to ``before``, giving ``after``."""
    blocks = vanillanet_blocks(before)
    remaining = {name for node in after.graph.node for name in (*node.input, *node.output)}
    fused = [b for b in blocks if not remaining & set(b.tensors)]
    (nodes_before, convs_before), (nodes_after, convs_after) = _census(before), _census(after)
    return DeployFusionReport(dict(counts), len(blocks), len(fused), nodes_before, nodes_after, convs_before,
                              convs_after, tuple(b for b in blocks if b.alpha != 1.0))


def fuse_for_deploy(model: onnx.ModelProto) -> DeployFusionReport:
    """Run the ``deploy-fusion`` passes on ``model`` (in place) and report what they did."""
    from .passes import apply_passes

    before = onnx.ModelProto()
    before.CopyFrom(model)
    counts = apply_passes(model, DEPLOY_FUSION)
    return deploy_fusion_report(before, model, counts)
