"""``--fit-memory SIZE``: the fused network, tiled (``vanillanet.tiling``) so that its planned peak fits.

The choice is made on the analytic plan of the graph that would be exported (``onnxtools.memory_plan``
at the build's element size): the untiled network when it fits; otherwise, for the stem plus 0, 1
or 2 stages, the fewest strips that fit, and of those the tiling that recomputes the fewest MACs
in its halos. None fits: one line with the smallest peak tiling reaches.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..api.request import BuildRequest
from ..core.errors import InputError
from ..core.units import kb
from ..onnxtools.memory_plan import MemoryPlan, plan_memory
from ..onnxtools.order import depth_first_order
from ..onnxtools.simplify import simplify_onnx
from ..vanillanet.model import VanillaNet
from ..vanillanet.tiling import TiledVanillaNet, Tiling, extra_macs
from .stages import LoadedModel, export_onnx

log = logging.getLogger("vncompile")
STRIPS = (2, 3, 4, 6, 8, 12, 16, 24, 32)
MAX_STAGES = 2  # beyond the second stage the maps are small: tiling them costs halos and saves little


def _plan(loaded: LoadedModel, request: BuildRequest, work: Path, name: str) -> MemoryPlan:
    """The plan of the graph the build will compile: exported, simplified, in depth-first order."""
    exported = export_onnx(loaded, request.shape, work / f"{name}.onnx", opset=request.opset, dynamic=False)
    path = work / f"{name}.simplified.onnx"
    simplify_onnx(exported, path, request.simplifier) if request.simplifier != "none" else shutil.copyfile(
        exported, path)
    depth_first_order(path)
    return plan_memory(path, request.precision)


def fit_memory(loaded: LoadedModel, request: BuildRequest) -> tuple[LoadedModel, dict[str, Any]]:
    """``loaded`` (the deploy form) as it must run to fit ``request.options.fit_memory`` KB, and the record."""
    budget = request.options.fit_memory
    assert budget is not None
    if request.dynamic:
        raise InputError("--fit-memory plans a static input shape; drop --dynamic")
    network = loaded.network
    if not isinstance(network, VanillaNet):
        raise InputError(f"--fit-memory tiles VanillaNet's high-resolution stages; {loaded.spec.label} is not one")
    with tempfile.TemporaryDirectory(prefix="vncompile-fit-") as tmp:
        work = Path(tmp)
        untiled = _plan(loaded, request, work, "untiled")
        record: dict[str, Any] = {"budget_kb": budget, "untiled_peak_kb": kb(untiled.total_bytes)}
        if kb(untiled.total_bytes) <= budget:
            return loaded, {**record, "tiling": None, "planned_peak_kb": kb(untiled.total_bytes), "extra_macs": 0}
        best: tuple[int, Tiling, MemoryPlan] | None = None
        smallest: tuple[float, Tiling] | None = None
        for stages in range(1, min(MAX_STAGES, len(network.stages) - 1) + 1):  # the stem alone saves nothing:
            previous = None  # the first stage's 1x1 conv output is the peak
            for strips in STRIPS:
                tiling = Tiling(stages, strips)
                try:
                    tiled = dataclasses.replace(loaded, network=TiledVanillaNet(network, tiling))
                except InputError:
                    break  # e.g. a backbone output inside the tiled stages: no more stages either
                plan = _plan(tiled, request, work, f"s{stages}x{strips}")
                peak = kb(plan.total_bytes)
                log.info("fit-memory: %d stage(s) in %d strips: planned peak %.0f KB", stages, strips, peak)
                if smallest is None or peak < smallest[0]:
                    smallest = (peak, tiling)
                if peak <= budget:
                    cost = extra_macs(network, tiling, request.shape.height, request.shape.width)
                    if best is None or cost < best[0]:
                        best = (cost, tiling, plan)
                    break  # more strips of the same stages only add halos
                if previous is not None and peak > 0.99 * previous:
                    break  # the peak is no longer the strips' maps: more strips cannot help
                previous = peak
    if best is None:
        assert smallest is not None
        raise InputError(f"--fit-memory {budget:,.0f} KB: no tiling fits {loaded.spec.label} at "
                         f"{request.shape.label}; the smallest planned peak is {smallest[0]:,.0f} KB (the stem and "
                         f"{smallest[1].stages} stage(s) in {smallest[1].strips} strips), untiled "
                         f"{kb(untiled.total_bytes):,.0f} KB")
    cost, tiling, plan = best
    log.info("fit-memory: %s, planned peak %.0f KB (untiled %.0f KB), %d extra MACs", tiling, kb(plan.total_bytes),
             kb(untiled.total_bytes), cost)
    return dataclasses.replace(loaded, network=TiledVanillaNet(network, tiling)), {
        **record, "tiling": tiling.as_dict(), "planned_peak_kb": kb(plan.total_bytes), "extra_macs": cost,
        "peak_at": plan.peak_node}
