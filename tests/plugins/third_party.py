"""Targets as a third party would ship them: registered only through the entry-point group."""

from __future__ import annotations

import shutil

from vncompile.api.target import Artifact, Availability, CompileResult, Target
from vncompile.targets.onnxruntime import OnnxRuntimeSession


class CopyTarget(Target):
    """'Compiles' by copying the ONNX; runs it with ONNX Runtime."""

    name = "copy"
    description = "third-party test target"

    def availability(self) -> Availability:
        return Availability(True, "1.0", devices=("CPU",))

    def compile(self, ctx):
        shutil.copyfile(ctx.onnx_path, ctx.build_dir / "copy.onnx")
        return CompileResult([Artifact("copy.onnx", "copy", primary=True)], facts={"vendor": "third party"})

    def load(self, build_dir, manifest):
        import onnxruntime as ort

        return OnnxRuntimeSession(ort.InferenceSession(str(build_dir / "copy.onnx"),
                                                       providers=["CPUExecutionProvider"]))


class MissingToolchainTarget(CopyTarget):
    name = "missing"
    description = "a target whose toolchain is absent"

    def availability(self) -> Availability:
        return Availability(False, None, "the vendor SDK is not installed: pip install vendor-sdk")


class CrashTarget(CopyTarget):
    """Its runtime segfaults when loading: the profile must survive it."""

    name = "crash"

    def load(self, build_dir, manifest):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGSEGV)


class HangTarget(CopyTarget):
    """Its runtime never returns: the profile's timeout must end it."""

    name = "hang"

    def load(self, build_dir, manifest):
        import time

        time.sleep(3600)


class _RewritingSession:
    """An ONNX Runtime session whose outputs a target's bug rewrites."""

    def __init__(self, inner, rewrite) -> None:
        self.inner, self.rewrite = inner, rewrite

    def run(self, x):
        return [self.rewrite(o) for o in self.inner.run(x)]

    def close(self) -> None:
        self.inner.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WrongValuesTarget(CopyTarget):
    """A miscompiling target: right shapes, wrong values."""

    name = "wrong-values"

    def load(self, build_dir, manifest):
        return _RewritingSession(super().load(build_dir, manifest), lambda o: o[..., ::-1].copy())


class WrongShapeTarget(CopyTarget):
    """A target that returns its output in another layout (flattened)."""

    name = "wrong-shape"

    def load(self, build_dir, manifest):
        return _RewritingSession(super().load(build_dir, manifest), lambda o: o.reshape(1, -1))


class DropsAccuracyTarget(CopyTarget):
    """Close to the reference on noise, but it confuses two classes: top-1 on labelled images drops."""

    name = "drops-accuracy"

    def load(self, build_dir, manifest):
        def swap(logits):
            swapped = logits.copy()
            swapped[:, [0, 1]] = logits[:, [1, 0]]
            return swapped

        return _RewritingSession(super().load(build_dir, manifest), swap)
