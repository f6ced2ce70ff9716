"""``analytic``: max memory estimated from the ONNX graph alone, for every model and size.

Portable and instant: no runtime, no device. It plans the fp32 graph at the element
size of the requested precision (what a compiler for that precision would lay out)
and writes the plan, with the tensors live at its peak, as ``memory_plan.json``. Per layer, it gives
the bytes live while each op runs (``memory_timeline``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..api.target import (
    Artifact,
    Availability,
    CompileContext,
    CompileResult,
    LayerRecord,
    MemoryFigure,
    Session,
    Target,
)
from ..core.io import write_json
from ..core.units import kb
from ..onnxtools.blocks import Blocks

PLAN_FILE = "memory_plan.json"


class AnalyticTarget(Target):
    name = "analytic"
    description = "estimated memory from the ONNX graph (fused ops, lifetimes, best-fit arena in execution order)"
    why_no_runtime_profiles = "it plans the graph and runs nothing"
    precisions = ("fp32", "fp16", "bf16", "int8", "int16")  # int16: 2-byte activations, 1-byte weights
    devices = ("graph",)
    executes = False
    quantizes = False

    def availability(self) -> Availability:
        return Availability(True, __version__, devices=self.devices)

    def onnx_form(self, precision: str):
        return "fp32"  # planned at the precision's element size, without a Q/DQ graph's extra tensors

    def compile(self, ctx: CompileContext) -> CompileResult:
        from ..onnxtools.memory_plan import plan_memory

        plan = plan_memory(ctx.onnx_path, ctx.request.precision)
        write_json(ctx.build_dir / PLAN_FILE, plan.as_dict())
        ctx.log.info("analytic: weights %d B, arena %d B, peak at %s", plan.weight_bytes, plan.arena_bytes,
                     plan.peak_node)
        return CompileResult([Artifact(PLAN_FILE, "memory-plan", primary=True)],
                             facts={"weights_kb": kb(plan.weight_bytes), "activations_kb": kb(plan.arena_bytes),
                                    "peak_node": plan.peak_node})

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        raise NotImplementedError("the analytic target runs nothing")

    def compiler_memory(self, build_dir: Path, manifest: dict[str, Any]) -> MemoryFigure:
        document = json.loads((build_dir / PLAN_FILE).read_text())
        document.pop("total_bytes")
        document["live_at_peak"] = [tuple(x) for x in document["live_at_peak"]]
        from ..onnxtools.memory_plan import MemoryPlan

        return MemoryPlan(**document).figure()

    def layer_profile(self, build_dir: Path, manifest: dict[str, Any], x: np.ndarray,
                      runs: int) -> list[LayerRecord]:
        """Each planned op (a Conv with what it absorbed) and the bytes live while it runs."""
        from ..onnxtools.memory_plan import memory_timeline

        blocks = Blocks.of_build(build_dir)
        return [LayerRecord(step.node, blocks.of(step.node), step.op, "estimated", memory_bytes=step.live_bytes,
                            precision=manifest["target"]["precision"])
                for step in memory_timeline(build_dir / "model.onnx", manifest["target"]["precision"])]
