"""Running ONNX graphs on ONNX Runtime's CPU provider (the reference runtime for ONNX stages),
and the seeded inputs every stage of every target sees."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..api.request import InputShape


def seeded_inputs(shape: InputShape, count: int, seed: int = 1234) -> np.ndarray:
    """``count`` batches of the input shape, N(0, 1) like normalized images, reproducible."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *shape.as_tuple()), dtype=np.float32)


def onnx_feed(session: Any) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """Feeds for an ONNX Runtime session, cast to its input dtype (fp16 I/O graphs take float16)."""
    first = session.get_inputs()[0]
    dtype = np.float16 if first.type == "tensor(float16)" else np.float32
    return lambda x: {first.name: np.asarray(x, dtype=dtype)}


def output_names(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def run_onnx(path: Path, batches: np.ndarray) -> list[list[np.ndarray]]:
    """Each batch through ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = onnx_feed(session)  # the onnxruntime target feeds the same way, so ONNX stages and it agree
    return [[np.asarray(o, dtype=np.float32) for o in session.run(None, feed(b))] for b in batches]
