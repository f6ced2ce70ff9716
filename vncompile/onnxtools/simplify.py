"""Constant folding and graph cleanup (onnxslim or onnxsim); the caller checks the result."""

from __future__ import annotations

from pathlib import Path

from ..core.errors import ExportError, InputError
from .files import save_onnx
from .quiet import quiet

SIMPLIFIER_PACKAGES = {"onnxslim": ("onnxslim",), "onnxsim": ("onnxsim",), "none": ()}


def simplify_onnx(src: Path, dst: Path, simplifier: str) -> Path:
    import onnx

    model = onnx.load(str(src))
    with quiet():
        if simplifier == "onnxslim":
            import onnxslim

            model = onnxslim.slim(model)
        elif simplifier == "onnxsim":
            try:
                import onnxsim
            except ImportError:
                raise InputError("--simplifier onnxsim needs onnxsim: pip install 'vncompile[onnxsim]'") from None
            model, ok = onnxsim.simplify(model)
            if not ok:
                raise ExportError("onnxsim could not validate its simplified graph")
    save_onnx(model, dst)
    return dst
