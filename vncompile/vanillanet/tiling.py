"""Patch-based (tiled) execution of a fused VanillaNet's high-resolution stages, exactly.

VanillaNet's peak memory is one tensor: the first stage's 1x1-conv output (thousands of channels at
1/4 resolution) alive next to its input before the max pool shrinks it. Run the stem and the first
stages strip by strip instead (MCUNetV2's patch-based inference, Lin et al., NeurIPS 2021), and
that map never exists at once: each strip computes its rows from the input rows it needs, then the
strips' outputs (pooled, 4x smaller) are concatenated and the rest of the network runs as before.

Exactness comes from receptive-field arithmetic over the deploy form's ops, walked backwards from
each strip's output rows: a depthwise (2n+1)^2 conv needs n more rows on each side (its halo), a
s x s max pool the s rows under each output row (stride-aligned, so no window straddles a strip
edge), the stem's 4x4/s4 conv the 4 rows under each. Forwards, each op gets exactly the rows it
needs and produces exactly the rows wanted: a depthwise conv is zero-padded only where its strip
meets the image's own border (the network's padding there) and not at all at interior strip
edges, where its halo rows are real. So no op computes a row only to crop it away: a strip's graph
is its input slice and the network's own ops (each runtime's layout passes then see plain convs,
not slices between them). Strips may be uneven (odd sizes). Rows only: a strip spans the full
width (the arithmetic is the same per axis, and rows suffice).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import InputError
from .model import SeriesActivation, VanillaNet


@dataclass(frozen=True)
class _RowOp:
    """One op of the tiled prefix, as rows see it: ``kind`` conv (kernel/stride), pool (stride),
    pointwise, or dw (halo)."""

    kind: str
    module: nn.Module
    kernel: int = 1
    stride: int = 1
    halo: int = 0

    def rows_out(self, rows_in: int) -> int:
        if self.kind in ("conv", "pool"):
            return (rows_in - self.kernel) // self.stride + 1
        return rows_in

    def rows_needed(self, a: int, b: int, rows_in: int) -> tuple[int, int]:
        """The input rows output rows [a, b) depend on (within the image)."""
        if self.kind in ("conv", "pool"):
            return a * self.stride, (b - 1) * self.stride + self.kernel
        return max(0, a - self.halo), min(rows_in, b + self.halo)

    def run(self, x: torch.Tensor, pad_top: int = 0, pad_bottom: int = 0) -> torch.Tensor:
        """The op on a strip; a depthwise conv zero-pads ``pad_top``/``pad_bottom`` rows (the image's
        border rows its halo reaches past) and the full width, never rows inside the image."""
        if self.kind != "dw":
            return self.module(x)
        act = self.module
        x = F.relu(x)
        if pad_top or pad_bottom:  # right before the conv, so that compilers fold it into the conv's pads
            x = F.pad(x, (0, 0, pad_top, pad_bottom))
        return F.conv2d(x, act.weight, act.bias, padding=(0, act.act_num), groups=act.dim)


@dataclass(frozen=True)
class Tiling:
    """``stages`` stages after the stem run in ``strips`` horizontal strips (0 stages: the stem alone)."""

    stages: int
    strips: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _row_ops(net: VanillaNet, stages: int) -> list[_RowOp]:
    arch = net.arch
    if not net.deploy:
        raise InputError("tiling runs on the fused deploy form")
    if arch.ada_pool or arch.stem_padding:
        raise InputError(f"{arch.depth}-stage VanillaNet with adaptive pools or a padded stem cannot be tiled "
                         "exactly (its windows depend on the whole map)")
    if not 0 <= stages < len(net.stages):
        raise InputError(f"tiling covers the stem and 0..{len(net.stages) - 1} stages, not {stages}")
    stem_conv, stem_act = net.stem[0], net.stem[1]
    ops = [_RowOp("conv", stem_conv, kernel=stem_conv.kernel_size[0], stride=stem_conv.stride[0]),
           _RowOp("dw", stem_act, halo=stem_act.act_num)]
    for block in net.stages[:stages]:
        ops.append(_RowOp("pointwise", block.conv))
        if isinstance(block.pool, nn.MaxPool2d):
            ops.append(_RowOp("pool", block.pool, kernel=block.pool.kernel_size, stride=block.pool.stride))
        ops.append(_RowOp("dw", block.act, halo=block.act.act_num))
    return ops


def strip_bounds(rows: int, strips: int) -> list[tuple[int, int]]:
    """``strips`` contiguous, near-equal row ranges covering ``rows``."""
    edges = [round(i * rows / strips) for i in range(strips + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


class TiledVanillaNet(nn.Module):
    """A fused VanillaNet whose stem and first ``tiling.stages`` stages run strip by strip; the same
    function, the same outputs (``VanillaNet.head``)."""

    def __init__(self, net: VanillaNet, tiling: Tiling) -> None:
        super().__init__()
        self.net, self.tiling = net, tiling
        self.ops = _row_ops(net, tiling.stages)
        if net.features_only and min(net.out_indices) < tiling.stages:
            raise InputError(f"a backbone output (feature {min(net.out_indices)}) lies inside the tiled stages "
                             f"(0..{tiling.stages}): tile fewer stages")
        if tiling.strips < 1:
            raise InputError(f"tiling needs at least one strip, got {tiling.strips}")

    @property
    def features_only(self) -> bool:
        return self.net.features_only

    @property
    def out_indices(self) -> tuple[int, ...]:
        return self.net.out_indices

    def _rows(self, rows_in: int) -> list[int]:
        """Rows at each op's input, then at the prefix's output."""
        rows = [rows_in]
        for op in self.ops:
            rows.append(op.rows_out(rows[-1]))
        return rows

    def _wanted(self, a: int, b: int, rows: list[int]) -> list[tuple[int, int]]:
        """Walking back from the strip's output rows [a, b): the rows at each op's input, then [a, b)."""
        wanted = [(a, b)]
        for op, rows_in in zip(reversed(self.ops), reversed(rows[:-1]), strict=True):
            wanted.append(op.rows_needed(*wanted[-1], rows_in))
        return wanted[::-1]

    def _strip(self, x: torch.Tensor, a: int, b: int, rows: list[int]) -> torch.Tensor:
        wanted = self._wanted(a, b, rows)
        lo, hi = wanted[0]
        y = x[:, :, lo:hi]
        for op, (out_a, out_b), rows_in in zip(self.ops, wanted[1:], rows[:-1], strict=True):
            # Output rows [out_a, out_b) read input rows [out_a - n, out_b + n): those outside the image are
            # the padding a depthwise conv adds; every other op maps its input rows to exactly these.
            y = op.run(y, max(0, op.halo - out_a), max(0, out_b + op.halo - rows_in))
            assert y.shape[2] == out_b - out_a, "receptive-field arithmetic and the ops disagree"
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        rows = self._rows(x.shape[2])
        pieces = [self._strip(x, a, b, rows) for a, b in strip_bounds(rows[-1], self.tiling.strips)]
        prefix = pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=2)
        return self.net.head(self.net.forward_features(prefix, start=self.tiling.stages))


def extra_macs(net: VanillaNet, tiling: Tiling, height: int, width: int) -> int:
    """The MACs the strips recompute (their halo rows) beyond the untiled network's, at ``height`` x ``width``."""
    tiled = TiledVanillaNet(net, tiling)
    rows, cols = tiled._rows(height), tiled._rows(width)  # the same arithmetic on either axis
    produced = [0] * len(tiled.ops)
    for a, b in strip_bounds(rows[-1], tiling.strips):
        for i, (lo, hi) in enumerate(tiled._wanted(a, b, rows)[1:]):
            produced[i] += hi - lo
    return sum((produced[i] - rows[i + 1]) * _macs_per_output_row(op, cols[i + 1])
               for i, op in enumerate(tiled.ops) if op.kind != "pool")


def _macs_per_output_row(op: _RowOp, cols: int) -> int:
    if isinstance(op.module, SeriesActivation):
        return op.module.dim * op.module.weight.shape[-1] ** 2 * cols
    conv = op.module
    kernel = conv.kernel_size[0] * conv.kernel_size[1]
    return conv.out_channels * (conv.in_channels // conv.groups) * kernel * cols
