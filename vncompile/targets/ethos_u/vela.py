"""Ethos-U configurations and what vela reports.

The accelerators vela compiles for, each with the system configuration and memory mode of Arm's own
``vela.ini`` that a board with it most often has (overridable); the settings a build asks for; vela's
summary (one CSV row: SRAM and off-chip memory used, cycles, estimated inference time), the
operators it leaves to the Cortex-M CPU (its ``--show-cpu-operations`` lines) and its per-layer table
as layer records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ...api.target import LayerRecord, facts
from ...core.errors import InputError, VncompileError
from ...core.schema import Text, TextList, setting
from ...core.units import kb

# accelerator -> (system config, memory mode): U55 shares the SoC's SRAM and reads weights from flash;
# U65 and U85 have SRAM of their own as a cache in front of DRAM (Arm's "Dedicated SRAM" modes).
U55 = ("Ethos_U55_High_End_Embedded", "Shared_Sram")
U65 = ("Ethos_U65_High_End", "Dedicated_Sram_512KB")
U85 = ("Ethos_U85_SYS_DRAM_High", "Dedicated_Sram_384KB")
ACCELERATORS: dict[str, tuple[str, str]] = {
    **{f"ethos-u55-{macs}": U55 for macs in (32, 64, 128, 256)},
    **{f"ethos-u65-{macs}": U65 for macs in (256, 512)},
    **{f"ethos-u85-{macs}": U85 for macs in (128, 256, 512, 1024, 2048)},
}
DEFAULT_ACCELERATOR = "ethos-u65-256"
# Arm/vela.ini's sections (vela 5.2); a test checks them against the installed file.
SYSTEM_CONFIGS = ("Ethos_U55_Deep_Embedded", "Ethos_U55_High_End_Embedded", "Ethos_U65_Embedded",
                  "Ethos_U65_Mid_End", "Ethos_U65_High_End", "Ethos_U65_Client_Server", "Ethos_U85_SYS_Flash_Low",
                  "Ethos_U85_SYS_Flash_High", "Ethos_U85_SYS_DRAM_Low", "Ethos_U85_SYS_DRAM_Mid",
                  "Ethos_U85_SYS_DRAM_High")
MEMORY_MODES = ("Sram_Only", "Shared_Sram", "Dedicated_Sram", "Dedicated_Sram_256KB", "Dedicated_Sram_384KB",
                "Dedicated_Sram_512KB")
MEMORY_AREAS = ("sram", "dram", "on_chip_flash", "off_chip_flash")
# "   CPU: Passthrough = NAME (outputs [1, 1, 1, 1568])": vela's own type for a CPU-placed op is Passthrough;
# the TFLite operator is in its warning, "Warning (supported operators) operator: SOFTMAX, ofm: 'NAME'".
CPU_OPERATION = re.compile(r"^\s*CPU: (\w+) = (.*?)(?: \(outputs \[[\d, ]*\]\))?$")
UNSUPPORTED = re.compile(r"^Warning \(supported operators\) operator: (\w+), ofm: '(.*)'$")
CPU_COUNT = re.compile(r"^CPU operators = (\d+) ")


@dataclass(frozen=True)
class EthosUOptions:
    """The ethos-u target's own options (``Target.own_options``)."""

    accelerator: str | None = setting(
        Text("an Ethos-U configuration such as ethos-u65-256"), None, flag="--accelerator",
        help="ethos-u: ethos-u55-32..256, ethos-u65-256|512, ethos-u85-128..2048  [default: ethos-u65-256]")
    system_config: str | None = setting(
        Text("a vela system configuration name"), None, flag="--system-config",
        help="ethos-u: vela system configuration (Arm/vela.ini), e.g. Ethos_U65_High_End  [default: the "
             "accelerator's own]")
    memory_mode: str | None = setting(
        Text("a vela memory mode name"), None, flag="--memory-mode",
        help="ethos-u: vela memory mode, e.g. Dedicated_Sram_512KB, Shared_Sram  [default: the accelerator's own]")
    allow_cpu_ops: tuple[str, ...] | None = setting(
        TextList("a list of TFLite operator names, or 'all'"), None, flag="--allow-cpu-ops",
        help="ethos-u: operators allowed to fall back to the Cortex-M CPU (e.g. SOFTMAX), or all  [default: "
             "none: a CPU fallback fails the build]")


@dataclass(frozen=True)
class VelaSettings:
    """What a build asks vela for; recorded in the manifest."""

    accelerator: str
    system_config: str
    memory_mode: str
    allow_cpu_ops: tuple[str, ...]  # operator names, or ("all",)

    @classmethod
    def of_options(cls, options: EthosUOptions) -> VelaSettings:
        accelerator = options.accelerator or DEFAULT_ACCELERATOR
        if accelerator not in ACCELERATORS:
            raise InputError(f"unknown --accelerator '{accelerator}'; ethos-u builds for {', '.join(ACCELERATORS)}")
        system_config, memory_mode = ACCELERATORS[accelerator]
        system_config, memory_mode = options.system_config or system_config, options.memory_mode or memory_mode
        if system_config not in SYSTEM_CONFIGS:
            raise InputError(f"unknown --system-config '{system_config}'; vela's Arm/vela.ini has "
                             f"{', '.join(SYSTEM_CONFIGS)}")
        if memory_mode not in MEMORY_MODES:
            raise InputError(f"unknown --memory-mode '{memory_mode}'; vela's Arm/vela.ini has "
                             f"{', '.join(MEMORY_MODES)}")
        if accelerator.startswith("ethos-u55") and memory_mode.startswith("Dedicated_Sram"):
            raise InputError(f"{accelerator} has no SRAM of its own (--memory-mode {memory_mode} is for "
                             "Ethos-U65/U85); pass --memory-mode Shared_Sram or Sram_Only")
        if system_config.split("_")[1] != accelerator.split("-")[1].upper():
            raise InputError(f"--system-config {system_config} describes another Ethos-U than {accelerator}")
        return cls(accelerator, system_config, memory_mode, tuple(options.allow_cpu_ops or ()))

    def as_args(self) -> dict[str, str]:
        return {"accelerator": self.accelerator, "system_config": self.system_config, "memory_mode": self.memory_mode}

    def refused_cpu_ops(self, cpu_ops: list[dict[str, str]]) -> list[dict[str, str]]:
        """The CPU-placed operators not allowed by ``--allow-cpu-ops`` (names compared as vela or TFLite spell
        them: Softmax = SOFTMAX)."""
        if any(name.lower() == "all" for name in self.allow_cpu_ops):
            return []
        allowed = {_op_key(name) for name in self.allow_cpu_ops}
        return [op for op in cpu_ops if _op_key(op["op"]) not in allowed]


def _op_key(name: str) -> str:
    return name.replace("_", "").lower()


def cpu_operations(output: list[str]) -> list[dict[str, str]]:
    """The operators vela left to the CPU (``--show-cpu-operations``): their TFLite type and name. Its count
    line decides how many: where vela cannot name one (it prints ``CPU: N/A``), it is ``unknown``."""
    lines = [line.strip() for line in output]
    counts = [int(m.group(1)) for m in map(CPU_COUNT.match, lines) if m]
    if len(counts) != 1:
        raise VncompileError("vela printed no operator placement ('CPU operators = N'); its output is in build.log")
    tflite_op = {m.group(2): m.group(1) for m in map(UNSUPPORTED.match, lines) if m}
    named = [{"op": tflite_op.get(m.group(2), m.group(1)), "name": m.group(2)}
             for m in map(CPU_OPERATION.match, lines) if m]
    return named + [{"op": "unknown", "name": "N/A"}] * (counts[0] - len(named))


@dataclass(frozen=True)
class VelaSummary:
    """vela's summary row, the figures vncompile reports."""

    memory_kb: dict[str, float]  # KiB used per memory area, as vela plans it
    weights_kb: float  # the NPU-encoded weights
    cycles: int
    inference_ms: float
    clock_hz: float

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> VelaSummary:
        return cls({area: float(row[f"{area}_memory_used"]) for area in MEMORY_AREAS},
                   kb(float(row["total_npu_encoded_weights"])), int(float(row["cycles_total"])),
                   float(row["inference_time"]) * 1e3, float(row["core_clock"]))

    @property
    def total_kb(self) -> float:
        return sum(self.memory_kb.values())

    def as_dict(self) -> dict[str, Any]:
        return {"memory_kb": self.memory_kb, "weights_kb": self.weights_kb, "total_kb": self.total_kb,
                "cycles": self.cycles, "inference_ms": self.inference_ms, "clock_hz": self.clock_hz}

    @classmethod
    def of_manifest(cls, manifest: dict[str, Any]) -> VelaSummary:
        vela = dict(facts(manifest)["vela"])
        vela.pop("total_kb")
        return cls(**vela)


# What an operator computes, for lining vela's rows up with the ONNX graph's nodes: the ops both keep one for one,
# in order (what moves values, quantizes or changes layout may be added, merged or dropped by the converter).
ANCHORS = {"conv": "conv", "gemm": "conv", "matmul": "conv", "conv2d": "conv", "depthwiseconv2d": "conv",
           "transposeconv": "conv", "fullyconnected": "conv", "maxpool": "max_pool", "maxpool2d": "max_pool",
           "averagepool": "avg_pool", "globalaveragepool": "avg_pool", "reducemean": "avg_pool", "mean": "avg_pool",
           "avgpool": "avg_pool", "averagepool2d": "avg_pool", "add": "add"}
INTERMEDIATE = "_intermediate"  # vela's name for the first of the rows it splits one operator into


def anchor(op: str) -> str | None:
    return ANCHORS.get(op.replace("_", "").lower())


def vela_layers(rows: list[dict[str, str]], graph_ops: list[tuple[str, str]]) -> list[LayerRecord]:
    """vela's per-layer rows as layer records: its cycles, the SRAM staging bytes the layer uses, where it runs.

    Its names are the TFLite converter's, not the graph's, so the rows are lined up with ``graph_ops`` ((op type,
    block) of the ONNX nodes in order): one TFLite operator (vela splits some into rows: a Conv2D and its Relu; a
    Mean into a depthwise conv and a Mul) per compute node, in the same order. An operator between them (a
    transpose, a requantization) belongs to the block it feeds. Where the two orders differ, no block is claimed.
    """
    operators: list[list[dict[str, str]]] = []
    for row in rows:
        key = (row["Original Operator"], row["Name"].removesuffix(INTERMEDIATE))
        previous = operators[-1][0] if operators else None
        if previous is not None and (previous["Original Operator"],
                                     previous["Name"].removesuffix(INTERMEDIATE)) == key:
            operators[-1].append(row)
        else:
            operators.append([row])
    graph_anchors = [(kind, block) for kind, block in ((anchor(op), block) for op, block in graph_ops) if kind]
    anchored = [i for i, group in enumerate(operators) if anchor(group[0]["Original Operator"])]
    blocks = [""] * len(operators)
    if [anchor(operators[i][0]["Original Operator"]) for i in anchored] == [kind for kind, _ in graph_anchors]:
        for i, (_, block) in zip(anchored, graph_anchors, strict=True):
            blocks[i] = block
        following = graph_anchors[-1][1] if graph_anchors else ""
        for i in reversed(range(len(operators))):  # the rest: the block of the next anchored operator
            following = blocks[i] = blocks[i] or following
    return [LayerRecord(row["Name"], block, f"{row['Original Operator']}/{row['NNG Operator']}", "compiler",
                        memory_bytes=int(float(row["Staging Usage"])), cycles=int(float(row["Op Cycles"])),
                        exec_type=row["Target"], precision="int8")
            for group, block in zip(operators, blocks, strict=True) for row in group]
