"""Memory units, in one place.

Every memory figure vncompile reports is in **KB = 1024 bytes** (JEDEC), the unit the
RKNN compiler prints its plan in and the one the paper's Table 1 uses; MB = 1024 KB and
GB = 1024 MB likewise. ``KiB``/``MiB``/``GiB`` are accepted as the same units.
"""

from __future__ import annotations

import math
import re

BYTES_PER_KB = 1024
KB_PER: dict[str, float] = {"b": 1 / BYTES_PER_KB, "kb": 1, "mb": 1024, "gb": 1024**2}
_ALIASES = {"": "b", "k": "kb", "kib": "kb", "m": "mb", "mib": "mb", "g": "gb", "gib": "gb"}
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*")


def kb(nbytes: float) -> float:
    """Bytes -> KB."""
    return nbytes / BYTES_PER_KB


def megabytes(nbytes: float) -> str:
    """Bytes as whole MB, for people: '12,807 MB'."""
    return f"{kb(nbytes) / KB_PER['mb']:,.0f} MB"


def unit_kb(unit: str) -> float:
    """KB in one ``unit`` (B, KB, MB, GB and their KiB/MiB/GiB spellings, any case)."""
    key = unit.lower()
    key = _ALIASES.get(key, key)
    if key not in KB_PER:
        raise ValueError(f"unknown memory unit '{unit}'")
    return KB_PER[key]


def parse_memory_size(text: str) -> float:
    """'1.2GB' -> KB. Raises ``ValueError`` with what the text must look like."""
    match = _SIZE.fullmatch(str(text))
    try:
        if match is None:
            raise ValueError
        value = float(match.group(1)) * unit_kb(match.group(2))
    except ValueError:
        raise ValueError(f"a memory size looks like 1.2GB, 900MB or 512KB (1 KB = 1024 bytes), not '{text}'") \
            from None
    if not math.isfinite(value):  # 1e400 reads as infinity
        raise ValueError(f"a memory size must be finite, not '{text}'")
    if value <= 0:
        raise ValueError(f"a memory size must be positive, not '{text}'")
    return value
