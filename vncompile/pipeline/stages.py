"""The pipeline's stages, each one small step with a typed input and output.

load_model -> network_for_export (fuse) -> export_onnx -> simplify_onnx ->
(quantize_qdq for int8) -> target compile -> verify (``verify.py``). ``build.py``
chains them, times them and logs them; profile and ci reuse the same chain.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ExportError, FusionError, InputError
from ..vanillanet.archs import ModelSpec, has_adaptive_pooling
from ..vanillanet.checkpoint import ActLearn, Checkpoint, instantiate, load_checkpoint
from ..vanillanet.fusion import switch_to_deploy
from ..vanillanet.model import VanillaNet
from ..vanillanet.zoo import create_model, init_random_weights
from .request import RANDOM_SEED, InputShape, ModelSource

log = logging.getLogger("vncompile")


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    network: nn.Module  # eval mode, float32, in ``spec.form``
    act_learn: ActLearn
    checkpoint: Checkpoint | None

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None

    @property
    def checkpoint_sha256(self) -> str | None:
        return None if self.checkpoint is None else self.checkpoint.sha256


# ---------------------------------------------------------------------------- load / fuse


def load_model(source: ModelSource, checkpoint_sha256: str | None = None) -> LoadedModel:
    """The network a source names: a checkpoint's weights, or seeded random weights."""
    if source.checkpoint is not None:
        ckpt = load_checkpoint(source.checkpoint, weights=source.weights,  # type: ignore[arg-type]
                               model_name=source.model_name, sha256=checkpoint_sha256)
        network = instantiate(ckpt, act_learn=source.act_learn)
        act_learn = ckpt.act_learn
        spec, checkpoint = ckpt.spec, ckpt
    else:
        spec = source.spec_without_checkpoint()
        network = init_random_weights(create_model(spec), seed=RANDOM_SEED)
        act_learn = ActLearn(1.0, "untrained", "random weights at the end of the act_learn schedule")
        checkpoint = None
    if source.act_learn is not None and spec.is_vanillanet:
        if spec.form == "deploy":
            raise InputError("--act-learn applies to training checkpoints; this one is already fused")
        detail = f"--act-learn {source.act_learn:g} (was {act_learn.value:g})"
        act_learn = ActLearn(source.act_learn, "override", detail)
        network.set_act_learn(source.act_learn)  # type: ignore[operator]
    return LoadedModel(spec, network.float().eval(), act_learn, checkpoint)


def fuse(loaded: LoadedModel) -> LoadedModel:
    """The deploy form: refuses (one line) when act_learn says fusion would not be exact."""
    if loaded.spec.form == "deploy":
        return loaded
    if not loaded.act_learn.fusable:
        raise FusionError(
            f"cannot fuse {loaded.spec.label}: trained with act_learn {loaded.act_learn.value:.4g} "
            f"({loaded.act_learn.detail}), below 1, so merging the two 1x1 convs would change the function; "
            f"use a checkpoint from the end of the schedule, or pass --act-learn {loaded.act_learn.value:.4g} "
            "to export the unfused network on purpose"
        )
    return LoadedModel(loaded.spec.with_form("deploy"), switch_to_deploy(loaded.network), loaded.act_learn,
                       loaded.checkpoint)


def network_for_export(loaded: LoadedModel) -> LoadedModel:
    """Fused when exact; the unfused network when the user chose an act_learn below 1."""
    if loaded.act_learn.source == "override" and not loaded.act_learn.fusable:
        log.warning("exporting the unfused training form with act_learn %g on purpose", loaded.act_learn.value)
        return loaded
    return fuse(loaded)


# ---------------------------------------------------------------------------- export


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


def output_names(network: nn.Module) -> list[str]:
    if isinstance(network, VanillaNet) and network.features_only:
        return [f"feature_{i}" for i in network.out_indices]
    return ["logits"]


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    """The exporter prints progress and warnings; they belong in build.log, not the terminal."""
    stream = io.StringIO()
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_onnx_log.setLevel(level)
        for line in stream.getvalue().splitlines():
            if line.strip():
                logger.debug("torch.onnx: %s", line)


def export_onnx(
    loaded: LoadedModel,
    shape: InputShape,
    path: Path,
    *,
    opset: int,
    dynamic: bool,
    compute: str = "fp32",
    io_dtype: str = "fp32",
) -> Path:
    """torch.onnx's dynamo exporter, one self-contained file; static shape unless ``dynamic``."""
    if dynamic and has_adaptive_pooling(loaded.spec):  # also checked up front; the exporter would fail obscurely
        raise ExportError(f"{loaded.spec.name} exports only at static sizes (adaptive pooling)")
    network = loaded.network
    if compute == "fp16":
        network = _Fp16Compute(network, torch.float16 if io_dtype == "fp16" else torch.float32)
    example = torch.zeros(shape.as_tuple())
    dynamic_shapes = None
    if dynamic:
        dim = torch.export.Dim
        dynamic_shapes = ({0: dim("batch", min=1, max=256), 2: dim("height", min=32, max=8192),
                           3: dim("width", min=32, max=8192)},)
    try:
        with _quiet(log), torch.no_grad():
            program = torch.onnx.export(
                network, (example,), dynamo=True, opset_version=max(opset, 18), external_data=False,
                input_names=["input"], output_names=output_names(loaded.network),
                dynamic_shapes=dynamic_shapes, verbose=False,
            )
            model = program.model_proto
    except Exception as exc:
        raise ExportError(f"torch.onnx could not export {loaded.spec.label}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    import onnx

    if opset < 18:  # the dynamo exporter emits opset >= 18; older runtimes get a converted graph
        model = onnx.version_converter.convert_version(model, opset)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


# ---------------------------------------------------------------------------- simplify / quantize


def simplify_onnx(src: Path, dst: Path, simplifier: str) -> Path:
    """Constant folding and graph cleanup; the caller checks the result against ``src``."""
    import onnx

    model = onnx.load(str(src))
    with _quiet(log):
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
    onnx.save_model(model, str(dst))
    return dst


class _ArrayReader:
    """onnxruntime.quantization's CalibrationDataReader over an (N, C, H, W) array."""

    def __init__(self, input_name: str, samples: np.ndarray) -> None:
        self._feeds = iter([{input_name: s[None].astype(np.float32)} for s in samples])

    def get_next(self):
        return next(self._feeds, None)


def quantize_qdq(src: Path, dst: Path, calibration: np.ndarray) -> Path:
    """Static int8 quantization with Q/DQ nodes (per-channel weights), the form TensorRT,
    OpenVINO and ONNX Runtime all consume."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet(log):
        quantize_static(
            str(src), str(dst), _ArrayReader("input", calibration), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            # Float biases: TensorRT's parser takes DequantizeLinear only on activation types, not int32.
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
        )
    return dst


# ---------------------------------------------------------------------------- inputs


def seeded_inputs(shape: InputShape, count: int, seed: int = 1234) -> np.ndarray:
    """``count`` batches of the input shape, N(0, 1) like normalized images, reproducible."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *shape.as_tuple()), dtype=np.float32)


def run_onnx(path: Path, batches: np.ndarray) -> list[list[np.ndarray]]:
    """Each batch through ONNX Runtime's CPU provider: the reference runtime for ONNX stages."""
    import onnxruntime as ort

    from ..targets.onnxruntime import onnx_feed

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = onnx_feed(session)  # the target's own feeding, so ONNX stages and the target agree
    return [[np.asarray(o, dtype=np.float32) for o in session.run(None, feed(b))] for b in batches]


def run_torch(network: nn.Module, batches: np.ndarray, dtype: torch.dtype = torch.float32) -> list[list[np.ndarray]]:
    net = copy.deepcopy(network).to(dtype) if dtype != torch.float32 else network
    results = []
    with torch.no_grad():
        for batch in batches:
            out = net(torch.from_numpy(batch).to(dtype))
            outs = out if isinstance(out, list) else [out]
            results.append([o.double().numpy() if dtype == torch.float64 else o.float().numpy() for o in outs])
    return results
