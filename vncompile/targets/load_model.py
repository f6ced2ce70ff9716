"""Load a vncompile bundle on its runtime, with the session settings its manifest records.

vncompile writes this file into every onnxruntime and openvino bundle as ``load_model.py`` and
loads its own sessions through it, so what ``vncompile profile`` measures is what a device
loads. It needs the bundle's runtime (onnxruntime or openvino) and numpy, never vncompile:

    from load_model import load, run
    model = load()  # the bundle this file is in: an onnxruntime.InferenceSession or an openvino.CompiledModel
    outputs = run(x)  # one run, by output name; a detector whose head runs on the host: through head_tail.onnx

    python load_model.py [INPUT.npy] [-o OUTPUTS.npz]  # one run; default input: seeded N(0, 1) noise
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


class PrecisionNotHonoured(RuntimeError):
    """OpenVINO compiled for another inference precision than the one the manifest pins."""


def onnxruntime_session(model: Path, target: dict[str, Any], profile_prefix: str | None = None) -> Any:
    """An ``onnxruntime.InferenceSession`` over ``model`` with the manifest ``target`` section's settings;
    ``profile_prefix``: with ONNX Runtime's profiler on, its trace written at that prefix."""
    import onnxruntime as ort

    facts = target["facts"]
    settings = facts["session_settings"]
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings["graph_optimization_level"])
    options.enable_cpu_mem_arena = settings["enable_cpu_mem_arena"]
    options.enable_mem_pattern = settings["enable_mem_pattern"]
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(model), options, providers=[facts["provider"]])


def openvino_compiled_model(model: Path, target: dict[str, Any], perf_count: bool = False) -> Any:
    """An ``openvino.CompiledModel`` of the IR ``model`` with the manifest ``target`` section's settings; raises
    ``PrecisionNotHonoured`` where the device would compute another precision than the pinned one.
    ``perf_count``: with OpenVINO's per-layer performance counters on."""
    import openvino as ov

    settings = target["facts"]["session_settings"]
    core = ov.Core()
    if settings["core_properties"]:
        core.set_property(settings["core_properties"])
    properties = {**settings["compile_properties"], **({"PERF_COUNT": True} if perf_count else {})}
    compiled = core.compile_model(str(model), target["device"], properties)
    pinned = settings["compile_properties"]["INFERENCE_PRECISION_HINT"]
    effective = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
    if effective != pinned:
        raise PrecisionNotHonoured(f"OpenVINO compiled for {effective}, not the requested {pinned}")
    return compiled


def onnxruntime_outputs(session: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    first = session.get_inputs()[0]
    dtype = np.float16 if first.type == "tensor(float16)" else np.float32  # fp16 I/O graphs take float16
    results = session.run(None, {first.name: np.asarray(x, dtype=dtype)})
    return {o.name: results[i] for i, o in enumerate(session.get_outputs())}


def openvino_outputs(compiled: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    results = compiled.create_infer_request().infer({0: x})
    return {min(o.get_names(), default=f"output{i}"): np.asarray(results[o]) for i, o in enumerate(compiled.outputs)}


# Each runtime's loader and one run of what it loaded, by the manifest's target name.
RUNTIMES = {"onnxruntime": (onnxruntime_session, onnxruntime_outputs),
            "openvino": (openvino_compiled_model, openvino_outputs)}


def read_manifest(bundle: Path = HERE) -> dict[str, Any]:
    return json.loads((Path(bundle) / "manifest.json").read_text())


def load(bundle: Path = HERE) -> Any:
    """The bundle's model, ready to run, loaded as its manifest says."""
    manifest = read_manifest(bundle)
    target = manifest["target"]
    primary = next(a["path"] for a in manifest["artifacts"] if a["primary"])
    loader, _ = RUNTIMES[target["name"]]
    return loader(Path(bundle) / primary, target)


def with_head_tail(outputs: dict[str, np.ndarray], bundle: Path = HERE) -> dict[str, np.ndarray]:
    """A detector built with its head on the host (``head_tail.onnx`` in the bundle): the device graph's per-level
    maps through the tail, float32 on the CPU, giving the whole graph's outputs; other bundles' outputs as they are."""
    tail = Path(bundle) / "head_tail.onnx"
    if not tail.is_file():
        return outputs
    try:
        import onnxruntime as ort

        session = ort.InferenceSession(str(tail), providers=["CPUExecutionProvider"])
        feed = {i.name: np.asarray(outputs[i.name], np.float32) for i in session.get_inputs()}
        return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))
    except ImportError:  # an OpenVINO bundle on a machine without onnxruntime: OpenVINO runs the tail
        import openvino as ov

        compiled = ov.Core().compile_model(str(tail), "CPU")
        results = compiled.create_infer_request().infer({i.any_name: outputs[i.any_name] for i in compiled.inputs})
        return {min(o.get_names()): np.asarray(results[o]) for o in compiled.outputs}


def run(x: np.ndarray, bundle: Path = HERE) -> dict[str, np.ndarray]:
    """One run of the bundle's model on ``x``, its outputs by name (a host head applied)."""
    _, outputs_of = RUNTIMES[read_manifest(bundle)["target"]["name"]]
    return with_head_tail(outputs_of(load(bundle), x), bundle)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run this bundle's model once, loaded as its manifest says.")
    parser.add_argument("input", nargs="?", help="an NCHW float32 .npy input (default: seeded N(0, 1) noise of "
                                                 "the manifest's input shape)")
    parser.add_argument("-o", "--output", help="write the outputs, by name, to this .npz")
    arguments = parser.parse_args()
    manifest = read_manifest()
    if arguments.input:
        x = np.load(arguments.input)
    else:
        x = np.random.default_rng(0).standard_normal(manifest["input_shape"], dtype=np.float32)
    outputs = run(x)
    for name, value in outputs.items():
        print(f"{name}: {'x'.join(map(str, value.shape))} {value.dtype}")
    if arguments.output:
        np.savez(arguments.output, **outputs)


if __name__ == "__main__":
    main()
