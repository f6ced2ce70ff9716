"""Where int8 breaks: every conv's output in the int8 (Q/DQ) graph against the fp32 graph, on real inputs.

What rknn-toolkit2's ``accuracy_analysis`` and Polygraphy's layerwise mode do: mark each conv's
output as a graph output in both models, run the same inputs, and compare tensor by tensor
(cosine similarity and relative error, max abs / max |fp32|). The quantizer keeps each conv's
output name (it inserts Q/DQ after it), so the same names exist in both graphs.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from .quantized import qdq_placement
from .run import batches, onnx_feed, static_batch

LAYERS_CSV = "layers.csv"
COLUMNS = ["index", "node", "output", "cosine", "rel", "quantized"]


def _with_outputs(path: Path, names: list[str]) -> bytes:
    import onnx

    model = onnx.load(str(path))
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.helper.ValueInfoProto(name=name))
    return model.SerializeToString()


def _run_all(model: bytes, names: list[str], inputs: np.ndarray, batch: int) -> dict[str, list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # No graph optimizations: fusions would remove the very tensors being compared.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = onnx_feed(session)
    values: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for x in batches(inputs, batch):
        for name, value in zip(names, session.run(names, feed(x)), strict=True):
            values[name].append(np.asarray(value, dtype=np.float64).ravel())
    return values


def layer_errors(fp32: Path, int8: Path, inputs: np.ndarray) -> list[dict[str, Any]]:
    """One row per conv of the fp32 graph, in graph order."""
    import onnx

    fp32_graph = onnx.load(str(fp32), load_external_data=False).graph
    convs = [(n.name, n.output[0]) for n in fp32_graph.node if n.op_type == "Conv"]
    quantized_nodes = set(qdq_placement(int8).quantized)
    names = [output for _, output in convs]
    batch = static_batch(fp32)
    reference = _run_all(_with_outputs(fp32, names), names, inputs, batch)
    quantized = _run_all(_with_outputs(int8, names), names, inputs, batch)
    rows = []
    for index, (node, output) in enumerate(convs):
        ref, out = np.concatenate(reference[output]), np.concatenate(quantized[output])
        denom = float(np.linalg.norm(ref) * np.linalg.norm(out))
        cosine = float(np.dot(ref, out) / denom) if denom else 1.0
        rel = float(np.max(np.abs(ref - out)) / (np.max(np.abs(ref)) or 1.0))
        rows.append({"index": index, "node": node, "output": output, "cosine": cosine, "rel": rel,
                     "quantized": node in quantized_nodes})
    return rows


def write_layers(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "cosine": f"{row['cosine']:.6f}", "rel": f"{row['rel']:.4g}"})


def read_layers(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{**r, "cosine": float(r["cosine"]), "rel": float(r["rel"])} for r in csv.DictReader(f)]


def worst_layers(rows: list[dict[str, Any]], count: int = 3) -> list[dict[str, Any]]:
    """The layers whose int8 output departs most from fp32 *by themselves*: the drop in cosine from the
    layer feeding them, so the first broken layer ranks above everything downstream of it."""
    ranked = []
    previous = 1.0
    for row in rows:
        ranked.append((previous - row["cosine"], row))
        previous = row["cosine"]
    return [row for _, row in sorted(ranked, key=lambda x: -x[0])[:count]]


def describe_layers(rows: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['node']} (cosine {r['cosine']:.3f})" for r in rows)
