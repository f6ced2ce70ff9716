"""OpenVINO: IR (``model.xml`` / ``model.bin``) compiled for an Intel CPU, GPU or NPU.

The inference precision hint is pinned to the requested precision: OpenVINO's CPU
plugin otherwise picks bf16 on CPUs that have it (an error of ~5e-4 that would
fail fp32 verification), and silently substitutes bf16 for an f16 hint on CPUs
without fp16 arithmetic, which we refuse instead.

Every other property of the Core and of ``compile_model`` is the runtime profile's
(``COMPILE_SETTINGS``), recorded in the manifest with the pinned hint and applied by the
bundle's ``load_model.py``, which ``load`` goes through too, and so does ``layer_profile``, with the
performance counters on (``PERF_COUNT``): per layer, its real time, kernel and precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..api.options import RUNTIME_PROFILES
from ..api.request import BuildRequest
from ..api.target import Artifact, Availability, CompileContext, CompileResult, LayerRecord, Session, Target
from ..core.errors import InputError, VerificationError
from ..core.host import package_version
from ..onnxtools.blocks import Blocks
from .bundle_loader import loader_artifact

# Int8 lives in the graph as Q/DQ nodes; what is not quantized computes in f32.
PRECISION_HINTS = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}
CAPABILITY = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8"}
IR_XML, IR_BIN = "model.xml", "model.bin"
# The precision an executed kernel's name ends in (``brgconv_avx512_1x1_f32``), in vncompile's names.
# Older releases and some ISAs spell it FP32/I8 (``jit_avx2_FP32``): compared lower-cased.
KERNEL_PRECISION = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8", "u8": "int8",
                    "fp32": "fp32", "fp16": "fp16", "int8": "int8"}


@dataclass(frozen=True)
class CompileSettings:
    """What one runtime profile sets (``load_model.openvino_compiled_model``): Core properties, set before the
    IR is read, and ``compile_model`` properties; the pinned inference precision is added last, so no profile
    can change it."""

    core_properties: tuple[tuple[str, bool | str], ...]
    compile_properties: tuple[tuple[str, str], ...]

    def as_dict(self, precision_hint: str) -> dict[str, Any]:
        return {"core_properties": dict(self.core_properties),
                "compile_properties": {**dict(self.compile_properties), "INFERENCE_PRECISION_HINT": precision_hint}}


# Measured at 512x512 fp32 (VanillaNet-5 / ResNet-50): no candidate moved the peak RSS (270 / 282 MB): not NUM_STREAMS
# 1 (what the LATENCY hint gives), CPU_RUNTIME_CACHE_CAPACITY 0 (a cache of dynamic shapes' kernels), one inference
# thread (2x the latency), nor reading the model before compiling it. Memory-mapping the weights (ENABLE_MMAP) keeps
# them as clean file pages the kernel can drop, 60 / 97 MB less anonymous memory than copying them in, at no latency
# cost, so every profile pins it, and the three are the same.
LATENCY_HINT_MAPPED_WEIGHTS = CompileSettings((("ENABLE_MMAP", True),), (("PERFORMANCE_HINT", "LATENCY"),))
COMPILE_SETTINGS: dict[str, CompileSettings] = {
    "latency": LATENCY_HINT_MAPPED_WEIGHTS,
    "balanced": LATENCY_HINT_MAPPED_WEIGHTS,
    "memory": LATENCY_HINT_MAPPED_WEIGHTS,
}


def has_device(device: str) -> bool:
    """Whether OpenVINO has ``device`` (CPU, GPU, NPU; GPU.0 counts as GPU) here."""
    import openvino as ov

    return any(d == device or d.startswith(device + ".") for d in ov.Core().available_devices)


def has_arithmetic(precision: str, device: str = "CPU") -> bool:
    """Whether OpenVINO's ``device`` here computes ``precision`` (its OPTIMIZATION_CAPABILITIES): what decides if a
    build of that precision is refused (tests ask the same)."""
    needed = CAPABILITY.get(precision)
    if needed is None:
        return True
    import openvino as ov

    return needed in ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES")


class OpenVinoSession(Session):
    def __init__(self, compiled: Any) -> None:
        self._request = compiled.create_infer_request()
        self._outputs = compiled.outputs

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        results = self._request.infer({0: x})
        return [np.asarray(results[o], dtype=np.float32) for o in self._outputs]


class OpenVinoTarget(Target):
    name = "openvino"
    description = "Intel OpenVINO IR for CPU, GPU or NPU"
    precisions = ("fp32", "fp16", "bf16", "int8")
    devices = ("CPU", "GPU", "NPU")
    packages = ("openvino",)
    runtime_profiles = RUNTIME_PROFILES
    int8_weight_bits = 7  # an artifact every x86 CPU runs alike, with VNNI or without (Target.int8_weight_bits)

    def availability(self) -> Availability:
        version = package_version("openvino")
        if version is None:
            return Availability(False, None, "OpenVINO is not installed: pip install 'vncompile[openvino]'")
        import openvino as ov

        return Availability(True, version, "", tuple(ov.Core().available_devices))

    def check_request(self, request: BuildRequest, own: Any) -> None:
        if request.precision not in self.precisions:
            raise InputError(f"openvino builds {', '.join(self.precisions)}, not {request.precision}")
        import openvino as ov

        device = request.options.device or self.default_device()
        if request.cross:  # what this host cannot run is verified as it can be (``verified_here``)
            if device.split(".")[0] not in self.devices:
                raise InputError(f"openvino builds for {', '.join(self.devices)}, not {device}")
            return
        core = ov.Core()
        if not has_device(device):
            raise InputError(f"OpenVINO has no {device} device here (available: {', '.join(core.available_devices)})")
        if not has_arithmetic(request.precision, device):
            name = core.get_property(device, "FULL_DEVICE_NAME")
            raise InputError(f"OpenVINO {device} ({name}) has no {request.precision} arithmetic "
                             f"(it would run another precision); choose another --precision or --device")

    def verified_here(self, request: BuildRequest) -> dict[str, str] | None:
        """How a cross build (``request.cross``) whose device or precision this host lacks is verified here: the IR
        on this CPU, at the precision the CPU computes; None where it runs as asked. An fp16 IR (fp16 weights) is
        what an Intel GPU or NPU loads whatever the build host computes in."""
        device = request.options.device or self.default_device()
        if not request.cross or (has_device(device) and has_arithmetic(request.precision, device)):
            return None
        precision = request.precision if has_arithmetic(request.precision, "CPU") else "fp32"
        return {"device": "CPU", "inference_precision_hint": PRECISION_HINTS[precision]}

    def compile(self, ctx: CompileContext) -> CompileResult:
        import openvino as ov

        model = ov.convert_model(str(ctx.onnx_path))
        ov.save_model(model, str(ctx.build_dir / IR_XML), compress_to_fp16=ctx.request.precision == "fp16")
        hint = PRECISION_HINTS[ctx.request.precision]
        profile = ctx.request.options.runtime_profile
        settings = COMPILE_SETTINGS[profile].as_dict(hint)
        ctx.log.info("openvino: wrote %s/%s; runtime profile %s: %s", IR_XML, IR_BIN, profile, settings)
        facts = {"inference_precision_hint": hint, "runtime_profile": profile, "session_settings": settings}
        here, notice = self.verified_here(ctx.request), ""
        if here is not None:
            facts["verified_here"] = here
            device = ctx.request.options.device or self.default_device()
            notice = (f"openvino: this host cannot run {device} {ctx.request.precision}; the IR was verified on its "
                      f"{here['device']} computing in {here['inference_precision_hint']}, the "
                      f"{ctx.request.precision} compute only runs on the device")
            ctx.log.info("%s", notice)
        return CompileResult([Artifact(IR_XML, "openvino-xml", primary=True), Artifact(IR_BIN, "openvino-bin"),
                              loader_artifact(ctx.build_dir)], facts=facts, notice=notice)

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        return OpenVinoSession(self._compiled(build_dir, manifest))

    def layer_profile(self, build_dir: Path, manifest: dict[str, Any], x: np.ndarray,
                      runs: int) -> list[LayerRecord]:
        """OpenVINO's performance counters over ``runs`` runs after one warm-up: each executed layer's median real
        time, its kernel (exec type) and the precision that kernel computes in; fused layers do not run."""
        import openvino as ov

        request = self._compiled(build_dir, manifest, perf_count=True).create_infer_request()
        request.infer({0: x})
        layers: dict[str, tuple[Any, list[float]]] = {}  # layer -> (its profiling info, ms per run)
        for _ in range(runs):
            request.infer({0: x})
            for info in request.get_profiling_info():
                if info.status == ov.ProfilingInfo.Status.EXECUTED:
                    layers.setdefault(info.node_name, (info, []))[1].append(info.real_time.total_seconds() * 1e3)
        blocks = Blocks.of_build(build_dir)
        return [LayerRecord(name, blocks.of(name), info.node_type, "measured", time_ms=float(np.median(times)),
                            exec_type=info.exec_type,
                            precision=KERNEL_PRECISION.get(info.exec_type.rsplit("_", 1)[-1].lower()))
                for name, (info, times) in layers.items()]

    def _compiled(self, build_dir: Path, manifest: dict[str, Any], perf_count: bool = False) -> Any:
        from .load_model import PrecisionNotHonoured, openvino_compiled_model

        target = manifest["target"]
        here = target["facts"].get("verified_here")
        if here is not None:  # a cross build: run as this host can (the manifest's notice says so)
            settings = target["facts"]["session_settings"]
            compile_properties = {**settings["compile_properties"],
                                  "INFERENCE_PRECISION_HINT": here["inference_precision_hint"]}
            target = {**target, "device": here["device"],
                      "facts": {**target["facts"], "session_settings": {**settings,
                                                                        "compile_properties": compile_properties}}}
        try:
            return openvino_compiled_model(build_dir / IR_XML, target, perf_count)
        except PrecisionNotHonoured as exc:
            raise VerificationError(str(exc)) from None
