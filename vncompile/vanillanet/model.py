"""VanillaNet (Chen et al., NeurIPS 2023), in the official checkpoints' module layout.

The network is a 4x4 stride-4 stem followed by one block per stage; each block is
1x1 conv -> BN -> leaky_relu(act_learn) -> 1x1 conv -> BN -> maxpool (stride > 1)
-> series activation (ReLU -> depthwise (2n+1)^2 conv -> BN). During training
``act_learn`` rises from 0 to 1 ("deep training"); once it is 1 the leaky ReLU is
the identity and the two 1x1 convs compose into one (see ``fusion.py``).

Module attribute names (``stem1``, ``stem2``, ``stages.i.conv1``, ``cls1`` ... and
the deploy form's ``stem``, ``stages.i.conv``, ``cls``) are those of the official
repository, so its checkpoints load with ``strict=True``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .archs import VARIANTS, VanillaNetArch

__all__ = ["VARIANTS", "AdaptiveMaxPool2d", "SeriesActivation", "VanillaBlock", "VanillaNet", "VanillaNetArch"]

BN_EPS = 1e-6  # the official models use 1e-6, not PyTorch's 1e-5


def adaptive_window_bounds(in_size: int, out_size: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows: [floor(i*I/O), ceil((i+1)*I/O)) for each output i."""
    return [((i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)) for i in range(out_size)]


def _adaptive_max_1d(x: torch.Tensor, dim: int, out_size: int) -> torch.Tensor:
    """Adaptive max pooling along one spatial dim of an NCHW tensor, from static shapes only.

    Each window is [start, start + length) with one of at most two lengths; a stride-1
    max pool of each length followed by a gather of the window starts gives the exact
    result with ops every ONNX runtime has (MaxPool, Concat, Gather).
    """
    in_size = x.shape[dim]
    if in_size % out_size == 0:
        k = in_size // out_size
        kernel = (k, 1) if dim == 2 else (1, k)
        return F.max_pool2d(x, kernel, kernel)
    bounds = adaptive_window_bounds(in_size, out_size)
    lengths = sorted({end - start for start, end in bounds})
    pooled, offsets, offset = [], {}, 0
    for length in lengths:
        kernel = (length, 1) if dim == 2 else (1, length)
        pooled.append(F.max_pool2d(x, kernel, stride=1))
        offsets[length] = offset
        offset += in_size - length + 1
    index = torch.tensor([offsets[end - start] + start for start, end in bounds], device=x.device)
    return torch.index_select(torch.cat(pooled, dim=dim), dim, index)


class AdaptiveMaxPool2d(nn.Module):
    """``nn.AdaptiveMaxPool2d`` that exports to ONNX (which has no adaptive pooling).

    Exact for any static input size; separable because a max over a rectangle is the max
    over its rows of the max over its columns. Dynamic H/W cannot be expressed (window
    bounds depend on the size), which the exporter reports as a one-line error.
    """

    def __init__(self, output_size: int) -> None:
        super().__init__()
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _adaptive_max_1d(x, 2, self.output_size)
        return _adaptive_max_1d(x, 3, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class SeriesActivation(nn.Module):
    """The series-informed activation: ReLU, then a learnable depthwise (2n+1)^2 conv.

    Summing n shifted-and-scaled ReLUs in each direction (paper eq. 6) is a depthwise
    conv over ReLU(x); train form adds a BN, deploy form folds it into conv bias.
    """

    def __init__(self, dim: int, act_num: int = 3, deploy: bool = False) -> None:
        super().__init__()
        self.dim, self.act_num, self.deploy = dim, act_num, deploy
        kernel = 2 * act_num + 1
        self.weight = nn.Parameter(torch.empty(dim, 1, kernel, kernel))
        nn.init.trunc_normal_(self.weight, std=0.02)
        if deploy:
            self.bias = nn.Parameter(torch.zeros(dim))
        else:
            self.register_parameter("bias", None)
            self.bn = nn.BatchNorm2d(dim, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(F.relu(x), self.weight, self.bias, padding=self.act_num, groups=self.dim)
        return x if self.deploy else self.bn(x)


def _conv_bn(dim_in: int, dim_out: int, kernel: int = 1, stride: int = 1, padding: int = 0) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim_in, dim_out, kernel, stride=stride, padding=padding),
        nn.BatchNorm2d(dim_out, eps=BN_EPS),
    )


class VanillaBlock(nn.Module):
    """One stage: two 1x1 convs (one after fusion), pooling, series activation."""

    def __init__(
        self, dim: int, dim_out: int, act_num: int, stride: int, deploy: bool, ada_pool: int = 0
    ) -> None:
        super().__init__()
        self.deploy = deploy
        self.act_learn = 1.0
        if deploy:
            self.conv = nn.Conv2d(dim, dim_out, kernel_size=1)
        else:
            self.conv1 = _conv_bn(dim, dim)
            self.conv2 = _conv_bn(dim, dim_out)
        if stride == 1:
            self.pool: nn.Module = nn.Identity()
        elif ada_pool:
            self.pool = AdaptiveMaxPool2d(ada_pool)
        else:
            self.pool = nn.MaxPool2d(stride)
        self.act = SeriesActivation(dim_out, act_num, deploy)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.deploy:
            x = self.conv(x)
        else:
            x = self.conv2(F.leaky_relu(self.conv1(x), self.act_learn))
        return self.act(self.pool(x))


class VanillaNet(nn.Module):
    """VanillaNet in train form (``deploy=False``) or fused deploy form (``deploy=True``).

    ``features_only`` drops the classifier and returns the feature maps listed in
    ``out_indices`` (0 is the stem, i+1 is stage i): the multi-scale outputs a
    detector neck consumes. A headless arch (``num_classes == 0``) implies it.
    """

    def __init__(
        self,
        arch: VanillaNetArch,
        *,
        deploy: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.arch, self.deploy = arch, deploy
        self.features_only = features_only or arch.num_classes == 0
        num_features = arch.depth + 1
        self.out_indices = tuple(range(num_features) if out_indices is None else out_indices)
        if not all(0 <= i < num_features for i in self.out_indices):
            raise ValueError(f"out_indices must lie in [0, {num_features}), got {self.out_indices}")
        self.act_learn = 1.0
        dims, stem_conv = arch.dims, dict(stride=arch.stem_stride, padding=arch.stem_padding)
        if deploy:
            self.stem = nn.Sequential(
                nn.Conv2d(arch.in_chans, dims[0], kernel_size=4, **stem_conv),
                SeriesActivation(dims[0], arch.act_num, deploy=True),
            )
        else:
            self.stem1 = _conv_bn(arch.in_chans, dims[0], kernel=4, **stem_conv)
            self.stem2 = nn.Sequential(*_conv_bn(dims[0], dims[0]), SeriesActivation(dims[0], arch.act_num))
        ada_pool = arch.ada_pool or (0,) * arch.depth
        self.stages = nn.ModuleList(
            VanillaBlock(dims[i], dims[i + 1], arch.act_num, arch.strides[i], deploy, ada_pool[i])
            for i in range(arch.depth)
        )
        if self.features_only:
            return
        # The official head has a Dropout at index 1 (training only); the placeholder keeps its checkpoints'
        # key names (cls1.2.weight, cls.2.weight).
        head = [nn.AdaptiveAvgPool2d(1), nn.Identity(), nn.Conv2d(dims[-1], arch.num_classes, 1)]
        if deploy:
            self.cls = nn.Sequential(*head)
        else:
            self.cls1 = nn.Sequential(*head, nn.BatchNorm2d(arch.num_classes, eps=BN_EPS))
            self.cls2 = nn.Sequential(nn.Conv2d(arch.num_classes, arch.num_classes, 1))

    def set_act_learn(self, value: float) -> None:
        """The leaky-ReLU slope of deep training (the official ``change_act``)."""
        self.act_learn = float(value)
        for stage in self.stages:
            stage.act_learn = float(value)

    def forward_features(self, x: torch.Tensor, *, start: int = -1) -> list[torch.Tensor | None]:
        """The stem's and every stage's maps (index 0: the stem, i+1: stage i). ``start``: ``x`` is already
        feature ``start`` (tiled execution computes the high-resolution ones strip by strip)."""
        if start < 0:
            if self.deploy:
                x = self.stem(x)
            else:
                x = self.stem2(F.leaky_relu(self.stem1(x), self.act_learn))
            start = 0
        features: list[torch.Tensor | None] = [None] * start + [x]
        # A backbone stops at its deepest output: later stages would be dead weight in the graph.
        last = max(self.out_indices) if self.features_only else len(self.stages)
        for stage in self.stages[start:last]:
            x = stage(x)
            features.append(x)
        return features

    def head(self, features: list[torch.Tensor | None]) -> torch.Tensor | list[torch.Tensor]:
        """A backbone's selected maps, or the classifier's logits."""
        if self.features_only:
            return [features[i] for i in self.out_indices]  # type: ignore[misc]
        x = features[-1]
        if self.deploy:
            x = self.cls(x)
        else:
            x = self.cls2(F.leaky_relu(self.cls1(x), self.act_learn))
        return torch.flatten(x, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return self.head(self.forward_features(x))
