"""Loading whatever checkpoint training produced, safely, and saving deploy checkpoints.

Accepted without flags: official training checkpoints (``model``/``model_ema``/
``optimizer``/``epoch``/``scaler``/``args``), converted deploy checkpoints
(``{'model': state_dict}``), bare state_dicts (``module.`` prefixes stripped) and
``.safetensors`` files. Nothing pickled is ever executed: torch files are read with
``weights_only=True`` and only ``argparse.Namespace`` (the official ``args``) is
allowed beyond tensors and containers.

The variant, form, act_num and num_classes are inferred from tensor names and
shapes; the act_learn a training checkpoint was saved at is recomputed from its
``epoch`` and ``args`` (it is not in the state_dict), because fusion is exact only
once act_learn has reached 1.
"""

from __future__ import annotations

import argparse
import io
import math
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..core.errors import CheckpointError, FusionError
from ..core.hashing import sha256_file
from . import detection
from .archs import MODEL_NAMES, VARIANTS, Form, ModelSpec, ResNetArch
from .fusion import compose_pointwise
from .model import VanillaNet
from .zoo import create_model

WeightsChoice = Literal["auto", "model", "model_ema"]
# argparse.Namespace: the one non-container type official checkpoints pickle; then mmdetection's logging records.
SAFE_GLOBALS = [argparse.Namespace, *detection.SAFE_GLOBALS]
_STATE_DICT_KEYS = ("model_ema", "model", "state_dict", "module")


@dataclass(frozen=True)
class ActLearn:
    """The leaky-ReLU slope the weights were trained with, and how we know it."""

    value: float
    source: str  # "schedule", "deploy form", "assumed", "override"
    detail: str

    @property
    def fusable(self) -> bool:
        return self.value == 1.0

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "source": self.source, "fusable": self.fusable, "detail": self.detail}


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    sha256: str
    spec: ModelSpec
    state_dict: dict[str, torch.Tensor]
    act_learn: ActLearn
    weights_key: str | None  # which entry of a training checkpoint the weights came from
    epoch: int | None
    notes: tuple[str, ...] = ()
    detector: detection.DetectorBackbone | None = None  # the backbone came out of a detector checkpoint


# ---------------------------------------------------------------------------- reading


def _sniff_format(path: Path) -> str:
    """'safetensors', 'torch-zip' or 'torch-legacy' from the bytes, not the suffix."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) >= 9 and head[8:9] == b"{":
        header_len = struct.unpack("<Q", head[:8])[0]
        if 8 + header_len > size:
            raise CheckpointError(f"{path}: truncated safetensors file (header says {header_len} bytes)")
        return "safetensors"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint (bad zip archive)") from None
        if not any(name.endswith("data.pkl") for name in names):
            raise CheckpointError(f"{path}: a zip archive but not a torch checkpoint (no data.pkl)")
        return "torch-zip"
    if head[:1] == b"\x80":  # pickle protocol marker: torch.save's legacy format
        return "torch-legacy"
    raise CheckpointError(f"{path}: not a checkpoint (neither a torch file nor safetensors)")


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not iterable
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file ({exc})") from None
    return tensors, metadata


def _read_torch(path: Path) -> Any:
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = found.group(1) if found else "a pickled object"
        if what.startswith("ultralytics.") or _pickles_ultralytics(path):
            raise CheckpointError(
                f"{path}: an Ultralytics checkpoint (it pickles {what}: loading it would run Ultralytics' code, and "
                "vncompile executes nothing from a file); export it with Ultralytics' own exporter and build the ONNX: "
                f"yolo export model={path} format=onnx opset=19 dynamic=True (opset <= 19 for rknn), then "
                f"vncompile build {Path(path).with_suffix('.onnx')}") from None
        raise CheckpointError(
            f"{path}: refusing to load: it pickles {what}, and checkpoints are loaded without "
            "executing pickled code (only tensors, containers, argparse.Namespace, numpy arrays and "
            "mmengine's logging records are allowed)"
        ) from None
    except (RuntimeError, EOFError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt torch checkpoint ({type(exc).__name__})") from None


def _pickles_ultralytics(path: Path) -> bool:
    """Whether the checkpoint's pickle names Ultralytics' classes (read as bytes, not unpickled)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            data = archive.read(name) if name else b""
    except (zipfile.BadZipFile, OSError):
        data = Path(path).read_bytes()[:1 << 20]
    return b"ultralytics.nn" in data


# ---------------------------------------------------------------------------- unpacking


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DistributedDataParallel (and EMA of a DDP model) prefix every key with ``module.``."""
    sd = dict(state_dict)
    while sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _select_weights(path: Path, obj: Any, weights: WeightsChoice) -> tuple[dict[str, torch.Tensor], str | None]:
    if _is_state_dict(obj):
        if weights == "model_ema":
            raise CheckpointError(f"{path}: a bare state_dict has no model_ema weights")
        return _strip_prefixes(obj), None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, not a dict of tensors)")
    present = [k for k in _STATE_DICT_KEYS if isinstance(obj.get(k), Mapping)]
    if weights != "auto":
        if weights not in present:
            have = ", ".join(present) or "none"
            raise CheckpointError(f"{path}: no '{weights}' weights in checkpoint (it has {have})")
        key = weights
    elif present:
        key = present[0]  # model_ema first, as the official evaluation uses (--model_key model_ema)
    else:
        raise CheckpointError(
            f"{path}: not a checkpoint: no state_dict under {', '.join(_STATE_DICT_KEYS)} "
            f"(top-level keys: {', '.join(map(str, list(obj)[:8]))})"
        )
    state_dict = obj[key]
    if not _is_state_dict(state_dict):
        raise CheckpointError(f"{path}: '{key}' is not a state_dict (its values are not all tensors)")
    return _strip_prefixes(state_dict), key


def _training_args(obj: Any) -> Mapping[str, Any]:
    args = obj.get("args") if isinstance(obj, Mapping) else None
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return args if isinstance(args, Mapping) else {}


def _non_finite(tensor: torch.Tensor) -> str | None:
    """'2 NaN', '1 Inf' or '2 NaN and 1 Inf' values in a floating tensor, or None when all are finite."""
    if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
        return None
    counts = [(int(torch.isnan(tensor).sum()), "NaN"), (int(torch.isinf(tensor).sum()), "Inf")]
    return " and ".join(f"{n} {kind}" for n, kind in counts if n)


def _check_finite(path: Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """A NaN or Inf weight (a diverged run, a corrupt save) would surface only as a wrong verification later."""
    bad = [f"{name} has {what} value(s)" for name, tensor in state_dict.items()
           if (what := _non_finite(tensor)) is not None]
    if len(bad) == 1:
        raise CheckpointError(f"{path}: {bad[0]}")
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensors hold non-finite values: {_few(bad, 3)}")


# ---------------------------------------------------------------------------- inference


def _stage_count(sd: Mapping[str, torch.Tensor]) -> int:
    indices = {int(m.group(1)) for k in sd if (m := re.match(r"stages\.(\d+)\.", k))}
    if indices != set(range(len(indices))):
        raise CheckpointError(f"stage indices are not contiguous: {sorted(indices)}")
    return len(indices)


def _vanillanet_dims(sd: Mapping[str, torch.Tensor], form: Form, depth: int) -> tuple[int, ...]:
    stem = "stem1.0.weight" if form == "train" else "stem.0.weight"
    return (sd[stem].shape[0], *(sd[f"stages.{i}.act.weight"].shape[0] for i in range(depth)))


def _match_variant(dims: tuple[int, ...], hints: list[str]) -> tuple[str, float]:
    """The variants whose stage layout matches ``dims`` at some width; hints break ties."""
    matches: list[tuple[str, float]] = []
    for name, arch in VARIANTS.items():
        if len(arch.dims) != len(dims):
            continue
        width = dims[0] / arch.dims[0]
        if arch.scaled(width).dims == dims:
            matches.append((name, round(width, 6)))
    if not matches:
        raise CheckpointError(f"widths {list(dims)} match no VanillaNet variant")
    for hint in hints:
        for name, width in matches:
            if name == hint:
                return name, width
    exact = [(n, w) for n, w in matches if w == 1.0]
    if not exact:
        # A narrowed network (our tests, width ablations): the plain-pooling variant, unless hinted.
        return next(((n, w) for n, w in matches if VARIANTS[n].ada_pool is None), matches[0])
    # Networks with the same weights but different pooling cannot be told apart by tensors.
    if len({VARIANTS[n].ada_pool is not None for n, _ in exact}) > 1:
        names = " or ".join(n for n, _ in exact)
        raise CheckpointError(f"the weights fit {names} (same tensors, different pooling): pass --model")
    return exact[0]


def _fold_legacy_deploy_stem(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An early official release kept the deploy stem as 4x4 conv, 1x1 conv, activation.

    The two convs compose exactly into one (no nonlinearity between), giving today's layout.
    """
    w, b = compose_pointwise((sd.pop("stem.1.weight"), sd.pop("stem.1.bias")),
                             (sd.pop("stem.0.weight"), sd.pop("stem.0.bias")))
    dtype = sd["stem.2.weight"].dtype
    sd["stem.0.weight"], sd["stem.0.bias"] = w.to(dtype).contiguous(), b.to(dtype)
    sd["stem.1.weight"], sd["stem.1.bias"] = sd.pop("stem.2.weight"), sd.pop("stem.2.bias")
    return sd


def infer_spec(sd: dict[str, torch.Tensor], hints: list[str]) -> tuple[ModelSpec, tuple[str, ...]]:
    """Model name, width, form, act_num and num_classes from tensor names and shapes."""
    notes: tuple[str, ...] = ()
    if "stem1.0.weight" in sd or "stem.0.weight" in sd:
        form: Form = "train" if "stem1.0.weight" in sd else "deploy"
        if form == "deploy" and "stem.2.weight" in sd:
            _fold_legacy_deploy_stem(sd)
            notes = ("folded the early-release three-layer deploy stem into two layers",)
        depth = _stage_count(sd)
        if depth == 0:
            raise CheckpointError("VanillaNet stem without stages")
        try:
            dims = _vanillanet_dims(sd, form, depth)
            kernel = sd["stages.0.act.weight"].shape[-1]
        except KeyError as exc:
            raise CheckpointError(f"missing key {exc.args[0]}") from None
        name, width = _match_variant(dims, hints)
        head = sd.get("cls2.0.weight" if form == "train" else "cls.2.weight")
        num_classes = 0 if head is None else head.shape[0]
        return ModelSpec(name, width, (kernel - 1) // 2, num_classes, form), notes
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        name = "resnet50" if any(".downsample." in k for k in sd) else "plain_cnn_50"
        base_width = sd["conv1.weight"].shape[0]
        form = "train" if "bn1.weight" in sd else "deploy"
        num_classes = sd["fc.weight"].shape[0] if "fc.weight" in sd else 0  # 0: a detector's headless backbone
        return ModelSpec(name, base_width / ResNetArch().base_width, 3, num_classes, form), notes
    shown = ", ".join(list(sd)[:4])
    raise CheckpointError(f"not a VanillaNet or ResNet-50 checkpoint (keys begin {shown})")


def act_learn_from_schedule(epoch: int, decay_epochs: int, decay_linear: bool = True) -> float:
    """The act_learn the official training loop set before training ``epoch`` (main.py)."""
    if decay_epochs <= 0 or epoch > decay_epochs:
        return 1.0
    if decay_linear:
        return epoch / decay_epochs
    return 0.5 * (1 - math.cos(math.pi * epoch / decay_epochs))


def _act_learn(form: Form, epoch: Any, args: Mapping[str, Any], is_vanillanet: bool) -> ActLearn:
    if not is_vanillanet:
        return ActLearn(1.0, "not applicable", "ResNet has no act_learn")
    if form == "deploy":
        return ActLearn(1.0, "deploy form", "already fused")
    if isinstance(epoch, int) and "decay_epochs" in args:
        decay_epochs, linear = int(args["decay_epochs"]), bool(args.get("decay_linear", True))
        value = act_learn_from_schedule(epoch, decay_epochs, linear)
        how = "linear" if linear else "cosine"
        return ActLearn(value, "schedule", f"epoch {epoch} of a {decay_epochs}-epoch {how} decay")
    return ActLearn(1.0, "assumed", "no epoch/args.decay_epochs in the checkpoint: assumed a finished schedule")


def load_checkpoint(
    path: str | Path, *, weights: WeightsChoice = "auto", model_name: str | None = None, sha256: str | None = None,
    prefix: str | None = None,
) -> Checkpoint:
    """Read, validate and identify a checkpoint. Raises ``CheckpointError`` with one line.

    ``sha256``: the file's hash when the caller has it already (a build's cache key needs it first).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if model_name is not None and model_name not in MODEL_NAMES:
        raise CheckpointError(f"unknown model '{model_name}'; choose from {', '.join(MODEL_NAMES)}")
    fmt = _sniff_format(path)
    hints = [model_name] if model_name else []
    if fmt == "safetensors":
        obj, metadata = _read_safetensors(path)
        hints.append(metadata.get("vncompile.model", ""))
    else:
        obj = _read_torch(path)
        if isinstance(obj, Mapping) and isinstance(obj.get("vncompile"), Mapping):
            hints.append(str(obj["vncompile"].get("model", "")))
    state_dict, weights_key = _select_weights(path, obj, weights)
    try:
        state_dict, detector = detection.find_backbone(obj, state_dict, prefix)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    _check_finite(path, state_dict)
    args = _training_args(obj)
    # The official release names files after the variant: the longest name in it wins.
    hints += [str(args.get("model", "")), *sorted((n for n in MODEL_NAMES if n in path.name), key=len, reverse=True)]
    try:
        spec, notes = infer_spec(state_dict, hints)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if model_name and model_name != spec.name:
        raise CheckpointError(f"{path}: holds {spec.name}, not {model_name}")
    epoch = obj.get("epoch") if isinstance(obj, Mapping) else None
    ckpt = Checkpoint(
        path=path,
        sha256=sha256 or sha256_file(path),
        spec=spec,
        state_dict=state_dict,
        act_learn=(ActLearn(1.0, "detection backbone", detector.exact_fusion) if detector and detector.exact_fusion
                   else _act_learn(spec.form, epoch, args, spec.is_vanillanet)),
        weights_key=weights_key,
        epoch=epoch if isinstance(epoch, int) else None,
        notes=notes,
        detector=detector,
    )
    instantiate(ckpt)  # strict key/shape check now, so a bad file fails before any work
    return ckpt


def instantiate(ckpt: Checkpoint, *, act_learn: float | None = None,
                out_indices: tuple[int, ...] | None = None) -> nn.Module:
    """The checkpoint's network in its own form, weights loaded strictly, in eval mode.

    ``act_learn`` overrides the slope the schedule implies (train form only); ``out_indices``
    makes it a headless backbone (``model.VanillaNet``), a classifier's head dropped.
    """
    net = create_model(ckpt.spec, features_only=out_indices is not None, out_indices=out_indices)
    state_dict = ckpt.state_dict if out_indices is None else detection.without_head(ckpt.state_dict)
    # load_state_dict raises a multi-line RuntimeError on a shape mismatch: find them first, for one line.
    expected = net.state_dict()
    # load_state_dict casts silently: int8 weights of a quantized state dict would become a "trained" network of
    # small integers (mostly zeros), and verification would pass, its reference built from the same weights.
    integral = [f"{key} ({str(tensor.dtype).removeprefix('torch.')})" for key, tensor in state_dict.items()
                if key in expected and expected[key].is_floating_point() and not tensor.is_floating_point()]
    if integral:
        raise CheckpointError(f"{ckpt.path}: weights must be floating point (float16/32/64, bfloat16), got "
                              f"{_few(integral, 3)}; a quantized state dict cannot be rebuilt, give the float one")
    wrong = {key for key, tensor in state_dict.items() if key in expected and tensor.shape != expected[key].shape}
    result = net.load_state_dict({k: v for k, v in state_dict.items() if k not in wrong}, strict=False)
    problems = []
    if wrong:
        shapes = [f"{key} is {_dims(ckpt.state_dict[key].shape)}, expected {_dims(expected[key].shape)}"
                  for key in ckpt.state_dict if key in wrong]
        problems.append(f"wrong shapes: {_few(shapes)}")
    missing = [key for key in result.missing_keys if key not in wrong]
    if missing:
        problems.append(f"missing keys {_few(missing)}")
    if result.unexpected_keys:
        problems.append(f"unexpected keys {_few(result.unexpected_keys)}")
    if problems:
        raise CheckpointError(f"{ckpt.path}: does not match {ckpt.spec.label}: {'; '.join(problems)}")
    if isinstance(net, VanillaNet):
        net.set_act_learn(ckpt.act_learn.value if act_learn is None else act_learn)
    return net.eval()


def _dims(shape: torch.Size) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def _few(keys: list[str], n: int = 4) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


# ---------------------------------------------------------------------------- saving


def deploy_payload(net: nn.Module, spec: ModelSpec) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A deploy-form network's tensors and the metadata that identifies it on reload."""
    if spec.form != "deploy":
        raise FusionError("only deploy-form networks are saved as deploy checkpoints")
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    metadata = {"vncompile.model": spec.name, "vncompile.width": f"{spec.width:g}", "format": "pt"}
    return tensors, metadata


def write_deploy_checkpoint(
    tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path, fmt: Literal["safetensors", "torch"]
) -> None:
    """Write safetensors, or the official ``{'model': state_dict}`` torch layout.

    Both are serialized in memory and written with one plain write, so a full disk or a
    refused write is the OS's own error (``OSError``, errno and file), which the atomic
    writers turn into a one-line message; the libraries' writers report it without errno.
    """
    if fmt == "safetensors":
        from safetensors.torch import save

        data = save(tensors, metadata=metadata)
    else:
        buffer = io.BytesIO()
        torch.save({"model": tensors, "vncompile": {"model": metadata["vncompile.model"]}}, buffer)
        data = buffer.getvalue()
    Path(path).write_bytes(data)
