"""Node order for memory: a topological order that finishes what it started (depth first).

Planners that allocate in execution order (the analytic plan, ONNX Runtime's, most NPU compilers')
hold every tensor from its producer to its last consumer. onnxslim sorts a graph breadth first,
which runs every strip of a tiled network side by side (all strips' maps alive at once); this
order instead runs each node's consumers as soon as they are ready, so a strip is finished, and its
maps freed, before the next one starts. Ties keep the given order, so a graph with nothing to gain
keeps its order.
"""

from __future__ import annotations

from pathlib import Path

from .files import save_onnx


def depth_first_order(path: Path) -> None:
    """Rewrite the ONNX at ``path`` with its nodes in depth-first topological order."""
    import onnx

    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    consumers: dict[int, list[int]] = {i: [] for i in range(len(nodes))}
    waiting = [0] * len(nodes)
    for i, node in enumerate(nodes):
        sources = {producer[name] for name in node.input if name in producer}
        waiting[i] = len(sources)
        for source in sources:
            consumers[source].append(i)
    stack = [i for i in reversed(range(len(nodes))) if waiting[i] == 0]
    order = []
    while stack:
        i = stack.pop()
        order.append(i)
        ready = []
        for j in consumers[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                ready.append(j)
        stack.extend(sorted(ready, reverse=True))  # the earliest-listed ready consumer runs next
    if len(order) != len(nodes):
        return  # a cycle (not a valid ONNX graph): leave it for the checker to report
    del model.graph.node[:]
    model.graph.node.extend(nodes[i] for i in order)
    save_onnx(model, path)
