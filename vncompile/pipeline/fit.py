"""``--fit-memory SIZE``: the fused network, tiled (``vanillanet.tiling``) so that its peak memory fits.

Candidates come from the analytic plan of the graph that would be exported (``onnxtools.memory_plan``
at the build's element size, in the depth-first order the build writes): for the stem plus 1 or 2
stages, the strip counts whose plan fits, cheapest first (fewest MACs recomputed in halos). A target
whose compiler plans memory itself (rknn: ``Target.plans_memory``) then judges them: its compiler
hoists the strips' input slices and allocates in its own way, so its figure for a tiled graph can
exceed the analytic one, and the first candidate its compiler fits is taken. None fits: one line with
the smallest peak reached.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.io import work_directory
from ..core.units import kb
from ..onnxtools.memory_plan import plan_memory
from ..vanillanet.tiling import TiledVanillaNet, Tiling, extra_macs
from .plan import BuildPlan
from .prepare import onnx_graph
from .stages import LoadedModel

log = logging.getLogger("vncompile")
STRIPS = (2, 3, 4, 6, 8, 12, 16, 24, 32)
MAX_STAGES = 2  # beyond the second stage the maps are small: tiling them costs halos and saves little
MORE_STRIPS = 2  # strip counts tried past the first that fits the plan (a compiler may need them)
MAX_JUDGED = 6  # compiler runs at most, cheapest candidates first: each is a full compile


@dataclasses.dataclass(frozen=True)
class _Candidate:
    tiling: Tiling | None  # None: the network untiled
    path: Path  # its simplified ONNX, as the build would write it
    planned_kb: float  # analytic: weights + arena
    extra_macs: int
    target_kb: float | None = None  # the judging compiler's figure

    @property
    def peak_kb(self) -> float:
        return self.target_kb if self.target_kb is not None else self.planned_kb

    def describe(self) -> str:
        if self.tiling is None:
            return "untiled"
        return f"the stem and {self.tiling.stages} stage(s) in {self.tiling.strips} strips"

    def as_dict(self) -> dict[str, Any]:
        return {"tiling": None if self.tiling is None else self.tiling.as_dict(), "planned_peak_kb": self.planned_kb,
                "target_peak_kb": self.target_kb, "extra_macs": self.extra_macs}


def _candidate(loaded: LoadedModel, plan: BuildPlan, work: Path, tiling: Tiling | None) -> _Candidate:
    """The graph the build will compile for ``tiling`` (made by the build's own ``onnx_graph``); planned."""
    network = loaded.network if tiling is None else TiledVanillaNet(loaded.network, tiling)
    name = "untiled" if tiling is None else f"s{tiling.stages}x{tiling.strips}"
    path = work / f"{name}.simplified.onnx"
    onnx_graph(plan, dataclasses.replace(loaded, network=network), work / f"{name}.onnx", path, check=False)
    shape = plan.request.shape
    cost = 0 if tiling is None else extra_macs(loaded.network, tiling, shape.height, shape.width)
    candidate = _Candidate(tiling, path, kb(plan_memory(path, plan.precision).total_bytes), cost)
    log.info("fit-memory: %s: planned peak %.0f KB", candidate.describe(), candidate.planned_kb)
    return candidate


def _fitting_tilings(loaded: LoadedModel, plan: BuildPlan, work: Path, tried: list[_Candidate],
                     more_strips: int) -> list[_Candidate]:
    """Tilings whose analytic plan fits the budget, cheapest first; every one planned goes to ``tried``.
    Per number of stages, ``more_strips`` strip counts past the first that fits (for a judging compiler)."""
    budget, network = plan.options.fit_memory, loaded.network
    fitting = []
    for stages in range(1, min(MAX_STAGES, len(network.stages) - 1) + 1):  # the stem alone saves nothing:
        previous, past_fit = None, None  # the first stage's 1x1 conv output is the peak
        try:
            TiledVanillaNet(network, Tiling(stages, 2))
        except InputError:
            break  # e.g. a backbone output inside the tiled stages: no more stages either
        for strips in STRIPS:
            candidate = _candidate(loaded, plan, work, Tiling(stages, strips))
            tried.append(candidate)
            if candidate.planned_kb <= budget:
                fitting.append(candidate)
                past_fit = 0 if past_fit is None else past_fit + 1
                if past_fit >= more_strips:
                    break  # more strips of the same stages only add halos
            elif previous is not None and candidate.planned_kb > 0.99 * previous:
                break  # the peak is no longer the strips' maps: more strips cannot help
            previous = candidate.planned_kb
    return sorted(fitting, key=lambda c: (c.extra_macs, c.tiling.strips if c.tiling else 0))


def fit_memory(loaded: LoadedModel, plan: BuildPlan) -> tuple[LoadedModel, dict[str, Any]]:
    """``loaded`` (the deploy form) as it must run to fit ``--fit-memory`` KB, and the record. The plan's
    ``fit_judge``, where it has one, is a target whose compiler's own figure must fit too (``Target.plans_memory``)."""
    request, judge = plan.request, plan.fit_judge
    budget = request.options.fit_memory
    assert budget is not None
    if request.dynamic:
        raise InputError("--fit-memory plans a static input shape; drop --dynamic")
    network = loaded.network
    if not loaded.family.tiles:
        raise InputError(f"--fit-memory tiles VanillaNet's high-resolution stages; {loaded.spec.label} is not one")
    with work_directory("fit-") as work:  # removed by the next run if this one is killed
        untiled = _candidate(loaded, plan, work, None)
        tried = [untiled]
        candidates = [untiled] if untiled.planned_kb <= budget else []
        if not candidates or judge:
            candidates += _fitting_tilings(loaded, plan, work, tried, MORE_STRIPS if judge else 0)
        chosen = None
        for index, candidate in enumerate(candidates):
            if judge is not None:
                if index == MAX_JUDGED:
                    break
                figure = judge.planned_memory(candidate.path, request, plan.own)
                candidate = dataclasses.replace(candidate, target_kb=figure.max_kb)
                tried[next(i for i, c in enumerate(tried) if c.path == candidate.path)] = candidate
                log.info("fit-memory: %s: %s's %s figure %.0f KB", candidate.describe(), judge.name, figure.source,
                         figure.max_kb)
            if candidate.peak_kb <= budget:
                chosen = candidate
                break
    record: dict[str, Any] = {"budget_kb": budget, "untiled_peak_kb": tried[0].peak_kb,
                              "judged_by": None if judge is None else judge.name,
                              "tried": [c.as_dict() for c in tried]}
    if chosen is None:
        judged = [c for c in tried if c.target_kb is not None]
        smallest = min(judged or tried, key=lambda c: c.peak_kb)
        whose = f"figure {judge.name}'s compiler gave" if judged and judge else "planned peak"
        if judge and len(judged) == MAX_JUDGED and len(candidates) > MAX_JUDGED:
            whose += f" to the {MAX_JUDGED} cheapest tilings that fit the plan"
        where = f"{loaded.spec.label} at {request.shape.label}{f' on {judge.name}' if judge else ''}"
        first = tried[0]
        untiled_figure = (f"{first.planned_kb:,.0f} KB planned" if first.target_kb is None else
                          f"{first.target_kb:,.0f} KB")
        if smallest.tiling is None:
            raise InputError(f"--fit-memory {budget:,.0f} KB: no tiling fits {where}; none lowers the {whose} "
                             f"below the untiled network's {smallest.peak_kb:,.0f} KB")
        raise InputError(f"--fit-memory {budget:,.0f} KB: no tiling fits {where}; the smallest {whose} is "
                         f"{smallest.peak_kb:,.0f} KB ({smallest.describe()}), untiled {untiled_figure}")
    log.info("fit-memory: %s, peak %.0f KB (untiled %.0f KB), %d extra MACs", chosen.describe(), chosen.peak_kb,
             tried[0].peak_kb, chosen.extra_macs)
    fitted = loaded if chosen.tiling is None else dataclasses.replace(
        loaded, network=TiledVanillaNet(network, chosen.tiling))
    return fitted, {**record, **chosen.as_dict()}
