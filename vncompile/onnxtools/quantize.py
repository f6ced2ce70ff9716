"""Static int8 quantization with Q/DQ nodes: the form TensorRT, OpenVINO and ONNX Runtime all consume."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .quiet import quiet

# What ``quantize_qdq`` makes of an fp32 graph: part of the int8 ONNX's cache key.
INT8_SCHEME = "qdq int8 symmetric, per-channel weights, float bias, minmax calibration"


class _ArrayReader:
    """onnxruntime.quantization's CalibrationDataReader over an (N, C, H, W) array."""

    def __init__(self, input_name: str, samples: np.ndarray) -> None:
        self._feeds = iter([{input_name: s[None].astype(np.float32)} for s in samples])

    def get_next(self):
        return next(self._feeds, None)


def quantize_qdq(src: Path, dst: Path, calibration: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with quiet():
        quantize_static(
            str(src), str(dst), _ArrayReader("input", calibration), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # Float biases: TensorRT's parser takes DequantizeLinear only on activation types, not int32.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    return dst
