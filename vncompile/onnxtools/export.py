"""torch -> ONNX with torch.onnx's dynamo exporter: one self-contained file, static shape unless dynamic."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from ..api.request import InputShape
from ..core.errors import ExportError
from .files import save_onnx
from .quiet import quiet


class _Fp16Compute(nn.Module):
    """fp16 weights and compute with the I/O dtype the caller wants (Cast nodes at the edges)."""

    def __init__(self, network: nn.Module, io_dtype: torch.dtype) -> None:
        super().__init__()
        self.network, self.io_dtype = copy.deepcopy(network).half(), io_dtype

    def forward(self, x: torch.Tensor):
        out = self.network(x.half())
        if isinstance(out, list):
            return [o.to(self.io_dtype) for o in out]
        return out.to(self.io_dtype)


def export_onnx(
    network: nn.Module,
    shape: InputShape,
    path: Path,
    *,
    label: str,
    output_names: list[str],
    opset: int,
    dynamic: bool,
    compute: str = "fp32",
    io_dtype: str = "fp32",
) -> Path:
    """``network`` (eval mode) exported at ``shape`` to ``path``; ``label`` names it in errors."""
    if compute == "fp16":
        network = _Fp16Compute(network, torch.float16 if io_dtype == "fp16" else torch.float32)
    example = torch.zeros(shape.as_tuple())
    dynamic_shapes = None
    if dynamic:
        dim = torch.export.Dim
        dynamic_shapes = ({0: dim("batch", min=1, max=256), 2: dim("height", min=32, max=8192),
                           3: dim("width", min=32, max=8192)},)
    try:
        with quiet(), torch.no_grad():
            program = torch.onnx.export(
                network, (example,), dynamo=True, opset_version=opset, external_data=False,
                input_names=["input"], output_names=output_names, dynamic_shapes=dynamic_shapes, verbose=False,
            )
            model = program.model_proto
    except Exception as exc:
        raise ExportError(f"torch.onnx could not export {label}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    import onnx

    onnx.checker.check_model(model)
    save_onnx(model, path)
    return path
