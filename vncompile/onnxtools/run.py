"""Running ONNX graphs on ONNX Runtime's CPU provider (the reference runtime for ONNX stages),
and the seeded inputs every stage of every target sees."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..api.request import InputShape

if TYPE_CHECKING:
    import onnx


def seeded_inputs(shape: InputShape, count: int, seed: int = 1234) -> np.ndarray:
    """``count`` batches of the input shape, N(0, 1) like normalized images, reproducible."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *shape.as_tuple()), dtype=np.float32)


def static_batch(path: Path) -> int:
    """The batch size a graph's input fixes (1 where it is dynamic)."""
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else 1


def batches(samples: np.ndarray, batch: int) -> list[np.ndarray]:
    """(N, C, H, W) samples as float32 batches of ``batch``, the last one filled by repeating samples."""
    count = max(1, -(-len(samples) // batch))
    filled = np.resize(samples, (count * batch, *samples.shape[1:])).astype(np.float32)
    return [filled[i * batch:(i + 1) * batch] for i in range(count)]


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
    return _run(str(path), batches)


def run_onnx_model(model: onnx.ModelProto, batches: np.ndarray) -> list[list[np.ndarray]]:
    """``run_onnx`` of a graph in memory."""
    return _run(model.SerializeToString(), batches)


def _run(model: str | bytes, batches: np.ndarray) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = onnx_feed(session)  # the onnxruntime target feeds the same way, so ONNX stages and it agree
    return [[np.asarray(o, dtype=np.float32) for o in session.run(None, feed(b))] for b in batches]
