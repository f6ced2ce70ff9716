"""Parameter and multiply-accumulate counts, as the paper's Table 4 reports them.

MACs are those of the conv and linear layers (the series activation's depthwise conv
included) for one image; BN, pooling and ReLU are not counted, as torchprofile, the
counter behind Table 4, attributes almost nothing to them. Shapes are traced on the
meta device, so counting even the 128M-parameter variants allocates no weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .model import SeriesActivation
from .zoo import ModelSpec, create_model


@dataclass(frozen=True)
class Complexity:
    params: int
    macs: int

    def as_dict(self) -> dict[str, int]:
        return {"params": self.params, "macs": self.macs}


def count_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_macs(net: nn.Module, input_size: int, in_chans: int = 3) -> int:
    total = 0

    def conv_hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        weight = module.weight  # (out, in/groups, kh, kw): MACs per output element = in/groups*kh*kw
        total += output[0].numel() * weight[0].numel()

    def linear_hook(module: nn.Linear, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        total += output[0].numel() * module.in_features

    handles = []
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, SeriesActivation)):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    try:
        device = next(net.parameters()).device
        with torch.no_grad():
            net(torch.zeros(1, in_chans, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
    return total


def complexity(spec: ModelSpec, input_size: int = 224) -> Complexity:
    """Params and MACs of ``spec`` in its form, at a square ``input_size``."""
    with torch.device("meta"):
        net = create_model(spec)
    return Complexity(count_params(net), count_macs(net, input_size))
