"""The baselines of the paper's mobile-NPU memory table (Table 1).

``resnet50`` follows torchvision's layout (ResNet v1.5: stride on the 3x3 conv), so
its checkpoints load by name, without depending on torchvision. ``plain_cnn_50`` is
the same network with every shortcut removed, downsample projections included: the
same convolutions in the same order, with no tensor that must outlive its block.

Deploy form folds every BatchNorm into the conv before it (``fusion.fuse_resnet``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .archs import BASELINES, ResNetArch

__all__ = ["BASELINES", "Bottleneck", "ResNet", "ResNetArch"]

def _conv(dim_in: int, dim_out: int, kernel: int, stride: int, deploy: bool) -> nn.Conv2d:
    # Deploy form carries the folded BN in the conv bias.
    return nn.Conv2d(dim_in, dim_out, kernel, stride=stride, padding=kernel // 2, bias=deploy)


def _bn(dim: int, deploy: bool) -> nn.Module:
    return nn.Identity() if deploy else nn.BatchNorm2d(dim)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, dim_in: int, width: int, stride: int, shortcut: bool, deploy: bool) -> None:
        super().__init__()
        dim_out = width * self.expansion
        self.shortcut = shortcut
        self.conv1, self.bn1 = _conv(dim_in, width, 1, 1, deploy), _bn(width, deploy)
        self.conv2, self.bn2 = _conv(width, width, 3, stride, deploy), _bn(width, deploy)
        self.conv3, self.bn3 = _conv(width, dim_out, 1, 1, deploy), _bn(dim_out, deploy)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if shortcut and (stride != 1 or dim_in != dim_out):
            self.downsample = nn.Sequential(_conv(dim_in, dim_out, 1, stride, deploy), _bn(dim_out, deploy))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut:
            # The residual input stays alive across the whole block: the memory cost Table 1 measures.
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class ResNet(nn.Module):
    """``features_only``: no pooling or fc; returns the maps in ``out_indices`` (0 is the stem after
    the max pool, i+1 is layer i+1: C2..C5), as ``model.VanillaNet`` does."""

    def __init__(self, arch: ResNetArch, *, deploy: bool = False, features_only: bool = False,
                 out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        self.arch, self.deploy = arch, deploy
        self.features_only = features_only or arch.num_classes == 0
        self.out_indices = tuple(range(len(arch.layers) + 1) if out_indices is None else out_indices)
        if not all(0 <= i <= len(arch.layers) for i in self.out_indices):
            raise ValueError(f"out_indices must lie in [0, {len(arch.layers)}], got {self.out_indices}")
        w = arch.base_width
        self.conv1 = nn.Conv2d(arch.in_chans, w, 7, stride=2, padding=3, bias=deploy)
        self.bn1 = _bn(w, deploy)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        dim_in, layers = w, []
        for i, blocks in enumerate(arch.layers):
            width, stride = w * 2**i, 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(Bottleneck(dim_in, width, stride if j == 0 else 1, arch.shortcuts, deploy))
                dim_in = width * Bottleneck.expansion
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        if self.features_only:
            return
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(dim_in, arch.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        if self.features_only:
            features = [x]
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[:max(self.out_indices)]:
                features.append(layer(features[-1]))
            return [features[i] for i in self.out_indices]
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
