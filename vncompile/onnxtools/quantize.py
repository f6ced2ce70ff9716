"""Static int8 quantization with Q/DQ nodes: the form TensorRT, OpenVINO and ONNX Runtime all consume."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .quiet import quiet
from .run import batches, static_batch

# What quantize_qdq makes of an fp32 graph is described by api.request.int8_scheme, part of the int8 ONNX's
# cache key: change both together.


class _ArrayReader:
    """onnxruntime.quantization's CalibrationDataReader over (N, C, H, W) samples, in the graph's batches."""

    def __init__(self, input_name: str, samples: np.ndarray, batch: int) -> None:
        self._feeds = iter([{input_name: b} for b in batches(samples, batch)])

    def get_next(self):
        return next(self._feeds, None)


def conv_nodes(path: Path) -> list[str]:
    """The graph's Conv node names in order (what ``--keep-fp32`` names)."""
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Conv"]


def layers_to_keep(path: Path, keep: tuple[str, ...] | None) -> list[str]:
    """``--keep-fp32``'s node names, checked against the graph; ``auto``: the first conv (the stem, which sees
    the raw image) and the last (the classifier), the layers int8 hurts most in practice."""
    if not keep:
        return []
    convs = conv_nodes(path)
    if tuple(keep) == ("auto",):
        return sorted({convs[0], convs[-1]}) if convs else []
    unknown = [name for name in keep if name not in convs]
    if unknown:
        from ..core.errors import InputError

        raise InputError(f"--keep-fp32: no conv layer named {unknown[0]!r} (the graph's: {', '.join(convs[:4])}, ...; "
                         "layers.csv of an int8 build lists them)")
    return list(keep)


def quantize_qdq(src: Path, dst: Path, calibration: np.ndarray, keep_fp32: list[str] | None = None, *,
                 weight_bits: int = 8) -> Path:
    """``keep_fp32``: conv node names left unquantized (float in, float out); ``weight_bits`` 7: weights in
    [-64, 63] (onnxruntime's ``reduce_range``)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if weight_bits not in (7, 8):
        raise ValueError(f"int8 weights have 7 or 8 bits, not {weight_bits}")

    with quiet():
        quantize_static(
            str(src), str(dst), _ArrayReader("input", calibration, static_batch(src)), quant_format=QuantFormat.QDQ,
            nodes_to_exclude=keep_fp32 or [],
            per_channel=True, reduce_range=weight_bits == 7,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # Float biases: TensorRT's parser takes DequantizeLinear only on activation types, not int32.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    return dst
