"""The per-layer files a profile writes, and the one pair of functions for each format.

- ``layers/<model>-<target>-<precision>-<size>.csv`` (a build's ``layer_profile.csv``): what the target's
  runtime or compiler reports per layer (``api.target.LayerRecord``), in execution order, with the network's
  name for each (``block``) and the figure's source; an empty cell where the reporter has no such figure.
- ``timeline/<model>-<precision>-<size>.csv``: the analytic plan of the cell's ONNX step by step
  (``onnxtools.memory_plan.memory_timeline``): the bytes live while each op runs, the peak marked and, on
  its row, the tensors live there (``tensor:bytes;...``).

A profile row names its files (``"layers"``, ``"timeline"``: paths relative to the profile directory, or null);
the HTML report reads them back with ``read_layers`` / ``read_timeline``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from ..api.target import LayerRecord
from ..core.io import atomic_file

LAYER_PROFILE = "layer_profile.csv"  # in a build directory (``layers.csv`` there is the int8 error table)
LAYERS_DIR, TIMELINE_DIR = "layers", "timeline"
LAYER_COLUMNS = ["order", "name", "block", "op", "time_ms", "memory_bytes", "cycles", "exec_type", "precision",
                 "source"]
TIMELINE_COLUMNS = ["step", "node", "block", "op", "live_bytes", "is_peak", "live_at_peak"]
TOP = 5  # layers the console shows by time and by memory


@dataclass(frozen=True)
class TimelineRow:
    """One step of the memory timeline, as its CSV has it."""

    step: int
    node: str
    block: str  # the network's name for the node
    op: str
    live_bytes: int
    is_peak: bool
    live_at_peak: tuple[tuple[str, int], ...] = ()  # (tensor, bytes), the peak row's only


def _file_name(*parts: Any) -> str:
    """``<part>-<part>-...csv``, with what a file name should not hold (a features list's brackets) as ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(str(p) for p in parts)) + ".csv"


def layers_path(model: str, target: str, precision: str, size: int) -> str:
    return f"{LAYERS_DIR}/{_file_name(model, target, precision, size)}"


def timeline_path(model: str, precision: str, size: int) -> str:
    return f"{TIMELINE_DIR}/{_file_name(model, precision, size)}"


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(row[k]) for k in columns} for row in rows)
    return buffer.getvalue()


def _write(path: Path, text: str) -> None:
    with atomic_file(path, force=True, what="per-layer table") as tmp:
        tmp.write_text(text)


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str, kind: type) -> Any:
    return None if text == "" else kind(text)


def write_layers(records: list[LayerRecord], path: Path) -> None:
    _write(path, _csv_text(LAYER_COLUMNS, [{"order": i, **r.as_dict()} for i, r in enumerate(records)]))


def read_layers(path: Path) -> list[LayerRecord]:
    """The records of a ``write_layers`` file, in order."""
    return [LayerRecord(name=row["name"], block=row["block"], op=row["op"], source=row["source"],  # type: ignore[arg-type]
                        time_ms=_number(row["time_ms"], float), memory_bytes=_number(row["memory_bytes"], int),
                        cycles=_number(row["cycles"], int), exec_type=row["exec_type"] or None,
                        precision=row["precision"] or None)
            for row in sorted(_read(path), key=lambda row: int(row["order"]))]


def write_timeline(rows: list[TimelineRow], path: Path) -> None:
    _write(path, _csv_text(TIMELINE_COLUMNS, [
        {**dataclasses.asdict(row), "is_peak": int(row.is_peak),
         "live_at_peak": ";".join(f"{tensor}:{size}" for tensor, size in row.live_at_peak)} for row in rows]))


def read_timeline(path: Path) -> list[TimelineRow]:
    """The steps of a ``write_timeline`` file, in order."""
    return [TimelineRow(int(row["step"]), row["node"], row["block"], row["op"], int(row["live_bytes"]),
                        row["is_peak"] == "1",
                        tuple((tensor, int(size)) for tensor, _, size in
                              (item.rpartition(":") for item in row["live_at_peak"].split(";") if item)))
            for row in _read(path)]


def memory_timeline(model: Path, precision: str, build_dir: Path) -> list[TimelineRow]:
    """The analytic plan of ``model`` at ``precision``'s element sizes, step by step, named by the build's blocks."""
    from ..onnxtools.blocks import Blocks
    from ..onnxtools.memory_plan import memory_timeline as plan_timeline

    blocks = Blocks.of_build(build_dir)
    return [TimelineRow(s.step, s.node, blocks.of(s.node), s.op, s.live_bytes, s.is_peak, s.live_at_peak)
            for s in plan_timeline(model, precision)]


def top_layers(records: list[LayerRecord], by: str, count: int = TOP) -> list[LayerRecord]:
    """The ``count`` layers with the most time (where the reporter times none: cycles) or memory."""
    timed = any(r.time_ms is not None for r in records)
    key = attrgetter("memory_bytes" if by == "memory" else "time_ms" if timed else "cycles")
    known = [r for r in records if key(r) is not None]
    return sorted(known, key=key, reverse=True)[:count]


@dataclass
class ProfileFiles:
    """A profile's per-layer tables and timelines, by their path in its output directory (what the rows name)."""

    layers: dict[str, list[LayerRecord]] = field(default_factory=dict)
    timelines: dict[str, list[TimelineRow]] = field(default_factory=dict)

    def write(self, directory: Path) -> list[str]:
        """Every table into ``directory``; the folders written."""
        for relative, records in self.layers.items():
            write_layers(records, directory / relative)
        for relative, rows in self.timelines.items():
            write_timeline(rows, directory / relative)
        return [f"{name}/" for name, tables in ((LAYERS_DIR, self.layers), (TIMELINE_DIR, self.timelines)) if tables]
