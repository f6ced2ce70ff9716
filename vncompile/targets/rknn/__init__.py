"""Rockchip RKNN: rknn-toolkit2 compiles the ONNX into ``model.rknn`` for a Rockchip NPU.

By concern, as Polygraphy splits its backends:

- ``platforms``: the SoCs, what each computes, their NPU clocks;
- ``toolkit``: the settings a build asks for and the requests to the toolkit's worker (it lives
  in its own environment), the compile, the calibration dataset file;
- ``compiler_output``: the memory plan and the per-layer table the verbose build prints;
- ``simulator``: the verification session on the toolkit's x86 simulator;
- ``board``: a connected board's own memory and latency figures.

Memory is the compiler's plan, latency the sum of the per-layer cycle estimates at the SoC's
NPU clock; with a board (``--rknn-target``), the board's ``eval_memory``/``eval_perf``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...api.request import BuildRequest
from ...api.target import (
    Artifact,
    Availability,
    CompileContext,
    CompileResult,
    LatencyFigure,
    LayerRecord,
    MemoryFigure,
    OnnxForm,
    Session,
    Target,
    facts,
)
from ...core.errors import InputError
from ...onnxtools.blocks import Blocks
from ...toolchains import get_spec, locate, missing_message, start_worker
from .board import board_latency, board_memory
from .compiler_output import LAYER_TABLE, layer_records, read_layer_cycles, read_layer_table, write_layer_table
from .platforms import DEFAULT_PLATFORM, INT8_ONLY, MAX_OPSET, NPU_CLOCKS, PLATFORMS, QUANT_ALGORITHMS
from .simulator import RknnSimulatorSession
from .toolkit import RKNN_MODEL, RknnOptions, RknnSettings, calibration_identity, compile_onnx, write_dataset

__all__ = ["RknnTarget"]


class RknnTarget(Target):
    name = "rknn"
    description = "Rockchip NPU via rknn-toolkit2 (verified on its x86 simulator)"
    why_no_runtime_profiles = "its memory is the compiler's static plan"
    own_options = RknnOptions
    precisions = ("fp16", "int8")
    # fp16 too: rknn-toolkit2 2.5.0 fails to build a YOLOv8/YOLO11 DFL (softmax, a fixed conv, a reshape) without
    # quantization (IndexError in its conv-reshape-split fusion rule), so a detector's head runs on the host.
    host_head_precisions = ("fp16", "int8")
    devices = ("simulator",)

    def availability(self) -> Availability:
        installed = locate("rknn")
        if not installed.installed:
            return Availability(False, installed.version, missing_message(installed))
        return Availability(True, installed.version, "", self.devices)

    def default_precision(self, own: RknnOptions) -> str:
        """The precision to build when none is asked for: fp16 where the NPU has it, int8 on the int8-only SoCs."""
        return "int8" if (own.platform or DEFAULT_PLATFORM) in INT8_ONLY else "fp16"

    def cache_identity(self) -> dict[str, str | None]:
        """The toolkit in its own environment, and that environment's spec (``packages`` can only name
        distributions of vncompile's environment)."""
        installed = locate("rknn")
        return {"rknn-toolkit2": installed.version, "rknn-toolchain": get_spec("rknn").fingerprint()}

    def onnx_form(self, precision: str) -> OnnxForm:
        return "fp32"  # the toolkit makes its own fp16 and int8 from the float graph

    def check_request(self, request: BuildRequest, own: RknnOptions) -> None:
        options = own
        platform = options.platform or DEFAULT_PLATFORM
        if platform not in PLATFORMS:
            raise InputError(f"unknown --platform '{platform}'; rknn builds for {', '.join(PLATFORMS)}")
        if request.precision not in self.precisions:
            suggestion = "int8" if platform in INT8_ONLY else "fp16 (or int8)"
            raise InputError(f"rknn builds fp16 or int8 (the NPU computes no {request.precision}); "
                             f"pass --precision {suggestion}")
        if request.precision == "fp16" and platform in INT8_ONLY:
            raise InputError(f"{platform} runs int8 only (its NPU has no fp16 path); pass --precision int8")
        if options.quant_algorithm is not None and request.precision != "int8":
            raise InputError("--quant-algorithm applies to --precision int8")
        if (options.quant_algorithm or "normal") not in QUANT_ALGORITHMS:
            raise InputError(f"unknown --quant-algorithm '{options.quant_algorithm}'; choose from "
                             f"{', '.join(QUANT_ALGORITHMS)}")
        self._check_graph(request)

    def _check_graph(self, request: BuildRequest) -> None:
        device = request.options.device
        if device not in (None, *self.devices):
            raise InputError(f"rknn verifies on its simulator, not --device {device}; a board is --rknn-target ID")
        if request.dynamic:
            raise InputError("rknn compiles static input shapes; drop --dynamic")
        if request.opset > MAX_OPSET:
            raise InputError(f"rknn-toolkit2 reads ONNX opset <= {MAX_OPSET}, not {request.opset}; "
                             f"{request.opset_remedy(MAX_OPSET)}")
        if request.options.io_dtype != "fp32":
            raise InputError("--io-dtype applies to fp16 ONNX graphs; rknn takes float32 inputs and converts itself")

    def compile(self, ctx: CompileContext) -> CompileResult:
        settings = RknnSettings.of_request(ctx.request, ctx.own)
        with start_worker("rknn", ctx.log) as worker:
            assert worker.scratch is not None
            dataset = None
            if settings.precision == "int8":
                assert ctx.calibration is not None, "the pipeline passes calibration inputs for int8"
                dataset = write_dataset(ctx.calibration, ctx.request.shape.batch, worker.scratch)
            report = compile_onnx(worker, ctx.onnx_path, settings, dataset, ctx.build_dir / RKNN_MODEL)
            toolkit = worker.facts.get("version")
        write_layer_table(report.layers, ctx.build_dir / LAYER_TABLE)
        clock = NPU_CLOCKS[settings.platform]
        ctx.log.info("rknn: %s %s, memory plan %.1f KB internal + %.1f KB weights, %d layers, %d cycles",
                     settings.platform, settings.precision, report.memory.internal_kb, report.memory.weight_kb,
                     len(report.layers), report.cycles)
        info = {
            "platform": settings.platform,
            "quant_algorithm": settings.quant_algorithm,
            "calibration": None if ctx.calibration is None else calibration_identity(
                ctx.calibration, ctx.request.options),
            "toolkit": f"rknn-toolkit2 {toolkit}",
            "memory_plan": report.memory.as_dict(),
            "layers": len(report.layers),
            "npu_cycles": report.cycles,
            "npu_clock_mhz": clock.mhz,
            "npu_clock_source": clock.source,
            "estimated_latency_ms": clock.milliseconds(report.cycles),
            "board": ctx.own.board,
            "verified_on": "rknn-toolkit2 simulator (rebuilt from model.onnx)",
        }
        return CompileResult([Artifact(RKNN_MODEL, "rknn", primary=True), Artifact(LAYER_TABLE, "rknn-layers")],
                             facts=info)

    plans_memory = True

    def planned_memory(self, onnx_path: Path, request: BuildRequest, own: RknnOptions) -> MemoryFigure:
        """The compiler's plan for ``onnx_path``, compiled and not exported. An int8 plan does not depend
        on the quantization scales, so one seeded noise input serves as its calibration."""
        settings = RknnSettings.of_request(request, own)
        with start_worker("rknn", logging.getLogger("vncompile")) as worker:
            assert worker.scratch is not None
            dataset = None
            if settings.precision == "int8":
                noise = np.random.default_rng(0).standard_normal(request.shape.as_tuple(), dtype=np.float32)
                dataset = write_dataset(noise, request.shape.batch, worker.scratch)
            report = compile_onnx(worker, onnx_path, settings, dataset, None)
            toolkit = worker.facts.get("version")
        return _plan_figure(report.memory.as_dict(), f"rknn-toolkit2 {toolkit}", settings.platform,
                            settings.precision)

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        return RknnSimulatorSession.open(build_dir, manifest)

    def compiler_memory(self, build_dir: Path, manifest: dict[str, Any]) -> MemoryFigure | None:
        target = facts(manifest)
        if target.get("board"):
            return board_memory(build_dir, manifest)
        return _plan_figure(target["memory_plan"], target["toolkit"], target["platform"],
                            manifest["target"]["precision"])

    def estimated_latency(self, build_dir: Path, manifest: dict[str, Any]) -> LatencyFigure | None:
        target = facts(manifest)
        if target.get("board"):
            return board_latency(build_dir, manifest)
        cycles = read_layer_cycles(build_dir / LAYER_TABLE)
        clock = NPU_CLOCKS[target["platform"]]
        detail = (f"sum of {len(cycles)} layers' total cycles from the rknn compiler at {clock.mhz:g} MHz "
                  f"({target['platform']}: {clock.source}); one pass through the layers in order, no overlap")
        return LatencyFigure([clock.milliseconds(sum(cycles))], "estimated", detail)

    def layer_profile(self, build_dir: Path, manifest: dict[str, Any], x: np.ndarray,
                      runs: int) -> list[LayerRecord]:
        """The compiler's per-layer table (``rknn_layers.csv``): cycles and data moved per layer, unrun."""
        return layer_records(read_layer_table(build_dir / LAYER_TABLE), Blocks.of_build(build_dir))


def _plan_figure(plan: dict[str, float], toolkit: str, platform: str, precision: str) -> MemoryFigure:
    """The compiler's memory plan (``RknnMemoryPlan.as_dict``) as a figure."""
    return MemoryFigure(max_kb=plan["total_kb"], source="compiler", weights_kb=plan["weight_kb"],
                        activations_kb=plan["internal_kb"], detail=f"{toolkit} memory plan for {platform} {precision}")
