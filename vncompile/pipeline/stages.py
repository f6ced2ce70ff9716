"""The pipeline's torch stages: load a network, fuse it, export it, run it in float64.

load_model -> network_for_export (fuse) -> export_onnx -> (``onnxtools``: simplify,
quantize) -> target compile -> verify (``verify.py``). ``prepare.py`` and ``build.py``
chain them, time them and log them; profile and ci reuse the same chain.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..api.request import RANDOM_SEED, InputShape, ModelSource
from ..core.errors import ExportError, FusionError, InputError
from ..onnxtools.export import export_onnx as onnxtools_export
from ..vanillanet.archs import ModelSpec, has_adaptive_pooling
from ..vanillanet.checkpoint import ActLearn, Checkpoint, instantiate, load_checkpoint
from ..vanillanet.features import FeatureMap, feature_layout, selection
from ..vanillanet.fusion import switch_to_deploy
from ..vanillanet.zoo import create_model, init_random_weights
from .families import ModelFamily, family_of

log = logging.getLogger("vncompile")


@dataclass(frozen=True)
class LoadedModel:
    spec: ModelSpec
    network: nn.Module  # eval mode, float32, in ``spec.form``
    act_learn: ActLearn
    checkpoint: Checkpoint | None
    family: ModelFamily
    features: tuple[FeatureMap, ...] = ()  # a headless backbone's outputs, in order; () for a classifier

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None

    @property
    def checkpoint_sha256(self) -> str | None:
        return None if self.checkpoint is None else self.checkpoint.sha256

    @property
    def output_names(self) -> list[str]:
        return self.family.output_names(self.features)

    def float64_outputs(self, shape: InputShape, batches: np.ndarray) -> list[list[np.ndarray]]:
        """The reference: the network as loaded (its training form), in float64."""
        return run_torch(self.network, batches, dtype=torch.float64)


# ---------------------------------------------------------------------------- load / fuse


def load_model(source: ModelSource, checkpoint_sha256: str | None = None) -> LoadedModel:
    """The network a source names: a checkpoint's weights, or seeded random weights.

    With ``source.features`` (or a detector's headless backbone) it is a backbone whose outputs
    are the selected feature maps (``vanillanet.features``), a classifier's head dropped.
    """
    if source.checkpoint is not None:
        ckpt = load_checkpoint(source.checkpoint, weights=source.weights,  # type: ignore[arg-type]
                               model_name=source.model_name, sha256=checkpoint_sha256, prefix=source.prefix)
        spec, checkpoint = ckpt.spec, ckpt
        if ckpt.detector is not None:
            log.info("%s checkpoint: backbone under '%s' (%s prefix); ignored %d tensors (%s)", ckpt.detector.kind,
                     ckpt.detector.prefix, "given" if source.prefix else "detected", ckpt.detector.ignored_tensors,
                     ", ".join(ckpt.detector.ignored_groups))
        features = _features(spec, source.features, ckpt)
        network = instantiate(ckpt, act_learn=source.act_learn, out_indices=_out_indices(features))
        act_learn = ckpt.act_learn
    else:
        spec = source.spec_without_checkpoint()
        features = _features(spec, source.features, None)
        network = create_model(spec, features_only=bool(features), out_indices=_out_indices(features))
        network = init_random_weights(network, seed=RANDOM_SEED)
        act_learn = ActLearn(1.0, "untrained", "random weights at the end of the act_learn schedule")
        checkpoint = None
    family = family_of(spec, features)
    if source.act_learn is not None and family.learns_activation:
        if spec.form == "deploy":
            raise InputError("--act-learn applies to training checkpoints; this one is already fused")
        if act_learn.source == "detection backbone":
            raise InputError("--act-learn does not apply: the mmdetection VanillaNet backbone has no leaky ReLU")
        detail = f"--act-learn {source.act_learn:g} (was {act_learn.value:g})"
        act_learn = ActLearn(source.act_learn, "override", detail)
        network.set_act_learn(source.act_learn)  # type: ignore[operator]
    return LoadedModel(spec, network.float().eval(), act_learn, checkpoint, family, tuple(features))


def _features(spec: ModelSpec, features: str | None, ckpt: Checkpoint | None) -> list[FeatureMap]:
    """The maps a build outputs: ``--features``; else a detector's (its config's out_indices, or every
    stage); else none (a classifier)."""
    if features is None and spec.num_classes == 0:
        detector = ckpt.detector if ckpt is not None else None
        features = (detector.features if detector else None) or ",".join(map(str, range(len(feature_layout(spec)) - 1)))
    return [] if features is None else selection(spec, features)


def _out_indices(features: list[FeatureMap]) -> tuple[int, ...] | None:
    return tuple(m.index for m in features) if features else None


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
    return dataclasses.replace(loaded, spec=loaded.spec.with_form("deploy"), network=switch_to_deploy(loaded.network))


def network_for_export(loaded: LoadedModel) -> LoadedModel:
    """Fused when exact; the unfused network when the user chose an act_learn below 1."""
    if loaded.act_learn.source == "override" and not loaded.act_learn.fusable:
        log.warning("exporting the unfused training form with act_learn %g on purpose", loaded.act_learn.value)
        return loaded
    return fuse(loaded)


# ---------------------------------------------------------------------------- export / run


def export_onnx(loaded: LoadedModel, shape: InputShape, path: Path, *, opset: int, dynamic: bool,
                compute: str = "fp32", io_dtype: str = "fp32") -> Path:
    """The loaded network exported to ONNX (``onnxtools.export``), its outputs named."""
    if dynamic and has_adaptive_pooling(loaded.spec):  # also checked up front; the exporter would fail obscurely
        raise ExportError(f"{loaded.spec.name} exports only at static sizes (adaptive pooling)")
    return onnxtools_export(loaded.network, shape, path, label=loaded.spec.label,
                            output_names=loaded.output_names, opset=opset, dynamic=dynamic,
                            compute=compute, io_dtype=io_dtype)


def run_torch(network: nn.Module, batches: np.ndarray, dtype: torch.dtype = torch.float32) -> list[list[np.ndarray]]:
    """Each batch through ``network`` in ``dtype`` (a copy cast to it, unless it computes in it already)."""
    cast = dtype != torch.float32 and any(t.dtype != dtype for t in (*network.parameters(), *network.buffers())
                                          if t.is_floating_point())
    net = copy.deepcopy(network).to(dtype) if cast else network
    results = []
    with torch.no_grad():
        for batch in batches:
            out = net(torch.from_numpy(batch).to(dtype))
            outs = out if isinstance(out, (list, tuple)) else [out]
            results.append([o.double().numpy() if dtype == torch.float64 else o.float().numpy() for o in outs])
    return results
