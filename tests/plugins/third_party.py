"""Targets as a third party would ship them: registered only through the entry-point group."""

from __future__ import annotations

import shutil

from vncompile.targets.base import Artifact, Availability, CompileResult, Target
from vncompile.targets.onnxruntime import OnnxRuntimeSession


class CopyTarget(Target):
    """'Compiles' by copying the ONNX; runs it with ONNX Runtime."""

    name = "copy"
    description = "third-party test target"

    def availability(self) -> Availability:
        return Availability(True, "1.0", devices=("CPU",))

    def compile(self, ctx):
        shutil.copyfile(ctx.onnx_path, ctx.build_dir / "copy.onnx")
        return CompileResult([Artifact("copy.onnx", "copy")], info={"vendor": "third party"})

    def load(self, build_dir, manifest):
        import onnxruntime as ort

        return OnnxRuntimeSession(ort.InferenceSession(str(build_dir / "copy.onnx"),
                                                       providers=["CPUExecutionProvider"]))


class MissingToolchainTarget(CopyTarget):
    name = "missing"
    description = "a target whose toolchain is absent"

    def availability(self) -> Availability:
        return Availability(False, None, "the vendor SDK is not installed: pip install vendor-sdk")
