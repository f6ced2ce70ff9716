"""The coreml target (coremltools 9): a narrow VanillaNet-5 as an ML Program in fp16, fp32 and int8 weights,
its spec checked here and its verification deferred to the bundle's verify_coreml.py, which runs on a Mac
(its metrics are vncompile's: checked here against the pipeline's own); what it refuses; a conversion failure
names the operation."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import vncompile
from tests.conftest import NARROW, one_line_error
from vncompile.api.tolerance import Tolerance
from vncompile.core.errors import VncompileError
from vncompile.pipeline.verify import compare_output

pytest.importorskip("coremltools")


def build(run_cli, out, *args):
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "coreml", "--size", "64",
                     *args, "-o", out)
    assert result.code == 0, result.err
    assert "verification of model.mlpackage deferred" in result.err
    return json.loads((out / "manifest.json").read_text())


def load_script(bundle, monkeypatch):
    monkeypatch.syspath_prepend(str(bundle))  # its output_metrics.py, as when run there
    spec = importlib.util.spec_from_file_location("verify_coreml", bundle / "verify_coreml.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fp16_bundle(tmp_path_factory):
    """The default build (fp16), through the CLI once for the tests that read it."""
    from vncompile.cli import main

    out = tmp_path_factory.mktemp("coreml") / "b"
    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as exit_info:
        patch.setenv("VNCOMPILE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))  # a cache of its own
        main(["build", "--model", "vanillanet_5", "--width", str(NARROW), "--target", "coreml", "--size", "64",
              "-o", str(out)])
    assert exit_info.value.code in (0, None)
    return out, json.loads((out / "manifest.json").read_text())


def test_fp16_package_is_deferred_with_its_spec_checked(fp16_bundle):
    out, manifest = fp16_bundle
    assert manifest["status"] == "deferred" and manifest["verification"]["target_stage"] == "deferred"
    assert [s["stage"] for s in manifest["verification"]["stages"]] == ["torch fused", "onnx exported",
                                                                        "onnx simplified"]
    assert manifest["target"]["precision"] == "fp16"
    facts = manifest["target"]["facts"]
    assert (facts["minimum_deployment_target"], facts["compute_units"]) == ("iOS16", "ALL")
    spec = facts["spec"]
    assert spec["input"] == {"name": "input", "shape": [1, 3, 64, 64], "dtype": "FLOAT32"}
    assert [(o["name"], o["shape"]) for o in spec["outputs"]] == [("logits", [1, 1000])]
    assert spec["compute_dtypes"] == {"FLOAT16": 9} and spec["op_types"]["conv"] == 9
    assert spec["operations"] == sum(spec["op_types"].values()) and spec["opset"] == "CoreML6"
    (primary,) = [a for a in manifest["artifacts"] if a["primary"]]
    assert primary["path"] == "model.mlpackage/Data/com.apple.CoreML/model.mlmodel"
    paths = {a["path"] for a in manifest["artifacts"]}
    assert {"model.mlpackage/Manifest.json", "model.mlpackage/Data/com.apple.CoreML/weights/weight.bin",
            "verify_coreml.py", "output_metrics.py", "verify_data.npz"} <= paths
    assert (out / "output_metrics.py").read_bytes() == (
        Path(vncompile.__file__).parent / "core" / "output_metrics.py").read_bytes()
    assert manifest["memory"]["source"] == "estimated" and "at fp16" in manifest["memory"]["detail"]
    assert manifest["latency"] is None
    with np.load(out / "verify_data.npz") as data:
        assert data["inputs"].shape == (4, 1, 3, 64, 64) and int(data["outputs"]) == 1
        assert data["expected/0/0"].dtype == np.float64 and data["expected/3/0"].shape == (1, 1000)


def test_int8_weights_and_fp32_compute(run_cli, tmp_path):
    int8 = build(run_cli, tmp_path / "int8", "--precision", "int8", "--minimum-deployment-target", "iOS17",
                 "--compute-units", "CPU_AND_NE")
    spec = int8["target"]["facts"]["spec"]
    assert spec["compressed_weights"] == spec["op_types"]["constexpr_affine_dequantize"] == 9
    assert spec["compute_dtypes"] == {"FLOAT16": 9} and spec["opset"] == "CoreML7"
    assert int8["target"]["facts"]["compute_units"] == "CPU_AND_NE"
    assert int8["target"]["facts"]["verification_bundle"]["tolerance"] == {"cosine": 0.99}
    fp32 = build(run_cli, tmp_path / "fp32", "--precision", "fp32", "--features", "stem,0,1")
    spec = fp32["target"]["facts"]["spec"]
    assert spec["compute_dtypes"] == {"FLOAT32": 6}  # the stem's two convs and two per stage
    assert [o["name"] for o in spec["outputs"]] == ["stem_s4", "stage0_s8", "stage1_s16"]
    assert "at fp32" in fp32["memory"]["detail"]


def test_the_bundles_metrics_are_vncompiles(fp16_bundle, monkeypatch):
    script = load_script(fp16_bundle[0], monkeypatch)
    rng = np.random.default_rng(0)
    reference = [rng.standard_normal((1, 10)) for _ in range(4)]
    outputs = [r + rng.standard_normal(r.shape) * 0.01 for r in reference]
    outputs[2][0, :] = outputs[2][0, ::-1]  # one top-1 disagreement
    for tolerance in ({"rel": 2e-2}, {"cosine": 0.99}, {"rel": 1e-4}):
        ours = script.compare(reference, outputs, tolerance, True)
        theirs = compare_output("logits", reference, outputs, Tolerance(**tolerance), True)
        assert ours == pytest.approx({k: getattr(theirs, k) for k in ours})
    sys.modules.pop("output_metrics", None)


def test_the_bundles_check_refuses_to_run_off_macos(fp16_bundle):
    if sys.platform == "darwin":
        pytest.skip("this is a Mac: test_the_bundles_check_passes_on_macos runs it")
    run = subprocess.run([sys.executable, "verify_coreml.py"], cwd=fp16_bundle[0], capture_output=True, text=True)
    assert run.returncode == 2 and run.stderr.startswith("error: Core ML runs only on macOS")


@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML runs only on macOS")
def test_the_bundles_check_passes_on_macos(fp16_bundle):
    run = subprocess.run([sys.executable, "verify_coreml.py", "--json"], cwd=fp16_bundle[0], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert result["passed"] and [o["name"] for o in result["outputs"]] == ["logits"]


def test_a_conversion_failure_names_the_operation(tmp_path):
    from vncompile.targets.coreml.convert import convert

    graph = helper.make_graph([helper.make_node("Einsum", ["x"], ["y"], equation="abcd->abcd")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(VncompileError, match="coreml cannot convert the graph: .*operators this converter does not "
                                             "take: Einsum"):
        convert(path, "fp16", "iOS16", "ALL")


@pytest.mark.parametrize("args,message", [
    (["--precision", "bf16"], "coreml builds fp16, fp32 or int8 (int8 weights, fp16 compute), not bf16"),
    (["--precision", "int8", "--minimum-deployment-target", "iOS15"], "coreml int8 weights need iOS16 or later"),
    (["--minimum-deployment-target", "iOS12"], "--minimum-deployment-target"),
    (["--compute-units", "GPU"], "--compute-units"),
    (["--dynamic"], "coreml builds static shapes"),
    (["--device", "GPU"], "coreml chooses its device with --compute-units"),
    (["--threads", "2"], "--threads does not apply to --target coreml"),
])
def test_requests_coreml_cannot_honour_are_one_line(run_cli, tmp_path, args, message):
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "coreml", "--size", "64",
                     *args, "-o", tmp_path / "b")
    assert result.code == 2 and message in one_line_error(result)
    assert not (tmp_path / "b").exists()


def test_profile_rows_are_the_estimated_plan_and_litert_is_measured(run_cli, ethos_u_toolchain):
    result = run_cli("profile", "--targets", "coreml,litert", "--models", "vanillanet_5", "--width", NARROW,
                     "--sizes", "64", "--warmup", "1", "--runs", "3", "--format", "json")
    assert result.code == 0, result.err
    rows = {r["target"]: r for r in result.json()["rows"]}
    coreml, litert = rows["coreml"], rows["litert"]
    assert coreml["status"] == "deferred" and coreml["memory"]["source"] == "estimated" and coreml["latency"] is None
    assert litert["status"] == "ok" and litert["memory"]["source"] == litert["latency"]["source"] == "measured"
    assert "XNNPACK" in litert["latency"]["detail"] and "XNNPACK" in litert["memory"]["detail"]
