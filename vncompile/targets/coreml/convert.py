"""The verified ONNX as a Core ML ML Program (coremltools 9), and the check of its spec that runs here.

The graph is the one verification covered, rebuilt in torch node for node (``toolchains.workers.onnx_as_torch``,
the same module litert's and ethos-u's converters start from), traced and converted by coremltools' torch
frontend: fp16 compute and weights (``compute_precision``), or fp32; int8 quantizes the fp16 program's weights
linearly (symmetric, per output channel) with coremltools' optimize API, to be dequantized on the device.

coremltools 9.0 was tested with torch 2.7; it converts vncompile's op set (conv, leaky ReLU, max pool, mean,
reshape, add, linear, pad, slice, concat, transpose) under the project's torch too, and this module's
checks (and the tests) hold it to that.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import VncompileError

log = logging.getLogger("vncompile")

DEPLOYMENT_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")
COMPUTE_UNITS = ("ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE")
INT8_FROM = {"iOS": 16, "macOS": 13}  # constexpr weight dequantization: iOS16 / macOS13 on
COMPUTE_DTYPE = {"fp32": "FLOAT32", "fp16": "FLOAT16", "int8": "FLOAT16"}


def deployment_version(target: str) -> tuple[str, int]:
    family = "macOS" if target.startswith("macOS") else "iOS"
    return family, int(target[len(family):])


@dataclass(frozen=True)
class SpecCheck:
    """What the spec says, checked against what the build asked for."""

    input: dict[str, Any]
    outputs: list[dict[str, Any]]
    opset: str
    operations: int  # every MIL operation but constants
    op_types: dict[str, int]
    compute_dtypes: dict[str, int]  # compute ops' output types
    compressed_weights: int  # int8: constexpr-dequantized weight tensors

    def as_dict(self) -> dict[str, Any]:
        return {"input": self.input, "outputs": self.outputs, "opset": self.opset, "operations": self.operations,
                "op_types": self.op_types, "compute_dtypes": self.compute_dtypes,
                "compressed_weights": self.compressed_weights}


def _quiet():
    """coremltools' progress bars and its untested-torch warnings stay out of the terminal (the log has them)."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def import_coremltools() -> Any:
    with _quiet():
        import coremltools

    return coremltools


def convert(onnx_path: Path, precision: str, deployment_target: str, compute_units: str) -> Any:
    """The ML Program for the ONNX graph; a failure names the operation."""
    import onnx
    import torch

    from ...toolchains.workers.onnx_as_torch import OnnxAsTorch

    ct = import_coremltools()
    graph = onnx.load(str(onnx_path))
    try:
        module = OnnxAsTorch(graph).eval()
    except ValueError as exc:
        raise VncompileError(f"coreml cannot convert the graph: {exc}") from None
    input_name = module.input_name
    shape = [d.dim_value for d in next(i for i in graph.graph.input if i.name == input_name).type.tensor_type.shape.dim]
    example = torch.zeros(shape)
    with torch.no_grad(), _quiet():
        traced = torch.jit.trace(module, example)
        try:
            model = ct.convert(
                traced, source="pytorch", convert_to="mlprogram",
                inputs=[ct.TensorType(name=input_name, shape=tuple(shape), dtype=np.float32)],
                outputs=[ct.TensorType(name=name) for name in module.output_names],
                minimum_deployment_target=getattr(ct.target, deployment_target),
                compute_precision=ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16,
                compute_units=getattr(ct.ComputeUnit, compute_units), skip_model_load=True)
        except Exception as exc:  # coremltools raises many kinds; its message names the op
            raise VncompileError(f"coremltools could not convert the graph: {_first_line(exc)}") from None
        if precision == "int8":
            model = _int8_weights(ct, model)
    return model


def _int8_weights(ct: Any, model: Any) -> Any:
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    config = OptimizationConfig(global_config=OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=0))
    try:
        return linear_quantize_weights(model, config=config)
    except Exception as exc:
        raise VncompileError(f"coremltools could not quantize the weights to int8: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def check_spec(model: Any, precision: str, deployment_target: str, onnx_path: Path) -> SpecCheck:
    """The spec against the verified graph: input and output names, shapes and types, the compute precision, and
    every operation one that Core ML has at the deployment target."""
    import onnx
    from coremltools.converters.mil.mil.ops.registry import SSAOpRegistry
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2

    ct = import_coremltools()
    spec = model.get_spec()
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    onnx_inputs = [i for i in graph.input if i.name not in initializers]
    array_type = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType

    def feature(description: Any) -> dict[str, Any]:
        array = description.type.multiArrayType
        return {"name": description.name, "shape": [int(d) for d in array.shape],
                "dtype": array_type.Name(array.dataType)}

    def onnx_shape(value: Any) -> list[int]:
        return [d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = [feature(d) for d in spec.description.input]
    outputs = [feature(d) for d in spec.description.output]
    want_in = [{"name": i.name, "shape": onnx_shape(i), "dtype": "FLOAT32"} for i in onnx_inputs]
    if inputs != want_in:
        raise VncompileError(f"the Core ML model's inputs {inputs} are not the graph's {want_in}")
    names = [o.name for o in graph.output]
    if [o["name"] for o in outputs] != names:
        raise VncompileError(f"the Core ML model's outputs {[o['name'] for o in outputs]} are not the graph's {names}")
    for output, value in zip(outputs, graph.output, strict=True):
        if output["shape"] and output["shape"] != onnx_shape(value):
            raise VncompileError(f"the Core ML model's output '{output['name']}' has shape {output['shape']}, the "
                                 f"graph's {onnx_shape(value)}")
        output["shape"] = output["shape"] or onnx_shape(value)

    function = spec.mlProgram.functions["main"]
    opset = function.opset
    operations = list(function.block_specializations[opset].operations)
    types = Counter(op.type for op in operations if op.type != "const")
    target = getattr(ct.target, deployment_target)
    lacking = sorted(t for t in types if target not in SSAOpRegistry.core_ops.get(t, {}))
    if lacking:
        raise VncompileError(f"the Core ML program uses operations Core ML lacks at {deployment_target}: "
                             f"{', '.join(lacking)}")
    compute = Counter(MIL_pb2.DataType.Name(op.outputs[0].type.tensorType.dataType) for op in operations
                      if op.type in ("conv", "linear", "matmul"))
    wanted = COMPUTE_DTYPE[precision]
    if set(compute) != {wanted}:
        raise VncompileError(f"the Core ML program computes its convolutions in {dict(compute)}, not {wanted} "
                             f"as {precision} asks")
    compressed = sum(n for t, n in types.items() if t.startswith("constexpr_"))
    if precision == "int8" and not compressed:
        raise VncompileError("coremltools quantized no weight to int8")
    return SpecCheck(inputs[0], outputs, opset, sum(types.values()), dict(sorted(types.items())), dict(compute),
                     compressed)


def save_package(model: Any, path: Path) -> list[Path]:
    """``model.mlpackage`` with identifiers derived from its contents' paths (coremltools draws random UUIDs), so
    that two builds of one graph write the same bytes; its files, relative to ``path``'s parent."""
    with _quiet():
        model.save(str(path))
    manifest_path = path / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    renamed = {}
    for key, entry in manifest["itemInfoEntries"].items():
        fixed = str(uuid.uuid5(uuid.NAMESPACE_URL, f"vncompile:{entry['path']}")).upper()
        renamed[key] = fixed
    manifest["itemInfoEntries"] = {renamed[k]: v for k, v in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return sorted(p.relative_to(path.parent) for p in path.rglob("*") if p.is_file())
