"""Arm Ethos-U: an int8 TFLite (litert-torch) compiled by vela, in the ethos-u toolchain's environment.

``vela``: the accelerators and Arm's system configurations and memory modes, the settings a build
asks for, vela's summary and the operators it leaves to the CPU. The int8 TFLite is verified on the
LiteRT interpreter (``targets.litert.interpreter``); vela's output, a command stream for the NPU, runs
only on the device.

The toolchain (``vncompile toolchain install ethos-u``: litert-torch, vela, pinned) rebuilds the
verified ONNX in torch node for node, quantizes it with litert-torch's PT2E quantizer on the shared
calibration set, converts it to a fully int8 TFLite with NHWC input, and vela compiles that. Memory
is vela's plan (``compiler``: SRAM plus off-chip), latency vela's estimate (``estimated``).
"""

from __future__ import annotations

import csv
import shutil
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
from ...core.errors import InputError, VncompileError
from ...onnxtools.blocks import Blocks
from ...toolchains import Worker, WorkerRequestFailed, get_spec, locate, missing_message, start_worker
from ..litert.interpreter import LiteRtInterpreterSession
from ..rebuilt import check_rebuilt
from .vela import EthosUOptions, VelaSettings, VelaSummary, cpu_operations, vela_layers

__all__ = ["EthosUTarget"]

TFLITE, VELA_TFLITE = "model_int8.tflite", "model_int8_vela.tflite"
SUMMARY_CSV, LAYERS_CSV = "vela_summary.csv", "vela_per_layer.csv"
CONVERT_TIMEOUT_S, VELA_TIMEOUT_S = 3600.0, 1800.0


class EthosUTarget(Target):
    name = "ethos-u"
    description = "Arm Ethos-U NPU: int8 TFLite (litert-torch) compiled by vela; TFLite verified on LiteRT"
    precisions = ("int8",)
    devices = ("interpreter",)
    why_no_runtime_profiles = "its memory is vela's static plan"
    latency_here = False  # what runs here is the LiteRT interpreter on x86, not the NPU: vela's estimate stands
    own_options = EthosUOptions
    # Measured with vela (``benchmarks/npu_passes.py``, VanillaNet-5 at 224 on ethos-u65-256): the 4x4/s4
    # stem as one 1x1 conv instead of a convolution per output pixel, 0.58x the cycles and half the DRAM
    # traffic. ReLU before MaxPool changes nothing here (litert-torch requantizes after the pool on the NPU).
    graph_passes = ("stem-space-to-depth",)

    def availability(self) -> Availability:
        installed = locate("ethos-u")
        if not installed.installed:
            return Availability(False, installed.version, missing_message(installed))
        return Availability(True, installed.version, "", self.devices)

    def cache_identity(self) -> dict[str, str | None]:
        return {"ethos-u-vela": locate("ethos-u").version, "ethos-u-toolchain": get_spec("ethos-u").fingerprint()}

    def onnx_form(self, precision: str) -> OnnxForm:
        return "fp32"  # quantized in the toolchain by litert-torch's PT2E quantizer

    def check_request(self, request: BuildRequest, own: EthosUOptions) -> None:
        if request.precision not in self.precisions:
            raise InputError(f"ethos-u builds int8 (the NPU computes int8 only), not {request.precision}; "
                             "pass --precision int8")
        check_rebuilt(self.name, request, static_because="an Ethos-U command stream has static shapes",
                      batch_1_because="a microcontroller NPU runs one input at a time")
        device = request.options.device
        if device not in (None, *self.devices):
            raise InputError(f"ethos-u verifies the int8 TFLite on the LiteRT interpreter, not --device {device}")
        VelaSettings.of_options(own)

    def compile(self, ctx: CompileContext) -> CompileResult:
        assert ctx.calibration is not None, "the pipeline passes calibration inputs for int8"
        settings = VelaSettings.of_options(ctx.own)
        with start_worker("ethos-u", ctx.log) as worker:
            assert worker.scratch is not None
            onnx, calibration = worker.scratch / "model.onnx", worker.scratch / "calibration.npy"
            tflite, out = worker.scratch / TFLITE, worker.scratch / "vela"
            shutil.copyfile(ctx.onnx_path, onnx)
            np.save(calibration, np.ascontiguousarray(ctx.calibration, dtype=np.float32))
            _request(worker, "convert", {"onnx": str(onnx), "calibration": str(calibration), "output": str(tflite)},
                     CONVERT_TIMEOUT_S, "convert the graph to an int8 TFLite")
            reply = _request(worker, "vela", {"tflite": str(tflite), "output_dir": str(out), **settings.as_args()},
                             VELA_TIMEOUT_S, "compile for the NPU")
            versions = dict(worker.facts)
            cpu_ops = cpu_operations(reply.output)
            refused = settings.refused_cpu_ops(cpu_ops)
            if refused:
                names = ", ".join(sorted({op["op"] for op in refused}))
                raise VncompileError(f"vela left {len(refused)} operator(s) to the CPU ({names}); change the graph, "
                                     f"or accept them with --allow-cpu-ops {names.replace(' ', '')}")
            shutil.move(tflite, ctx.build_dir / TFLITE)
            shutil.move(reply.result["optimized"], ctx.build_dir / VELA_TFLITE)
            shutil.move(reply.result["summary_csv"], ctx.build_dir / SUMMARY_CSV)
            shutil.move(reply.result["layers_csv"], ctx.build_dir / LAYERS_CSV)
        summary = VelaSummary.of_row(reply.result["summary"])
        ctx.log.info("ethos-u: %s, SRAM %.1f KB + off-chip %.1f KB, %d cycles (%.3f ms), %d CPU operators",
                     settings.accelerator, summary.memory_kb["sram"], summary.total_kb - summary.memory_kb["sram"],
                     summary.cycles, summary.inference_ms, len(cpu_ops))
        info = {**settings.as_args(), "allow_cpu_ops": list(settings.allow_cpu_ops), "vela": summary.as_dict(),
                "cpu_operators": cpu_ops, "toolkit": f"ethos-u-vela {versions.get('version')}, litert-torch "
                                                    f"{versions.get('litert_torch')}",
                "quantization": "int8, PT2E symmetric, per-channel weights (litert-torch)",
                "verified_on": "LiteRT interpreter (the int8 TFLite vela compiled)"}
        return CompileResult([Artifact(VELA_TFLITE, "ethos-u-tflite", primary=True), Artifact(TFLITE, "tflite-int8"),
                              Artifact(SUMMARY_CSV, "vela-summary"), Artifact(LAYERS_CSV, "vela-layers")], facts=info)

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        return LiteRtInterpreterSession.open(build_dir / TFLITE)

    def compiler_memory(self, build_dir: Path, manifest: dict[str, Any]) -> MemoryFigure:
        summary, target = VelaSummary.of_manifest(manifest), facts(manifest)
        areas = ", ".join(f"{area.replace('_', '-')} {used:,.1f} KB"
                          for area, used in summary.memory_kb.items() if used)
        return MemoryFigure(summary.total_kb, "compiler", summary.weights_kb,
                            max(summary.total_kb - summary.weights_kb, 0.0),
                            f"{target['toolkit'].split(',')[0]} plan for {target['accelerator']} "
                            f"({target['system_config']}, {target['memory_mode']}): {areas}; activations = all "
                            "but the encoded weights, staging buffers included")

    def estimated_latency(self, build_dir: Path, manifest: dict[str, Any]) -> LatencyFigure:
        summary, target = VelaSummary.of_manifest(manifest), facts(manifest)
        return LatencyFigure([summary.inference_ms], "estimated",
                             f"vela's estimate: {summary.cycles:,} cycles at {summary.clock_hz / 1e6:g} MHz "
                             f"({target['accelerator']}, {target['system_config']})")

    def layer_profile(self, build_dir: Path, manifest: dict[str, Any], x: np.ndarray,
                      runs: int) -> list[LayerRecord]:
        """vela's per-layer table (``vela_per_layer.csv``), lined up with the graph the TFLite was converted from."""
        import onnx

        blocks = Blocks.of_build(build_dir)
        graph = onnx.load(str(build_dir / "model.onnx"), load_external_data=False).graph
        with open(build_dir / LAYERS_CSV, newline="") as f:
            rows = list(csv.DictReader(f))
        return vela_layers(rows, [(node.op_type, blocks.of(node.name)) for node in graph.node])


def _request(worker: Worker, op: str, args: dict[str, Any], timeout: float, what: str) -> Any:
    try:
        return worker.request(op, args, timeout=timeout)
    except WorkerRequestFailed as exc:
        raise VncompileError(f"the ethos-u toolchain failed to {what}: {exc.error}") from None
