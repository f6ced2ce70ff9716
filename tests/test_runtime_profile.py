"""`--runtime-profile`: the CPU runtimes' session settings, recorded in the manifest, applied by `load()` and
by the bundle's own `load_model.py`; refused by targets whose memory is no session setting."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import NARROW, one_line_error
from vncompile.api.options import RUNTIME_PROFILES, TargetOptions
from vncompile.api.request import ModelSource
from vncompile.targets import get_target, load_model
from vncompile.targets.onnxruntime import SESSION_SETTINGS
from vncompile.targets.openvino import COMPILE_SETTINGS

SIZE = "64"


def narrow_build(run_cli, out: Path, target: str, *extra: str) -> dict:
    result = run_cli("build", "--model", "vanillanet_5", "--width", str(NARROW), "--size", SIZE, "--target", target,
                     "-o", out, *extra)
    assert result.code == 0, result.err
    return json.loads((out / "manifest.json").read_text())


def test_every_runtime_has_settings_for_every_profile():
    assert set(SESSION_SETTINGS) == set(COMPILE_SETTINGS) == set(RUNTIME_PROFILES)
    assert all(get_target(t).runtime_profiles == RUNTIME_PROFILES for t in ("onnxruntime", "openvino"))
    assert not any(get_target(t).runtime_profiles for t in ("rknn", "tensorrt", "analytic"))


@pytest.mark.parametrize("target,expected", [
    ("onnxruntime", lambda profile: SESSION_SETTINGS[profile].as_dict()),
    ("openvino", lambda profile: COMPILE_SETTINGS[profile].as_dict("f32")),
])
def test_the_profile_and_its_settings_reach_the_manifest(tmp_path, run_cli, target, expected):
    default = narrow_build(run_cli, tmp_path / "default", target)
    memory = narrow_build(run_cli, tmp_path / "memory", target, "--runtime-profile", "memory")
    for manifest, profile in ((default, "balanced"), (memory, "memory")):
        facts = manifest["target"]["facts"]
        assert facts["runtime_profile"] == profile and facts["session_settings"] == expected(profile)
        assert manifest["verification"]["passed"]  # verified as loaded with the profile's settings
        loader = next(a for a in manifest["artifacts"] if a["path"] == "load_model.py")
        assert loader["role"] == "loader" and not loader["primary"]
    assert default["cache_key"] != memory["cache_key"]
    assert (tmp_path / "memory" / "load_model.py").read_bytes() == Path(load_model.__file__).read_bytes()


def test_onnxruntime_load_applies_the_recorded_settings(tmp_path, run_cli):
    import onnxruntime as ort

    out = tmp_path / "b"
    manifest = narrow_build(run_cli, out, "onnxruntime", "--runtime-profile", "memory")
    with get_target("onnxruntime").load(out, manifest) as session:
        options = session._session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert not options.enable_mem_pattern and options.enable_cpu_mem_arena
    manifest["target"]["facts"]["session_settings"].update(enable_cpu_mem_arena=False, enable_mem_pattern=True,
                                                          graph_optimization_level="ORT_ENABLE_BASIC")
    with get_target("onnxruntime").load(out, manifest) as session:  # what the manifest says, not the table
        options = session._session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert options.enable_mem_pattern and not options.enable_cpu_mem_arena


def test_openvino_load_applies_the_recorded_properties(tmp_path, run_cli):
    out = tmp_path / "b"
    manifest = narrow_build(run_cli, out, "openvino", "--runtime-profile", "memory")

    def compiled_properties() -> tuple[str, str]:
        with get_target("openvino").load(out, manifest) as session:
            compiled = session._request.get_compiled_model()
            return (str(compiled.get_property("PERFORMANCE_HINT")),
                    compiled.get_property("INFERENCE_PRECISION_HINT").to_string())

    assert compiled_properties() == ("LATENCY", "f32")
    manifest["target"]["facts"]["session_settings"]["compile_properties"]["PERFORMANCE_HINT"] = "THROUGHPUT"
    assert compiled_properties() == ("THROUGHPUT", "f32")  # what the manifest says, not the table


@pytest.mark.parametrize("target", ["onnxruntime", "openvino"])
def test_the_bundles_loader_runs_without_vncompile_and_matches_the_session(tmp_path, run_cli, target):
    bundle = tmp_path / "bundle"
    manifest = narrow_build(run_cli, bundle, target, "--runtime-profile", "latency")
    loader = bundle / "load_model.py"
    imported = {(node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
                for node in ast.walk(ast.parse(loader.read_text())) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names}
    assert imported <= {"__future__", "argparse", "json", "pathlib", "typing", "numpy", "onnxruntime", "openvino"}
    x = np.random.default_rng(7).standard_normal(manifest["input_shape"], dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    # Run as a device would, from elsewhere, and prove nothing of vncompile was imported on the way.
    script = ("import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
              "assert not [m for m in sys.modules if m.split('.')[0] == 'vncompile'], 'imported vncompile'")
    process = subprocess.run([sys.executable, "-c", script, str(loader), str(tmp_path / "x.npy"), "-o",
                              str(tmp_path / "out.npz")], cwd=tmp_path, capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip() == "logits: 1x1000 float32"
    with get_target(target).load(bundle, manifest) as session:
        expected = session.run(x)
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["logits"], expected[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("target,reason", [("rknn", "its memory is the compiler's static plan"),
                                           ("analytic", "it plans the graph and runs nothing")])
def test_targets_without_runtime_profiles_refuse_another_in_one_line(tmp_path, run_cli, target, reason):
    out = tmp_path / "b"
    result = run_cli("build", "--model", "vanillanet_5", "--width", str(NARROW), "--size", SIZE, "--target", target,
                     "--runtime-profile", "memory", "-o", out)
    assert result.code == 2
    assert one_line_error(result) == (f"error: {target} has no runtime profiles: {reason}; "
                                      "drop --runtime-profile memory")
    assert not out.exists()


def test_a_device_config_sets_the_runtime_profile(tmp_path, run_cli):
    config = tmp_path / "edge.yaml"
    config.write_text(f"target: onnxruntime\nprecision: fp32\nsizes: [{SIZE}]\nrunner: x\n"
                      "options: {runtime_profile: memory}\n")
    out = tmp_path / "b"
    result = run_cli("build", "--model", "vanillanet_5", "--width", str(NARROW), "--device", config, "-o", out)
    assert result.code == 0, result.err
    assert json.loads((out / "manifest.json").read_text())["target"]["facts"]["runtime_profile"] == "memory"
    config.write_text(config.read_text().replace("memory", "tiny"))
    bad = run_cli("build", "--model", "vanillanet_5", "--width", str(NARROW), "--device", config, "-o", tmp_path / "c")
    assert bad.code == 2 and "'runtime_profile' must be one of latency, balanced, memory" in one_line_error(bad)


def test_profile_applies_the_runtime_profile_to_the_targets_that_have_them():
    from vncompile.profiling.profile import ProfileRequest

    profile = ProfileRequest(models=(ModelSource(model_name="vanillanet_5", width=NARROW),),
                             targets=("onnxruntime", "analytic"), options=TargetOptions(runtime_profile="memory"))
    source = profile.models[0]
    from vncompile.targets import get_target

    assert profile.build_request(source, get_target("onnxruntime"), 64, "fp32").options.runtime_profile == "memory"
    assert profile.build_request(source, get_target("analytic"), 64, "fp32").options.runtime_profile == "balanced"
