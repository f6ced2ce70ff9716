"""Qualcomm Hexagon HTP through ONNX Runtime's QNN execution provider (``onnxruntime-qnn``).

The graph is quantized for QNN (``get_qnn_qdq_config`` on the shared calibration set): int8 is uint8
activations and weights, int16 uint16 activations with uint8 weights (QNN's A16W8). It is then
compiled offline into an HTP **context binary**: the artifact a phone loads, with the EPContext ONNX
that points at it. Every node must run on the HTP (the CPU fallback is off), so a graph with anything
the HTP cannot take fails to build in QNN's own words. A node the quantizer leaves outside a Q/DQ
unit still runs on the HTP, in float between a Dequantize and a Quantize: the build reports those
(``onnxtools.quantized``) and names the graph pass that would quantize them.

Verification runs the context model on the x86 HTP simulator the wheel ships (real HTP numerics,
slow). Memory is the analytic plan of the graph at the precision's element sizes (``estimated``; QNN
reports no memory figure); there is no latency: the simulator's wall clock and cycle counts are not a
phone's.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..api.request import BuildRequest
from ..api.target import (
    Artifact,
    Availability,
    CompileContext,
    CompileResult,
    LayerRecord,
    MemoryFigure,
    OnnxForm,
    Session,
    Target,
)
from ..core.errors import InputError, VncompileError
from ..core.host import package_version
from ..core.schema import Text, setting
from ..core.units import kb
from ..onnxtools.blocks import Blocks
from .onnxruntime import OnnxRuntimeSession

if TYPE_CHECKING:  # the ONNX tools load onnx: imported where a build uses them, not when the CLI starts
    from ..onnxtools.quantized import QdqPlacement

EP = "QNNExecutionProvider"
# Snapdragon SoCs and their Hexagon architecture (the HTP generation the context binary is compiled for).
SOCS = {"SM8450": "69", "SM8550": "73", "SM8650": "75", "SM8750": "79"}
DEFAULT_SOC = "SM8650"  # Snapdragon 8 Gen 3


@dataclass(frozen=True)
class QnnOptions:
    """The qnn target's own options (``Target.own_options``)."""

    soc: str | None = setting(Text("a Snapdragon SoC name such as SM8650"), None, flag="--soc",
                              help="qnn: Snapdragon SoC (SM8450, SM8550, SM8650, SM8750)  [default: SM8650]")
QDQ_MODEL, CONTEXT_MODEL, CONTEXT_BINARY = "model.qdq.onnx", "model_ctx.onnx", "model_ctx_qnn.bin"
# Each precision's quantized types (onnxruntime.quantization.QuantType names): activations, weights.
QUANT_TYPES = {"int8": ("QUInt8", "QUInt8"), "int16": ("QUInt16", "QUInt8")}
POOL_PASS = "relu-before-maxpool"  # gives a MaxPool followed by a ReLU one scale on both sides


def _devices() -> list[Any]:
    """The QNN EP's devices, registering its library with ONNX Runtime once per process."""
    import onnxruntime as ort
    import onnxruntime_qnn

    found = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    if not found:
        ort.register_execution_provider_library(EP, onnxruntime_qnn.get_library_path())
        found = [d for d in ort.get_ep_devices() if d.ep_name == EP]
    return found


def _session_options(soc: str, context_model: Path | None = None) -> Any:
    """HTP only (no CPU fallback); with ``context_model``, compile into that EPContext model and its binary."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if context_model is not None:
        options.add_session_config_entry("ep.context_enable", "1")
        options.add_session_config_entry("ep.context_file_path", str(context_model))
        options.add_session_config_entry("ep.context_embed_mode", "0")  # the binary beside the ONNX
    options.add_provider_for_devices(_devices()[:1], {"backend_type": "htp", "htp_arch": SOCS[soc], "soc_model": soc})
    return options


class QnnTarget(Target):
    name = "qnn"
    description = "Qualcomm Hexagon HTP context binary (onnxruntime-qnn), verified on the HTP simulator"
    precisions = tuple(QUANT_TYPES)
    devices = ("simulator",)
    packages = ("onnxruntime-qnn",)
    latency_here = False
    why_no_runtime_profiles = "its memory is the HTP's, planned offline"
    own_options = QnnOptions
    # VanillaNet's MaxPool -> ReLU leaves each pool between two scales, so QNN runs it in float between a
    # Dequantize and a Quantize; ReLU first quantizes the whole graph (``quantized_nodes``/``float_nodes``).
    graph_passes = ("relu-before-maxpool",)

    def availability(self) -> Availability:
        version = package_version("onnxruntime-qnn")
        if version is None:
            return Availability(False, None, "onnxruntime-qnn is not installed: pip install 'vncompile[qnn]' "
                                             "(Linux x86-64, Python 3.11+)")
        try:
            found = _devices()
        except Exception as exc:  # a library that does not load here is a reason, not a crash
            return Availability(False, version, f"onnxruntime-qnn {version} does not load: {exc}".splitlines()[0])
        return Availability(bool(found), version, "" if found else "the QNN EP reports no device", self.devices)

    def onnx_form(self, precision: str) -> OnnxForm:
        return "fp32"  # quantized here, with QNN's own QDQ configuration

    def check_request(self, request: BuildRequest, own: QnnOptions) -> None:
        if request.precision not in self.precisions:
            raise InputError(f"qnn builds int8 (uint8 activations and weights on the HTP) or int16 (uint16 "
                             f"activations, uint8 weights), not {request.precision}; pass --precision int8 or int16")
        soc = own.soc or DEFAULT_SOC
        if soc not in SOCS:
            raise InputError(f"unknown --soc '{soc}'; qnn builds for {', '.join(SOCS)}")
        if request.dynamic:
            raise InputError("an HTP context binary has static shapes; drop --dynamic")

    def compile(self, ctx: CompileContext) -> CompileResult:
        import onnxruntime as ort
        from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize
        from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

        assert ctx.calibration is not None, "the pipeline passes calibration inputs for int8 and int16"
        soc = ctx.own.soc or DEFAULT_SOC
        samples = iter(ctx.calibration)
        input_name = ort.InferenceSession(str(ctx.onnx_path), providers=["CPUExecutionProvider"]).get_inputs()[0].name

        class Samples(CalibrationDataReader):
            def get_next(self) -> dict[str, np.ndarray] | None:
                sample = next(samples, None)
                return None if sample is None else {input_name: sample[None]}

        activations, weights = QUANT_TYPES[ctx.request.precision]
        config = get_qnn_qdq_config(str(ctx.onnx_path), Samples(), activation_type=QuantType[activations],
                                    weight_type=QuantType[weights])
        qdq = ctx.build_dir / QDQ_MODEL
        quantize(str(ctx.onnx_path), str(qdq), config)
        from ..onnxtools.quantized import qdq_placement

        placement = qdq_placement(qdq)
        _warn_float_nodes(ctx, placement)
        work = ctx.build_dir / "qnn-compile"  # QNN names the binary after the context model: compile aside, move
        work.mkdir()
        try:
            ort.InferenceSession(str(qdq), _session_options(soc, work / CONTEXT_MODEL))
        except Exception as exc:
            raise VncompileError(f"QNN could not compile the graph for the HTP: {str(exc).splitlines()[0]}") from None
        for name in (CONTEXT_MODEL, CONTEXT_BINARY):
            shutil.move(work / name, ctx.build_dir / name)
        work.rmdir()
        ctx.log.info("qnn: %s (HTP v%s) context binary %d bytes", soc, SOCS[soc],
                     (ctx.build_dir / CONTEXT_BINARY).stat().st_size)
        return CompileResult(
            [Artifact(CONTEXT_BINARY, "qnn-context-binary", primary=True), Artifact(CONTEXT_MODEL, "qnn-epcontext"),
             Artifact(QDQ_MODEL, "onnx-qdq")],
            facts={"soc": soc, "htp_arch": SOCS[soc], "activations": _type_name(activations),
                   "weights": _type_name(weights), "placement": _placement(placement),
                   "quantized_nodes": len(placement.quantized), "float_nodes": placement.float_ops(),
                   "context_binary_kb": kb((ctx.build_dir / CONTEXT_BINARY).stat().st_size),
                   "verified_on": "QNN HTP simulator (x86)", "latency": "none: the simulator's timing is no phone's"})

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        import onnxruntime as ort

        soc = manifest["target"]["facts"]["soc"]
        # An ONNX Runtime session like any other, its one node the EPContext the HTP runs.
        return OnnxRuntimeSession(ort.InferenceSession(str(build_dir / CONTEXT_MODEL), _session_options(soc)))

    def compiler_memory(self, build_dir: Path, manifest: dict[str, Any]) -> MemoryFigure:
        from ..onnxtools.memory_plan import plan_memory

        plan = plan_memory(build_dir / "model.onnx", manifest["target"]["precision"]).figure()
        binary = manifest["target"]["facts"]["context_binary_kb"]
        return MemoryFigure(plan.max_kb, "estimated", plan.weights_kb, plan.activations_kb,
                            f"{plan.detail}; QNN reports no memory figure; context binary {binary:,.0f} KB")

    def layer_profile(self, build_dir: Path, manifest: dict[str, Any], x: np.ndarray,
                      runs: int) -> list[LayerRecord]:
        """Where each compute node of the Q/DQ graph QNN compiled runs: in a quantized unit, or in float between a
        Dequantize and a Quantize (``onnxtools.quantized``: read from the graph, ``estimated``); QNN itself reports
        no per-layer time or memory."""
        import onnx

        from ..onnxtools.quantized import NOT_COMPUTE, qdq_placement

        model = onnx.load(str(build_dir / QDQ_MODEL), load_external_data=False)
        quantized = set(qdq_placement(model).quantized)
        blocks, precision = Blocks.of_build(build_dir), manifest["target"]["precision"]
        names = [(node.name or node.op_type, node.op_type) for node in model.graph.node
                 if node.op_type not in NOT_COMPUTE]
        return [LayerRecord(name, blocks.of(name), op, "estimated", exec_type="quantized" if name in quantized
                            else "float", precision=precision if name in quantized else "fp32")
                for name, op in names]


def _type_name(quant_type: str) -> str:
    """``QUInt16`` -> ``uint16``."""
    return quant_type.lower().removeprefix("q")


def _placement(placement: QdqPlacement) -> str:
    where = "every node on the HTP (CPU fallback disabled)"
    if not placement.float_nodes:
        return f"{where}; all {placement.compute_nodes} compute nodes quantized"
    ops = ", ".join(f"{op} x{count}" for op, count in placement.float_ops().items())
    return (f"{where}; {len(placement.float_nodes)} of {placement.compute_nodes} compute nodes in float between a "
            f"Dequantize and a Quantize ({ops})")


def _warn_float_nodes(ctx: CompileContext, placement: QdqPlacement) -> None:
    """One warning naming the nodes the HTP runs in float, and the graph pass that would quantize them."""
    if not placement.float_nodes:
        return
    import onnx

    from ..onnxtools.passes import PASSES

    names = ", ".join(name for name, _ in placement.float_nodes[:8])
    if len(placement.float_nodes) > 8:
        names += f" and {len(placement.float_nodes) - 8} more"
    hint = ""
    if any(op == "MaxPool" for _, op in placement.float_nodes) and PASSES[POOL_PASS].run(onnx.load(str(ctx.onnx_path))):
        hint = f"; adding {POOL_PASS} to --graph-passes quantizes the pools (one scale across each)"
    ctx.log.warning("qnn: %d of %d compute nodes run in float on the HTP, between a Dequantize and a Quantize: "
                    "%s%s", len(placement.float_nodes), placement.compute_nodes, names, hint)
