"""The optimization profile a --dynamic build gives its one NCHW input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...api.request import BuildRequest
from ...core.schema import IntList, PathKind, PositiveInt, setting

INPUT_NAME = "input"  # export_onnx names the network's one input so
SMALLEST_SIDE = 32  # no network vncompile builds takes a smaller input
Shape4 = tuple[int, int, int, int]


@dataclass(frozen=True)
class TensorRTOptions:
    """The tensorrt target's own options (``Target.own_options``)."""

    workspace_mb: int | None = setting(PositiveInt("a positive integer (MiB)"), None, flag="--workspace",
                                       help="tensorrt: workspace pool limit in MiB")
    # Its far end is a size verification runs at (``Target.dynamic_sizes``): the reference's inputs.
    profile_sizes: tuple[int, ...] | None = setting(
        IntList("a list of positive integers"), None, flag="--profile-sizes", affects="reference",
        help="tensorrt --dynamic: min,opt,max square sizes, e.g. 256,384,512")
    # Speeds builds up and changes no engine's function: no cache key.
    timing_cache: Path | None = setting(PathKind("a file path"), None, flag="--timing-cache", affects="nothing",
                                        help="tensorrt: persistent timing cache file, reused across builds")


@dataclass(frozen=True)
class ShapeProfile:
    """An optimization profile for the NCHW input: the engine takes min..max and is tuned for opt."""

    min: Shape4
    opt: Shape4
    max: Shape4

    def covers(self, shape: Shape4) -> bool:
        return all(low <= size <= high for low, size, high in zip(self.min, shape, self.max, strict=True))

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def shape_profile(request: BuildRequest, own: TensorRTOptions) -> ShapeProfile | None:
    """None for a static input. With --dynamic: batch 1..N tuned for N, and square --profile-sizes
    min,opt,max, or by default half to twice the requested height and width, tuned for them."""
    if not request.dynamic:
        return None
    n, c, h, w = request.shape.as_tuple()
    sizes = own.profile_sizes
    if sizes is None:
        return ShapeProfile((1, c, max(SMALLEST_SIDE, h // 2), max(SMALLEST_SIDE, w // 2)), (n, c, h, w),
                            (n, c, 2 * h, 2 * w))
    low, opt, high = sizes
    return ShapeProfile((1, c, low, low), (n, c, opt, opt), (n, c, high, high))
