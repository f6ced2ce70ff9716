"""The network's own names for an ONNX graph's nodes: ``stem.0``, ``stages.2.conv``, ``layer1.0.conv1``.

torch.onnx's exporter records on each node the module it came from (``pkg.torch.onnx.name_scopes``); the
simplifier drops that metadata but keeps node and tensor names, so the build reads the scopes from the
exported graph and writes, beside the compiled graph, ``onnx_blocks.json``: each node and output tensor
of the graph the target compiled -> the module that computes it. Nodes a graph pass or the quantizer
added take the block of the tensor they derive from; a graph with no scopes (an external one) is named
by its nodes. Runtimes and compilers report layers by names derived from these (``conv2d_2_nchwc``,
``node_conv2d/WithoutBiases``, ``node_mean#1_rs#1``): ``Blocks.of`` resolves them.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from pathlib import Path

BLOCKS_FILE = "onnx_blocks.json"
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# What runtimes put between a node's name and what they derived from it.
SEPARATORS = re.compile(r"[_/#:.;]")


def module_scopes(model) -> dict[str, str]:
    """Each node's (and its outputs') innermost module, from the exporter's metadata; none without it."""
    scopes: dict[str, str] = {}
    for node in model.graph.node:
        recorded = next((p.value for p in node.metadata_props if p.key == SCOPES_KEY), None)
        if recorded is None:
            continue
        try:  # ['', 'stages.0', 'stages.0.conv', 'conv2d_2']: modules, then the op
            path = ast.literal_eval(recorded)
        except Exception:  # noqa: BLE001 - an untrusted graph's text: a malformed scope is no scope
            continue
        if not isinstance(path, (list, tuple)) or not all(isinstance(name, str) for name in path):
            continue
        module = next((name for name in reversed(path[:-1]) if name), "")
        if module:
            for name in (node.name, *node.output):
                if name:
                    scopes[name] = module
    return scopes


def network_blocks(exported: Path, compiled: Path) -> dict[str, str]:
    """Every node and output tensor of ``compiled`` -> its block, from the scopes of ``exported``: its own, that of
    a name it derives from, else (a node a graph pass added, such as the stem's space-to-depth) the block of the
    node it feeds; a node with none of these is its own block."""
    import onnx

    scopes = Blocks(module_scopes(onnx.load(str(exported), load_external_data=False)))
    nodes = list(onnx.load(str(compiled), load_external_data=False).graph.node)
    found = [next((b for b in map(scopes.of, _names(node)) if b), "") for node in nodes]
    consumer = {name: i for i, node in reversed(list(enumerate(nodes))) for name in node.input}  # the first reader
    blocks = dict(scopes.names)
    for i in reversed(range(len(nodes))):  # the nodes fed first, so a chain of added nodes takes the block it feeds
        if not found[i] and scopes.names:
            fed = [consumer[name] for name in nodes[i].output if name in consumer]
            found[i] = found[min(fed)] if fed else ""
        found[i] = found[i] or _names(nodes[i])[0]
        blocks.update((name, found[i]) for name in _names(nodes[i]))
    return blocks


def _names(node) -> list[str]:
    return [name for name in (node.name, *node.output) if name]


@dataclass(frozen=True)
class Blocks:
    names: dict[str, str]  # node or tensor name -> block

    @classmethod
    def of_build(cls, build_dir: Path) -> Blocks:
        """The build's ``onnx_blocks.json``; empty for a build that predates it (rows keep their own names)."""
        try:
            return cls(json.loads((build_dir / BLOCKS_FILE).read_text()))
        except (OSError, ValueError):
            return cls({})

    def of(self, name: str) -> str:
        """The block of a reported name: itself, else the longest known name it starts with, followed by a
        separator (a runtime's derived node); "" for what the runtime added of its own (layout reorders)."""
        if name in self.names:
            return self.names[name]
        best = max((key for key in self.names
                    if len(name) > len(key) and name.startswith(key) and SEPARATORS.match(name, len(key))),
                   key=len, default=None)
        return "" if best is None else self.names[best]
