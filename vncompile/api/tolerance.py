"""Verification tolerances per precision, and the user's overrides (``--tolerance fp16=rel:3e-2``)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from ..core.errors import InputError
from ..core.schema import Kind

# int16: 16-bit activations with 8-bit weights (QNN's A16W8 on the Hexagon HTP).
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8", "int16")
# The precisions quantized from calibration images, verified like int8 (on real images, by cosine).
QUANTIZED: tuple[str, ...] = ("int8", "int16")


@dataclass(frozen=True)
class Tolerance:
    rel: float | None = None  # max abs error / max |reference|, per output
    cosine: float | None = None  # minimum cosine similarity, per output

    def accepts(self, rel: float, cosine: float) -> bool:
        if self.rel is not None and not rel <= self.rel:
            return False
        return not (self.cosine is not None and not cosine >= self.cosine)

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def describe(self) -> str:
        return ", ".join(f"rel <= {self.rel:g}" if k == "rel" else f"cosine >= {self.cosine:g}"
                         for k in self.as_dict())

    def that_passes(self, rel: float, cosine: float) -> str:
        """The loosest setting of this tolerance's kinds that the observed errors would pass, as the
        ``--tolerance`` value (rel rounded up to two significant digits, cosine down to four decimals)."""
        parts = []
        if self.rel is not None:
            parts.append(f"rel:{_round(rel, up=True):.2g}")
        if self.cosine is not None:
            parts.append(f"cosine:{_round(cosine, up=False):.6g}")
        return ",".join(parts)


def _round(value: float, *, up: bool) -> float:
    if not math.isfinite(value) or value <= 0:
        return value
    if not up:  # cosine: keep the digits that matter (0.99873 -> 0.9987)
        return math.floor(value * 1e4) / 1e4
    exponent = math.floor(math.log10(value)) - 1
    return math.ceil(value / 10**exponent) * 10**exponent


DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(rel=1e-4),
    "fp16": Tolerance(rel=2e-2),
    "bf16": Tolerance(rel=2e-2),
    "int8": Tolerance(cosine=0.99),
    "int16": Tolerance(cosine=0.99),
}

_ITEM = re.compile(r"(rel|cosine):([0-9.eE+-]+)")


def parse_tolerance(text: str) -> tuple[str, Tolerance]:
    """``fp16=rel:3e-2`` or ``int8=cosine:0.98`` or ``fp32=rel:1e-3,cosine:0.999``."""
    precision, sep, spec = str(text).partition("=")
    precision = precision.strip()
    items = [i.strip() for i in spec.split(",")]
    values: dict[str, float] = {}
    if sep and precision in PRECISIONS and all(items):
        for item in items:
            match = _ITEM.fullmatch(item)
            if match is None:
                break
            try:
                values[match.group(1)] = float(match.group(2))
            except ValueError:
                break
        else:
            if values and all(0 < v < math.inf for v in values.values()) and values.get("cosine", 0) <= 1:
                return precision, Tolerance(**values)
    raise InputError(f"--tolerance must look like fp16=rel:3e-2 or int8=cosine:0.98 (precisions: "
                     f"{', '.join(PRECISIONS)}), got '{text}'")


def tolerances(overrides: tuple[tuple[str, Tolerance], ...] = ()) -> dict[str, Tolerance]:
    """The defaults with the user's overrides on top."""
    return {**DEFAULT_TOLERANCES, **dict(overrides)}


class ToleranceKind(Kind):
    """Tolerance overrides: ``["fp16=rel:3e-2", "int8=cosine:0.98"]`` in a config, one item per ``--tolerance``."""

    expected = "a list of tolerances such as fp16=rel:3e-2"

    def from_value(self, value: Any) -> tuple[tuple[str, Tolerance], ...]:
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ValueError
        try:
            return tuple(parse_tolerance(i) for i in items)
        except InputError as exc:
            raise ValueError(str(exc)) from None
