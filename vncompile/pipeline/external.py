"""An ONNX file from any exporter as the model: its graph is the network, and its function the reference.

``vncompile build model.onnx``: a classifier, a backbone or a whole detector (backbone, neck, head, with or
without NMS), exported by Ultralytics, mmdeploy, torch or anything else. The stages are those of a network
vncompile exports, with the given graph in the place of the export:

- *load*: the graph read and checked (``onnxtools.graph_file``), its weights and external data read in;
- *export*: the given graph at the build's input shape (a dynamic graph fixed to it unless ``--dynamic``):
  ``exported.onnx``, the form every later stage is checked against;
- *simplify*: onnxslim, then the exact deploy fusion (``deploy-fusion``: an exporter leaves a VanillaNet in
  training form) and the target's passes, each checked against the graph before it.

The reference is the given graph computed in float64 by the project's ONNX-to-torch rebuild (``OnnxAsTorch``)
at each verified shape. Where the rebuild does not take one of the graph's ops, the reference is ONNX
Runtime's float32 run of the given graph, and the manifest says so (``model.reference``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..api.request import InputShape
from ..core.errors import InputError
from ..onnxtools.graph_file import GraphFile, at_input_shape, load_graph
from .families import ExternalGraphFamily

log = logging.getLogger("vncompile")

FLOAT64_REBUILD = "float64 (the graph rebuilt in torch, node for node)"


@dataclass(frozen=True)
class LoadedGraph:
    graph: GraphFile
    family: ExternalGraphFamily
    model: onnx.ModelProto  # the whole graph, weights read in
    reference: str  # FLOAT64_REBUILD, or why the reference is ONNX Runtime's fp32 run
    rebuilt_at: dict = field(default_factory=dict, compare=False, repr=False)  # input shape -> the float64 rebuild

    features = ()  # the outputs are the graph's own, not selected feature maps

    @property
    def output_names(self) -> list[str]:
        return self.graph.output_names

    def _rebuilt(self, shape: tuple[int, ...]):
        """The float64 rebuild of the graph at ``shape``, built once per shape."""
        import torch

        from ..toolchains.workers.onnx_as_torch import OnnxAsTorch

        if shape not in self.rebuilt_at:
            self.rebuilt_at[shape] = OnnxAsTorch(at_input_shape(self.model, shape), dtype=torch.float64).eval()
        return self.rebuilt_at[shape]

    def at_shape(self, shape: InputShape | None) -> onnx.ModelProto:
        """The given graph at ``shape`` (None: as declared, dynamic dims kept)."""
        return at_input_shape(self.model, None if shape is None else shape.as_tuple())

    def float64_outputs(self, shape: InputShape, batches: np.ndarray) -> list[list[np.ndarray]]:
        """The reference: each batch through the given graph at ``shape``, in float64 where the rebuild runs it."""
        import torch

        from .stages import run_torch

        if self.reference != FLOAT64_REBUILD:
            from ..onnxtools.run import run_onnx_model

            return [[o.astype(np.float64) for o in outputs]
                    for outputs in run_onnx_model(self.at_shape(shape), batches)]
        return run_torch(self._rebuilt(shape.as_tuple()), batches, dtype=torch.float64)

    def description(self) -> dict:
        """What the manifest and ``inspect`` say of the graph."""
        graph = self.graph
        return {
            "path": graph.path.name, "producer": graph.producer, "opset": graph.opset, "nodes": graph.nodes,
            "input": {"name": graph.input_name, "dims": list(graph.input_dims)},
            "outputs": [{"name": name, "dims": list(dims)} for name, dims in graph.outputs],
            "fixed_size": list(graph.fixed_size) if graph.fixed_size else None,
            "external_data": [p.name for p in graph.external_files],
        }

    def detector(self) -> dict | None:
        """How its outputs decode into boxes, and what Ultralytics' metadata says (None: not a detector)."""
        family, metadata = self.family, self.family.metadata
        if family.detector is None:
            return None
        return {"decode": family.detector, "task": metadata.task, "names": list(metadata.names or ()),
                "imgsz": list(metadata.imgsz) if metadata.imgsz else None, "stride": metadata.stride}


def load_external(graph: GraphFile, family: ExternalGraphFamily, shape: InputShape) -> LoadedGraph:
    """The graph with its weights, and which reference it gets (tried at the build's ``shape``)."""
    import torch

    model = load_graph(graph)
    loaded = LoadedGraph(graph, family, model, FLOAT64_REBUILD)
    try:  # built and run once on zeros: any op or attribute the rebuild does not take shows here
        with torch.no_grad():
            loaded._rebuilt(shape.as_tuple())(torch.zeros(shape.as_tuple(), dtype=torch.float64))
    except Exception as exc:  # noqa: BLE001 - whatever the rebuild stumbles on, ONNX Runtime is the reference
        first = " ".join(str(exc).split(";")[0].split())[:300] or type(exc).__name__
        _check_onnx_runtime_runs(loaded.at_shape(shape), graph, first)
        log.warning("the float64 rebuild cannot run %s (%s): the reference is ONNX Runtime's fp32 run of the given "
                    "graph", graph.path.name, first)
        return LoadedGraph(graph, family, model, f"onnxruntime fp32 (the float64 rebuild does not take it: {first})")
    return loaded


def _check_onnx_runtime_runs(model: onnx.ModelProto, graph: GraphFile, rebuild_failure: str) -> None:
    """The fallback reference must load: else no reference can run the graph (one line, naming both reasons)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own exception types (NotImplemented, Fail, InvalidGraph)
        reason = " ".join(str(exc).split())[:300]
        raise InputError(f"{graph.path.name}: no reference can run this graph: the float64 rebuild does not take "
                         f"{rebuild_failure.removeprefix('the graph has ')}, and ONNX Runtime refuses it "
                         f"({reason})") from None


def describe_graph(graph: GraphFile, family: ExternalGraphFamily) -> dict:
    """``vncompile inspect model.onnx``: what the graph is, and what the exact deploy fusion would do to it."""
    from ..onnxtools.deploy_fusion import fuse_for_deploy

    loaded = LoadedGraph(graph, family, load_graph(graph), FLOAT64_REBUILD)
    fused = onnx.ModelProto()
    fused.CopyFrom(loaded.model)
    return {"kind": "onnx", "family": family.name, **loaded.description(), "detector": loaded.detector(),
            "deploy_fusion": fuse_for_deploy(fused).as_dict()}
