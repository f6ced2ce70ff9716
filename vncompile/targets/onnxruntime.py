"""ONNX Runtime: the reference target (CPU execution provider; CUDA where present).

The artifact is the graph-optimized model ONNX Runtime writes for the chosen
provider at the extended level (constant folding, Conv+activation fusions). The
layout level (NCHWc blocking) is applied when the artifact is loaded (except by the
memory runtime profile), not saved:
ONNX Runtime itself warns that a saved layout-optimized model is tied to the
machine that wrote it, and its node names differ from run to run, which would
break byte-identical builds.

How the session is loaded is the runtime profile's (``SESSION_SETTINGS``), recorded in the
manifest and applied by the bundle's ``load_model.py``, which ``load`` goes through too, and so does
``layer_profile``, with ONNX Runtime's profiler on: its trace's per-node kernel times.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..api.options import RUNTIME_PROFILES
from ..api.request import BuildRequest
from ..api.target import Artifact, Availability, CompileContext, CompileResult, LayerRecord, Session, Target
from ..core.errors import InputError
from ..core.host import package_version
from ..onnxtools.blocks import Blocks
from ..onnxtools.run import onnx_feed
from .bundle_loader import loader_artifact

PROVIDERS = {"CPU": "CPUExecutionProvider", "CUDA": "CUDAExecutionProvider"}
OPTIMIZED_MODEL = "model.optimized.onnx"
KERNEL_TIME = "_kernel_time"  # the profiler's event for one node's run: "<node>_kernel_time"
NCHWC = "_nchwc"  # what the layout pass appends to the output name of a node it rewrites
# The profiler's element types, in vncompile's precision names where there is one.
ELEMENT_PRECISION = {"float": "fp32", "float16": "fp16", "bfloat16": "bf16"}


@dataclass(frozen=True)
class SessionSettings:
    """What one runtime profile sets on ``onnxruntime.SessionOptions`` (``load_model.onnxruntime_session``)."""

    graph_optimization_level: str  # a GraphOptimizationLevel name; ALL adds the machine's NCHWc layout on loading
    enable_cpu_mem_arena: bool
    enable_mem_pattern: bool  # True: one block for every activation, planned on the first run

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Measured at 512x512 fp32, peak RSS above the post-import baseline, VanillaNet-5 / ResNet-50: 370 / 293 MB with
# the memory pattern's block, 243 / 270 MB without it at the same latency, so only the latency profile keeps it (no
# allocation in a run). Loading at EXTENDED skips the NCHWc reordering, whose transient copies of the weights are the
# peak once the pattern is off: 213 / 188 MB, at 1.39x / 1.26x the latency on two threads (1.32x / 1.17x on one; a
# shared 2-core x86 machine, and ARM has no NCHWc kernels to lose). No arena cost 15-30% latency and saved less; no
# prepacking, or the device allocator for initializers, saved nothing.
SESSION_SETTINGS: dict[str, SessionSettings] = {
    "latency": SessionSettings("ORT_ENABLE_ALL", enable_cpu_mem_arena=True, enable_mem_pattern=True),
    "balanced": SessionSettings("ORT_ENABLE_ALL", enable_cpu_mem_arena=True, enable_mem_pattern=False),
    "memory": SessionSettings("ORT_ENABLE_EXTENDED", enable_cpu_mem_arena=True, enable_mem_pattern=False),
}


class OnnxRuntimeSession(Session):
    def __init__(self, session: Any) -> None:
        self._session = session
        self._feed = onnx_feed(session)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        return [np.asarray(o, dtype=np.float32) for o in self._session.run(None, self._feed(x))]


class OnnxRuntimeTarget(Target):
    name = "onnxruntime"
    description = "ONNX Runtime, the reference target (CPU; CUDA where present)"
    precisions = ("fp32", "fp16", "int8")
    devices = ("CPU", "CUDA")
    packages = ("onnxruntime",)
    runtime_profiles = RUNTIME_PROFILES
    int8_weight_bits = 7  # an artifact every x86 CPU runs alike, with VNNI or without (Target.int8_weight_bits)

    def availability(self) -> Availability:
        version = package_version("onnxruntime") or package_version("onnxruntime-gpu")
        if version is None:
            return Availability(False, None, "onnxruntime is not installed: pip install onnxruntime")
        import onnxruntime as ort

        providers = ort.get_available_providers()
        devices = tuple(d for d, p in PROVIDERS.items() if p in providers)
        return Availability(True, version, "", devices)

    def onnx_form(self, precision: str):
        return {"fp16": "fp16", "int8": "int8-qdq"}.get(precision, "fp32")

    def check_request(self, request: BuildRequest, own: Any) -> None:
        if request.precision not in self.precisions:
            raise InputError(f"onnxruntime builds {', '.join(self.precisions)}, not {request.precision}")
        device = request.options.device or self.default_device()
        available = self.availability().devices
        if device not in available:
            raise InputError(f"onnxruntime has no {device} provider here (available: {', '.join(available)})")

    def compile(self, ctx: CompileContext) -> CompileResult:
        import onnxruntime as ort

        device = ctx.request.options.device or self.default_device()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(ctx.build_dir / OPTIMIZED_MODEL)
        ort.InferenceSession(str(ctx.onnx_path), options, providers=[PROVIDERS[device]])
        profile = ctx.request.options.runtime_profile
        settings = SESSION_SETTINGS[profile]
        ctx.log.info("onnxruntime: wrote %s for %s; runtime profile %s: %s", OPTIMIZED_MODEL, PROVIDERS[device],
                     profile, settings)
        return CompileResult([Artifact(OPTIMIZED_MODEL, "onnxruntime-optimized", primary=True),
                              loader_artifact(ctx.build_dir)],
                             facts={"provider": PROVIDERS[device], "graph_optimization": "ORT_ENABLE_EXTENDED",  # saved
                                    "runtime_profile": profile, "session_settings": settings.as_dict()})

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        from .load_model import onnxruntime_session

        return OnnxRuntimeSession(onnxruntime_session(build_dir / OPTIMIZED_MODEL, manifest["target"]))

    def layer_profile(self, build_dir: Path, manifest: dict[str, Any], x: np.ndarray,
                      runs: int) -> list[LayerRecord]:
        """ONNX Runtime's profiler over ``runs`` runs after one warm-up, the session loaded as ``load`` does."""
        from .load_model import onnxruntime_session

        with tempfile.TemporaryDirectory(prefix="vncompile-ort-profile-") as tmp:
            session = onnxruntime_session(build_dir / OPTIMIZED_MODEL, manifest["target"],
                                          profile_prefix=str(Path(tmp) / "trace"))
            feed = onnx_feed(session)(x)
            for _ in range(runs + 1):
                session.run(None, feed)
            trace = json.loads(Path(session.end_profiling()).read_text())
        return trace_layers(trace, Blocks.of_build(build_dir), _producers(build_dir / OPTIMIZED_MODEL))


def _producers(model: Path) -> dict[str, str]:
    """Each tensor of the saved graph -> the node that writes it: the layout pass names the nodes it rewrites after
    their output (``relu_5_nchwc``), which for a fused Conv+ReLU is the ReLU's tensor, not the conv's node."""
    import onnx

    return {output: node.name for node in onnx.load(str(model), load_external_data=False).graph.node
            for output in node.output if node.name}


def trace_layers(trace: list[dict[str, Any]], blocks: Blocks,
                 producers: dict[str, str] | None = None) -> list[LayerRecord]:
    """Per node, in the order the first run ran them: the median kernel time over the runs after the first (the
    warm-up; a median, as a profile's latency is, since one descheduled run would swamp a mean), the bytes of its
    output, the provider that ran it and its output's element type. The names are the session's nodes: the saved
    graph's, or one its layout pass derived (``conv2d_2_nchwc``: the node writing ``conv2d_2``, by ``producers``)."""
    producers = producers or {}
    samples: dict[str, list[float]] = {}
    details: dict[str, dict[str, Any]] = {}
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith(KERNEL_TIME):
            name = event["name"].removesuffix(KERNEL_TIME)
            samples.setdefault(name, []).append(event["dur"] / 1e3)
            details.setdefault(name, event.get("args", {}))
    records = []
    for name, times in samples.items():
        args = details[name]
        timed = times[1:] or times
        outputs = args.get("output_type_shape") or [{}]
        element = next(iter(outputs[0]), None)
        node = producers.get(name.removesuffix(NCHWC), name)
        records.append(LayerRecord(
            name, blocks.of(node), args.get("op_name", ""), "measured", time_ms=float(np.median(timed)),
            memory_bytes=int(args["output_size"]) if "output_size" in args else None, exec_type=args.get("provider"),
            precision=ELEMENT_PRECISION.get(element, element)))
    return records
