"""What the rknn compiler prints in a verbose build: its memory plan and its per-layer table.

Memory is the compiler's plan (``Total Internal/Weight Memory Size``), latency the sum of
the per-layer cycle estimates; both come from the build's output, which also goes to
``build.log``. The per-layer table is saved as ``rknn_layers.csv``.
"""

from __future__ import annotations

import csv
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ...api.target import LayerRecord
from ...core.errors import VncompileError
from ...core.units import unit_kb
from ...onnxtools.blocks import Blocks

LAYER_TABLE = "rknn_layers.csv"

COMPILER_LINE = re.compile(r"^[DIWE] RKNN: \[[^\]]*\] ?(.*)$")
MEMORY_LINE = re.compile(r"Total (Internal|Weight) Memory Size:\s*([\d.]+)\s*([KMG]?B)")
LAYER_HEADER = "Cycles(DDR/NPU/Total)"
COLUMN_NAMES = {"ID": "id", "OpType": "op_type", "DataType": "data_type", "Target": "target",
                "InputShape": "input_shape", "OutputShape": "output_shape", "SparseRatio": "sparse_ratio",
                "RW(KB)": "rw_kb", "FullName": "full_name"}
DATA_TYPES = {"FLOAT16": "fp16", "FLOAT32": "fp32", "INT8": "int8", "UINT8": "int8", "INT16": "int16"}



@dataclass(frozen=True)
class RknnMemoryPlan:
    internal_kb: float  # activations (feature maps) the compiler places in DDR
    weight_kb: float

    @property
    def total_kb(self) -> float:
        return self.internal_kb + self.weight_kb

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total_kb": self.total_kb}


@dataclass(frozen=True)
class CompilerReport:
    memory: RknnMemoryPlan
    layers: list[dict[str, Any]]

    @property
    def cycles(self) -> int:
        return sum(row["cycles_total"] for row in self.layers)


def compiler_lines(output: list[str]) -> list[str]:
    """The compiler's own lines (``D RKNN: [time] ...``), without their prefix."""
    return [m.group(1) for m in map(COMPILER_LINE.match, output) if m]


def parse_memory_plan(output: list[str]) -> RknnMemoryPlan:
    sizes: dict[str, float] = {}
    for line in compiler_lines(output):
        match = MEMORY_LINE.search(line)
        if match:
            sizes[match.group(1)] = float(match.group(2)) * unit_kb(match.group(3))
    if set(sizes) != {"Internal", "Weight"}:
        raise VncompileError("rknn-toolkit2 printed no memory plan ('Total Internal/Weight Memory Size'); "
                             "its output is in build.log")
    return RknnMemoryPlan(internal_kb=sizes["Internal"], weight_kb=sizes["Weight"])


def parse_layer_table(output: list[str]) -> list[dict[str, Any]]:
    """The last 'Network Layer Information Table' the compiler printed, one dict per layer."""
    tables: list[list[dict[str, Any]]] = []
    columns: list[str] | None = None
    for line in compiler_lines(output):
        if LAYER_HEADER in line:
            columns = line.split()
            tables.append([])
        elif columns is not None and line.strip() and set(line.strip()) <= {"-"}:
            if tables[-1]:  # the rule after the rows ends the table; the one under the header does not
                columns = None
        elif columns is not None:
            fields = line.split(None, len(columns) - 1)
            if len(fields) == len(columns) and fields[0].isdigit():
                tables[-1].append(_layer_row(columns, fields))
    return tables[-1] if tables else []


def _layer_row(columns: list[str], fields: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column, value in zip(columns, fields, strict=True):
        if column == LAYER_HEADER:
            ddr, npu, total = (int(v) for v in value.split("/"))
            row.update(cycles_ddr=ddr, cycles_npu=npu, cycles_total=total)
        else:
            name = COLUMN_NAMES.get(column, column.lower())
            row[name] = int(value) if name == "id" else float(value) if name == "rw_kb" else value
    return row


def write_layer_table(layers: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(layers[0]))
        writer.writeheader()
        writer.writerows(layers)


def read_layer_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_layer_cycles(path: Path) -> list[int]:
    return [int(row["cycles_total"]) for row in read_layer_table(path)]


def layer_records(table: list[dict[str, str]], blocks: Blocks) -> list[LayerRecord]:
    """The compiler's table as layer records: its cycles (total of DDR and NPU, as it estimates them), the data
    it reads and writes (``RW(KB)``, KB = 1024 bytes) and where it runs (NPU or CPU). Its names are
    ``Op:node``, the ONNX node it compiled (or one it derived: ``node_mean#1_rs#1``)."""
    return [LayerRecord(row["full_name"], blocks.of(row["full_name"].split(":", 1)[-1]), row["op_type"], "compiler",
                        memory_bytes=round(float(row["rw_kb"]) * 1024), cycles=int(row["cycles_total"]),
                        exec_type=row["target"], precision=DATA_TYPES.get(row["data_type"], row["data_type"]))
            for row in table]

