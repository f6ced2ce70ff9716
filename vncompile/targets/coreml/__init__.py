"""Apple Core ML for iPhone, iPad and Mac: an ML Program ``.mlpackage``, verified on the device (deferred).

coremltools 9 (``pip install 'vncompile[coreml]'``, in ``all``) converts the verified graph (``convert``):
fp16 (the default: what the GPU and the Neural Engine compute), fp32, or int8 weights (linear, symmetric,
per channel, through coremltools' optimize API) over fp16 compute. The minimum deployment target and the
compute units are the target's own options, recorded in the manifest. There is no Core ML runtime on Linux, so
the build is **deferred**, as TensorRT's is without a GPU: here the spec is checked (input and output names,
shapes and types, the compute precision, the operation count, no operation Core ML lacks at the deployment
target), and the bundle carries the verification inputs, the float64 reference's outputs for them and
``verify_coreml.py``, which runs them with coremltools on a Mac and prints the same verification table. Memory
is the analytic plan of the graph at the compute precision (``estimated``); there is no latency figure here.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np

from ...api.request import BuildRequest
from ...api.target import (
    Artifact,
    Availability,
    CompileContext,
    CompileResult,
    MemoryFigure,
    OnnxForm,
    Session,
    Target,
    facts,
)
from ...core.errors import InputError, TargetUnavailable
from ...core.schema import OneOf, setting
from ...core.units import kb
from ..rebuilt import check_rebuilt
from .convert import COMPUTE_UNITS, DEPLOYMENT_TARGETS, INT8_FROM, check_spec, convert, deployment_version, save_package

__all__ = ["CoreMlOptions", "CoreMlTarget"]

PACKAGE, SCRIPT, DATA, METRICS = "model.mlpackage", "verify_coreml.py", "verify_data.npz", "output_metrics.py"
PRIMARY = f"{PACKAGE}/Data/com.apple.CoreML/model.mlmodel"


@dataclass(frozen=True)
class CoreMlOptions:
    """The coreml target's own options (``Target.own_options``)."""

    minimum_deployment_target: str = setting(
        OneOf(DEPLOYMENT_TARGETS), "iOS16", flag="--minimum-deployment-target",
        help="coreml: the oldest OS the model loads on (ML Program: iOS15/macOS12 on; int8 weights: iOS16/macOS13 "
             "on)  [default: iOS16]")
    compute_units: str = setting(
        OneOf(COMPUTE_UNITS), "ALL", flag="--compute-units",
        help="coreml: where Core ML may run it (ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE); recorded, and used by the "
             "bundle's verify_coreml.py  [default: ALL]")


class CoreMlTarget(Target):
    name = "coreml"
    description = "Apple Core ML ML Program (.mlpackage) for iPhone/iPad/Mac; verified on the device (deferred)"
    precisions = ("fp16", "fp32", "int8")
    runs_host_head = False  # its verification is deferred to a Mac, on the whole graph
    devices = ("Apple device",)  # where Core ML may run it there: --compute-units
    packages = ("coremltools",)
    quantizes = False  # int8 is weight-only, from the weights alone: no calibration
    latency_here = False
    own_options = CoreMlOptions
    why_no_runtime_profiles = "Core ML plans its memory on the device"

    def availability(self) -> Availability:
        try:
            found = version("coremltools")
        except PackageNotFoundError:
            return Availability(False, None, "coremltools is not installed: pip install 'vncompile[coreml]'")
        return Availability(True, found, "deferred: no Core ML runtime off macOS; builds check the spec and write "
                                         f"{SCRIPT} for a Mac to verify the model", self.devices)

    def default_precision(self, own: CoreMlOptions) -> str:
        return "fp16"

    def onnx_form(self, precision: str) -> OnnxForm:
        return "fp32"  # coremltools makes the fp16 program and the int8 weights from the float graph

    def check_request(self, request: BuildRequest, own: CoreMlOptions) -> None:
        if request.precision not in self.precisions:
            raise InputError(f"coreml builds fp16, fp32 or int8 (int8 weights, fp16 compute), not {request.precision}")
        check_rebuilt(self.name, request, static_because="its verification inputs are for one size")
        if request.options.device not in (None, *self.devices):
            raise InputError(f"coreml chooses its device with --compute-units ({', '.join(COMPUTE_UNITS)}), not "
                             f"--device {request.options.device}")
        family, number = deployment_version(own.minimum_deployment_target)
        if request.precision == "int8" and number < INT8_FROM[family]:
            raise InputError(f"coreml int8 weights need {family}{INT8_FROM[family]} or later (constexpr weight "
                             f"dequantization), not --minimum-deployment-target {own.minimum_deployment_target}")

    def compile(self, ctx: CompileContext) -> CompileResult:
        precision, own = ctx.request.precision, ctx.own
        assert precision is not None
        model = convert(ctx.onnx_path, precision, own.minimum_deployment_target, own.compute_units)
        spec = check_spec(model, precision, own.minimum_deployment_target, ctx.onnx_path)
        files_in_package = save_package(model, ctx.build_dir / PACKAGE)
        ctx.log.info("coreml: ML Program %s, %d operations (%s), %s compute, %d int8-compressed weights",
                     spec.opset, spec.operations, ", ".join(f"{t} {n}" for t, n in spec.op_types.items()),
                     ", ".join(spec.compute_dtypes), spec.compressed_weights)
        artifacts = [Artifact(str(path), "coreml-mlprogram" if str(path) == PRIMARY else "coreml-package",
                              primary=str(path) == PRIMARY) for path in files_in_package]
        info: dict[str, Any] = {
            "minimum_deployment_target": own.minimum_deployment_target, "compute_units": own.compute_units,
            "compute_precision": "fp32" if precision == "fp32" else "fp16",
            "weights": {"fp32": "float32", "fp16": "float16",
                        "int8": "int8, linear symmetric per channel (coremltools optimize), dequantized to fp16"}[
                precision],
            "spec": spec.as_dict(), "input": spec.input, "coremltools": model.user_defined_metadata.get(
                "com.github.apple.coremltools.version"),
        }
        if ctx.reference is not None:
            reference = ctx.reference
            arrays = {"inputs": reference.inputs.astype(np.float32), "outputs": np.array(len(reference.names))}
            for b, batch in enumerate(reference.outputs):
                for o, output in enumerate(batch):
                    arrays[f"expected/{b}/{o}"] = output
            np.savez(ctx.build_dir / DATA, **arrays)
            (ctx.build_dir / SCRIPT).write_bytes(files(__package__).joinpath(SCRIPT).read_bytes())
            (ctx.build_dir / METRICS).write_bytes(files("vncompile.core").joinpath(METRICS).read_bytes())
            artifacts += [Artifact(SCRIPT, "coreml-verify-script"), Artifact(METRICS, "coreml-verify-metrics"),
                          Artifact(DATA, "coreml-verify-data")]
            info["verification_bundle"] = {"script": SCRIPT, "data": DATA, "names": reference.names,
                                           "judged_from": reference.judged_from, "classifier": reference.classifier,
                                           "tolerance": reference.tolerance, "batches": len(reference.inputs)}
            how = f"run {SCRIPT} on a Mac (coremltools) to verify it"
        else:
            how = "built with --no-verify: nothing to verify it with on the device"
        notice = f"no Core ML runtime off macOS: verification of {PACKAGE} deferred (its spec checked here); {how}"
        ctx.log.info("coreml: %s", notice)
        return CompileResult(artifacts, "deferred", info, notice)

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        raise TargetUnavailable(f"{build_dir} is a Core ML bundle: it runs only on Apple devices ({SCRIPT} verifies "
                                "it on a Mac)")

    def compiler_memory(self, build_dir: Path, manifest: dict[str, Any]) -> MemoryFigure:
        target = manifest["target"]
        from ...onnxtools.memory_plan import plan_memory

        plan = plan_memory(build_dir / "model.onnx", facts(manifest)["compute_precision"]).figure()
        package = sum(p.stat().st_size for p in (build_dir / PACKAGE).rglob("*") if p.is_file())
        return MemoryFigure(plan.max_kb, "estimated", plan.weights_kb, plan.activations_kb,
                            f"{plan.detail}; at {facts(manifest)['compute_precision']} ({target['precision']} "
                            f"build); Core ML reports no memory figure off the device; package {kb(package):,.0f} KB")

