"""Deploy fusion as plain functions on tensors (the official ``switch_to_deploy``).

Every function returns new tensors and the model-level functions return a fresh
deploy-form model built with ``deploy=True``; the trained model is never mutated.
Fused tensors are computed in float64 and cast back, and are contiguous (weights
composed through a transpose are strided views that make later convs slow).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.errors import FusionError
from .baselines import ResNet
from .model import VanillaNet

Tensor = torch.Tensor


def fold_bn(weight: Tensor, bias: Tensor | None, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Conv (weight, bias) followed by eval-mode BN -> one conv: w*g/s, beta + (b - mu)*g/s."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    conv_bias = torch.zeros_like(bn.running_mean, dtype=torch.float64) if bias is None else bias.double()
    fused_weight = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    fused_bias = bn.bias.double() + (conv_bias - bn.running_mean.double()) * scale
    return fused_weight, fused_bias


def compose_pointwise(outer: tuple[Tensor, Tensor], inner: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """A 1x1 conv (outer) applied after any conv (inner) -> one conv with the inner's kernel.

    outer(inner(x)) = Wo (Wi * x + bi) + bo = (Wo Wi) * x + (Wo bi + bo), exact at every
    position, padded borders included, because the 1x1 conv acts pointwise.
    """
    outer_weight, outer_bias = outer
    inner_weight, inner_bias = inner
    w = outer_weight.double().flatten(1)  # (out, mid)
    weight = torch.einsum("om,mchw->ochw", w, inner_weight.double())
    bias = w @ inner_bias.double() + outer_bias.double()
    return weight, bias


def fold_series_activation_bn(act: nn.Module) -> tuple[Tensor, Tensor]:
    """The series activation's depthwise conv (no bias) followed by its BN -> conv with bias."""
    return fold_bn(act.weight, None, act.bn)


def _check_act_learn(act_learn: float) -> None:
    if act_learn != 1.0:
        raise FusionError(
            f"cannot fuse: act_learn is {act_learn:g}, so the leaky ReLU between the two 1x1 convs "
            "is not the identity and the fused network would compute a different function; "
            "finish the act_learn schedule, or export the unfused network on purpose with --act-learn"
        )


def vanillanet_deploy_state_dict(model: VanillaNet) -> dict[str, Tensor]:
    """The deploy-form state_dict of a train-form VanillaNet, in float64."""
    if model.deploy:
        return {k: v.double() for k, v in model.state_dict().items()}
    _check_act_learn(model.act_learn)
    sd: dict[str, Tensor] = {}
    stem = compose_pointwise(
        fold_bn(model.stem2[0].weight, model.stem2[0].bias, model.stem2[1]),
        fold_bn(model.stem1[0].weight, model.stem1[0].bias, model.stem1[1]),
    )
    sd["stem.0.weight"], sd["stem.0.bias"] = stem
    sd["stem.1.weight"], sd["stem.1.bias"] = fold_series_activation_bn(model.stem2[2])
    for i, block in enumerate(model.stages):
        _check_act_learn(block.act_learn)
        conv = compose_pointwise(
            fold_bn(block.conv2[0].weight, block.conv2[0].bias, block.conv2[1]),
            fold_bn(block.conv1[0].weight, block.conv1[0].bias, block.conv1[1]),
        )
        sd[f"stages.{i}.conv.weight"], sd[f"stages.{i}.conv.bias"] = conv
        sd[f"stages.{i}.act.weight"], sd[f"stages.{i}.act.bias"] = fold_series_activation_bn(block.act)
    if not model.features_only:
        cls2 = model.cls2[0]
        sd["cls.2.weight"], sd["cls.2.bias"] = compose_pointwise(
            (cls2.weight, cls2.bias), fold_bn(model.cls1[2].weight, model.cls1[2].bias, model.cls1[3])
        )
    return sd


def resnet_deploy_state_dict(model: ResNet) -> dict[str, Tensor]:
    """The deploy-form state_dict of a ResNet: every BN folded into the conv before it."""
    if model.deploy:
        return {k: v.double() for k, v in model.state_dict().items()}
    sd: dict[str, Tensor] = {}
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if isinstance(module, nn.Conv2d):
            bn = modules[_bn_after(name)]
            sd[f"{name}.weight"], sd[f"{name}.bias"] = fold_bn(module.weight, module.bias, bn)
    if not model.features_only:
        sd["fc.weight"], sd["fc.bias"] = model.fc.weight.double(), model.fc.bias.double()
    return sd


def _bn_after(conv_name: str) -> str:
    """torchvision's naming: convN is followed by bnN, downsample.0 by downsample.1."""
    head, _, leaf = conv_name.rpartition(".")
    if leaf == "0":
        return f"{head}.1"
    return f"{head}.bn{leaf[len('conv'):]}" if head else f"bn{leaf[len('conv'):]}"


def _load_fresh(model: nn.Module, state_dict: dict[str, Tensor], like: nn.Module) -> nn.Module:
    reference = next(like.parameters())
    model = model.to(device=reference.device, dtype=reference.dtype)
    model.load_state_dict({k: v.to(reference.dtype).contiguous() for k, v in state_dict.items()}, strict=True)
    return model.train(like.training)


def switch_to_deploy(model: nn.Module) -> nn.Module:
    """A fresh deploy-form copy of ``model`` (VanillaNet or ResNet), same dtype and mode."""
    if isinstance(model, VanillaNet):
        fused = VanillaNet(model.arch, deploy=True, features_only=model.features_only,
                           out_indices=model.out_indices)
        return _load_fresh(fused, vanillanet_deploy_state_dict(model), like=model)
    if isinstance(model, ResNet):
        fused_resnet = ResNet(model.arch, deploy=True, features_only=model.features_only,
                              out_indices=model.out_indices)
        return _load_fresh(fused_resnet, resnet_deploy_state_dict(model), like=model)
    raise TypeError(f"no deploy fusion for {type(model).__name__}")
