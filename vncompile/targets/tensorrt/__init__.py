"""TensorRT: a serialized engine for the GPU that builds it, or a deferred bundle for the device.

With TensorRT, cuda-python and an NVIDIA GPU here, ``compile`` parses the pipeline's ONNX
into a strongly typed network and writes ``model.engine``. Without them the build still
succeeds: the verified, TensorRT-ready ``model.onnx`` and ``build_engine.sh`` (the equivalent
``trtexec`` command) go to the device's own CI runner, which builds the engine there. Either
way, because an engine runs only on the GPU model and TensorRT version that built it.

Precision lives in the ONNX, not in builder flags. TensorRT 11 removed the fp16/int8 flags and
the int8 calibrator: networks are always strongly typed. TensorRT 10 builds the same network
when it is created with ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (its fp16/int8 flags
are deprecated since 10.12, and would let it pick per-layer precisions the ONNX never had), so
one ONNX gives the same types on both majors and its ONNX Runtime verification speaks for
them. fp32 builds clear TF32, which rounds convolution inputs to 10-bit mantissas and would
miss fp32's 1e-4 tolerance.

No TensorRT object is created before CUDA itself (cudaGetDeviceCount, not nvidia-smi, which
JetPack 5 lacks) has confirmed a GPU: TensorRT without a usable GPU logs a CUDA error and then
crashes the process at exit.

API sources (NVIDIA/TensorRT, tags v10.16 and v11.1): python/src/infer/pyCore.cpp and
python/docstrings/infer/pyCoreDoc.h for names and signatures, python/src/parsers/pyOnnx.cpp,
samples/python/common_runtime.py for cuda-python, samples/common/sampleOptions.cpp for trtexec.

The modules, split by concern as Polygraphy splits its TensorRT backend: ``cuda`` (cuda-python's
runtime and the GPU probe), ``toolchain`` (importing and probing TensorRT), ``profile`` (the
optimization profile), ``builder`` (network, config, timing cache, engine), ``runner`` (the
Session) and ``script`` (trtexec's arguments and build_engine.sh); this module is the Target.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from ...api.request import BuildRequest
from ...api.target import Artifact, Availability, CompileContext, CompileResult, OnnxForm, Session, Target, facts
from ...core.errors import InputError, TargetUnavailable
from ...onnxtools.run import output_names as onnx_output_names
from .builder import build_engine
from .profile import TensorRTOptions, shape_profile
from .runner import TensorRTSession, engine_mismatch
from .script import ENGINE, ONNX, SCRIPT, build_script, trtexec_arguments
from .toolchain import import_tensorrt, missing_pieces, probe_toolchain

__all__ = ["TensorRTSession", "TensorRTTarget", "build_engine", "probe_toolchain", "shape_profile"]

ONNX_FORMS: dict[str, OnnxForm] = {"fp32": "fp32", "fp16": "fp16", "int8": "int8-qdq"}


class TensorRTTarget(Target):
    name = "tensorrt"
    description = "NVIDIA TensorRT engine (10.x, 11.x) for the GPU that builds it; a trtexec bundle elsewhere"
    why_no_runtime_profiles = "its memory is the engine's, planned when it is built"
    own_options = TensorRTOptions
    precisions = ("fp32", "fp16", "int8")
    runs_host_head = False  # a deferred bundle is verified whole on the device
    devices = ("GPU",)
    packages = ("tensorrt",)

    def availability(self) -> Availability:
        trt = import_tensorrt()
        version = None if isinstance(trt, str) else trt.__version__
        missing = missing_pieces(trt)
        if missing:
            return Availability(True, version, f"deferred: {'; '.join(missing)}; builds write the verified {ONNX} "
                                               f"and {SCRIPT} (its trtexec command) for the device to build its engine")
        return Availability(True, version, "", self.devices)

    def onnx_form(self, precision: str) -> OnnxForm:
        return ONNX_FORMS.get(precision, "fp32")

    def cache_identity(self) -> dict[str, str | None]:
        """A deferred bundle must not be served once a GPU is here, nor an engine for another GPU."""
        toolchain = probe_toolchain()
        if isinstance(toolchain, str):
            return {"tensorrt_engine": "deferred"}
        gpu = toolchain.gpu
        return {"tensorrt_engine": f"{toolchain.version} on {gpu.name} ({gpu.compute_capability})"}

    def check_request(self, request: BuildRequest, own: TensorRTOptions) -> None:
        if request.precision not in self.precisions:
            raise InputError(f"tensorrt builds {', '.join(self.precisions)}, not {request.precision}")
        if request.options.device not in (None, "GPU"):
            raise InputError(f"tensorrt runs on the GPU (--device GPU), not {request.options.device}")
        _check_profile_sizes(request, own)

    def dynamic_sizes(self, own: TensorRTOptions) -> tuple[int, ...] | None:
        return own.profile_sizes

    def compile(self, ctx: CompileContext) -> CompileResult:
        request, own = ctx.request, ctx.own
        profile = shape_profile(request, own)
        script = ctx.build_dir / SCRIPT
        outputs = onnx_output_names(ctx.onnx_path)
        script.write_text(build_script(request, own, profile, outputs))
        script.chmod(0o755)
        info: dict[str, Any] = {
            "strongly_typed": True, "workspace_mb": own.workspace_mb,
            "profile": profile.as_dict() if profile else None,
            "trtexec": shlex.join(["trtexec", *trtexec_arguments(request, own, profile)]), "outputs": outputs,
        }
        toolchain = probe_toolchain()
        if isinstance(toolchain, str):
            notice = (f"{toolchain}: deferred the engine; run {SCRIPT} on the device to build {ENGINE} from the "
                      f"verified {ONNX} (verification covered the ONNX stages)")
            ctx.log.info("tensorrt: %s", notice)
            return CompileResult([Artifact(SCRIPT, "trtexec-script", primary=True)], "deferred",
                                 {**info, "deferred_because": toolchain}, notice)
        built = build_engine(toolchain, ctx.onnx_path, request, own, profile)
        (ctx.build_dir / ENGINE).write_bytes(built.plan)
        ctx.log.info("tensorrt %s: wrote %s (%d bytes) on %s", toolchain.version, ENGINE, len(built.plan),
                     toolchain.gpu.name)
        info.update(gpu=toolchain.gpu.name, compute_capability=toolchain.gpu.compute_capability,
                    tensorrt_version=toolchain.version, hardware_compatibility_level=built.hardware_compatibility_level)
        return CompileResult([Artifact(ENGINE, "engine", primary=True), Artifact(SCRIPT, "trtexec-script")], facts=info,
                             notice=built.warning)

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        if manifest.get("status") == "deferred":
            raise TargetUnavailable(f"{build_dir} is a deferred TensorRT bundle without an engine: run its {SCRIPT} "
                                    "on the device")
        toolchain = probe_toolchain()
        if isinstance(toolchain, str):
            raise TargetUnavailable(f"cannot run {ENGINE} here: {toolchain}")
        mismatch = engine_mismatch(facts(manifest), toolchain)  # before deserializing: a foreign plan can crash
        if mismatch:
            raise TargetUnavailable(f"{mismatch}; an engine runs only on the GPU model and TensorRT version that "
                                    f"built it: rebuild it here (vncompile build --target tensorrt --force) or run "
                                    f"{SCRIPT}")
        return TensorRTSession(toolchain, (build_dir / ENGINE).read_bytes())


def _check_profile_sizes(request: BuildRequest, own: TensorRTOptions) -> None:
    sizes = own.profile_sizes
    if sizes is None:
        return
    given = ",".join(map(str, sizes))
    if not request.dynamic:
        raise InputError("--profile-sizes shapes a --dynamic build's optimization profile; add --dynamic")
    if len(sizes) != 3 or not sizes[0] <= sizes[1] <= sizes[2]:
        raise InputError(f"--profile-sizes takes min,opt,max in increasing order, e.g. 256,384,512; got {given}")
    profile = shape_profile(request, own)
    assert profile is not None
    for shape in request.verify_shapes(sizes) if request.verify else [request.shape]:
        if not profile.covers(shape.as_tuple()):
            raise InputError(f"--profile-sizes {given} must cover {shape.height}x{shape.width}, a size this build "
                             "verifies the engine at")
