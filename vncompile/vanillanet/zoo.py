"""Every network vncompile builds, by name: the VanillaNet variants and the baselines."""

from __future__ import annotations

import math

import torch
from torch import nn

from . import baselines, model
from .archs import MODEL_NAMES, ModelSpec

__all__ = ["MODEL_NAMES", "ModelSpec", "create_model", "init_random_weights"]


def create_model(spec: ModelSpec, *, features_only: bool = False,
                 out_indices: tuple[int, ...] | None = None) -> nn.Module:
    """The network of ``spec`` in its form, default-initialized, in eval mode."""
    deploy = spec.form == "deploy"
    if spec.is_vanillanet:
        net: nn.Module = model.VanillaNet(spec.arch(), deploy=deploy, features_only=features_only,
                                          out_indices=out_indices)
    else:
        net = baselines.ResNet(spec.arch(), deploy=deploy, features_only=features_only, out_indices=out_indices)
    return net.eval()


@torch.no_grad()
def init_random_weights(net: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded random weights that keep activations O(1) and make BN non-trivial.

    Untrained builds and the fusion tests use these: with default init (std 0.02 and
    identity BN) a deep VanillaNet's output collapses towards a constant, which would
    make verification errors meaningless and every BN fold a no-op.
    """
    gen = torch.Generator().manual_seed(seed)

    def uniform(t: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return torch.rand(t.shape, generator=gen, dtype=torch.float64).mul_(high - low).add_(low).to(t)

    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, model.SeriesActivation)):
            weight = module.weight
            # Variance-preserving: gain 2 only where a ReLU halves the input's energy.
            gain = 2.0 if isinstance(module, model.SeriesActivation) else 1.0
            std = math.sqrt(gain / weight[0].numel())
            weight.copy_(torch.randn(weight.shape, generator=gen, dtype=torch.float64).to(weight) * std)
            if module.bias is not None:
                module.bias.copy_(uniform(module.bias, -0.1, 0.1))
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.copy_(uniform(module.weight, 0.5, 1.5))
            module.bias.copy_(uniform(module.bias, -0.2, 0.2))
            module.running_mean.copy_(uniform(module.running_mean, -0.2, 0.2))
            module.running_var.copy_(uniform(module.running_var, 0.5, 2.0))
    return net
