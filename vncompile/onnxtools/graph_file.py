"""An ONNX file given as the model (``vncompile build model.onnx``): read and checked without executing
anything, its declared input and outputs, opset, metadata and external-data files.

Nothing in an ONNX file runs when it is read: it is a protobuf. What can go wrong is one line each: not an
ONNX file, a graph the checker refuses, an external-data file that is missing or points outside the model's
folder (a path such as ``../../etc/passwd`` is refused, not followed), a graph without exactly one image
input. ``read_graph_file`` reads the structure (external weights are not loaded, though the checker reads the
whole file); ``load_graph`` reads the weights too.

A graph is *fixed-size* when its input's height and width are numbers: it builds at that size only (its
reshapes and its head's anchor count were traced at it). Symbolic dims (``height``, ``-1``/empty) take any
size: ``at_input_shape`` makes the copy a build compiles, the input fixed to the build's shape and the
shape computations that depend on it (``Shape`` -> ``Gather`` -> ``Concat`` -> ``Reshape``, as dynamic
exports write them) folded into constants, so that every target, and the float64 rebuild, sees a static
graph.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..core.errors import InputError

Dim = int | str  # a number, or a symbolic dim's name ("?" where it has none)


@dataclass(frozen=True)
class GraphFile:
    path: Path
    input_name: str
    input_dims: tuple[Dim, ...]  # as declared: N, C, H, W
    outputs: tuple[tuple[str, tuple[Dim, ...]], ...]  # (name, dims as declared), in order
    opset: int
    metadata: dict[str, str] = field(default_factory=dict)  # metadata_props (Ultralytics: task, names, imgsz...)
    producer: str = ""
    external_files: tuple[Path, ...] = ()  # external-data files, resolved inside the model's folder
    nodes: int = 0

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """(height, width) when both are fixed in the graph, else None (the graph takes any size)."""
        height, width = self.input_dims[2:4]
        return (height, width) if isinstance(height, int) and isinstance(width, int) else None

    @property
    def channels(self) -> int | None:
        channels = self.input_dims[1]
        return channels if isinstance(channels, int) else None

    @property
    def output_names(self) -> list[str]:
        return [name for name, _ in self.outputs]

    def sha256(self) -> str:
        """The graph's bytes and its external data's: what determines its function."""
        digest = hashlib.sha256()
        for path in (self.path, *self.external_files):
            digest.update(path.name.encode())
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()


def declared_dims(value: onnx.ValueInfoProto) -> tuple[Dim, ...]:
    """A value's dims as declared: numbers, or the symbolic dims' names ("?" where they have none)."""
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                 for d in value.type.tensor_type.shape.dim)


def _external_files(model: onnx.ModelProto, path: Path) -> tuple[Path, ...]:
    """The external-data files the graph's tensors name, each inside the model's folder and present."""
    from onnx.external_data_helper import _get_all_tensors

    folder = path.resolve().parent
    found: dict[Path, None] = {}
    for tensor in _get_all_tensors(model):  # initializers and Constant nodes' values, subgraphs included
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise InputError(f"{path}: tensor '{tensor.name}' keeps its data at '{location}', outside the model's "
                             "folder; refusing to read it (keep external data beside the .onnx)")
        if not target.is_file():
            raise InputError(f"{path}: external-data file '{location}' (tensor '{tensor.name}') is missing; copy it "
                             "beside the .onnx")
        found[target] = None
    return tuple(found)


def read_graph_file(path: Path) -> GraphFile:
    """The graph's structure (no weights read), checked; one line on the first problem."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is not an ONNX model
        raise InputError(f"{path}: not an ONNX model ({type(exc).__name__}); vncompile takes checkpoints "
                         "(.pth, .pt, .safetensors) and ONNX files") from None
    if not model.graph.node:
        raise InputError(f"{path}: not an ONNX model (no graph nodes)")
    external = _external_files(model, path)
    try:  # the checker reads external data by path itself (and refuses locations outside the folder too)
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{path}: the ONNX checker refuses the graph: {first}") from None
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InputError(f"{path}: the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                         "vncompile builds graphs with one image input")
    dims = declared_dims(inputs[0])
    if len(dims) != 4:
        raise InputError(f"{path}: input '{inputs[0].name}' has {len(dims)} dims; an NCHW image input (4 dims) "
                         "expected")
    if inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise InputError(f"{path}: input '{inputs[0].name}' is not float32; export the graph with a float32 input")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return GraphFile(path, inputs[0].name, dims, tuple((o.name, declared_dims(o)) for o in model.graph.output), opset,
                     {p.key: p.value for p in model.metadata_props}, model.producer_name, external,
                     len(model.graph.node))


def load_graph(graph: GraphFile) -> onnx.ModelProto:
    """The whole model, its external data read in (already checked to lie beside it)."""
    return onnx.load(str(graph.path))


def at_input_shape(model: onnx.ModelProto, shape: tuple[int, ...] | None) -> onnx.ModelProto:
    """A copy with the input fixed to ``shape`` (None: as declared) and every ``Shape`` whose input's shape is
    then known folded into a constant; shapes inferred."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {t.name for t in fixed.graph.initializer}
    image = next(i for i in fixed.graph.input if i.name not in initializers)
    if shape is not None:
        for dim, value in zip(image.type.tensor_type.shape.dim, shape, strict=True):
            dim.Clear()
            dim.dim_value = value
    # Outputs' and intermediates' declared shapes were traced at one size (or are symbolic): inferred again.
    del fixed.graph.value_info[:]
    for output in fixed.graph.output:
        output.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    known = {v.name: declared_dims(v) for v in (*inferred.graph.value_info, *inferred.graph.input)}
    for node in fixed.graph.node:
        if node.op_type != "Shape" or not all(isinstance(d, int) for d in known.get(node.input[0], ("?",))):
            continue
        dims = np.array(known[node.input[0]], dtype=np.int64)
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        dims = dims[attributes.get("start", 0):attributes.get("end", len(dims))]
        node.op_type = "Constant"
        del node.input[:]
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(dims, node.output[0])))
    return onnx.shape_inference.infer_shapes(fixed, data_prop=True)
