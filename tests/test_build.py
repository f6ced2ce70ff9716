"""`vncompile build`: real ONNX Runtime and OpenVINO builds through every stage, the cache,
atomic output, target plugins and bad input."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from tests.conftest import NARROW, official_checkpoint, one_line_error, random_network
from vncompile.api.request import BuildRequest, InputShape, ModelSource
from vncompile.pipeline import build as build_module
from vncompile.pipeline.build import build
from vncompile.pipeline.cache import BuildCache

W = str(NARROW)
MANIFEST_KEYS = {"schema", "status", "model", "target", "input_shape", "dynamic", "artifacts", "memory", "latency",
                 "verification", "stages", "toolchain", "created"}


def narrow_build(run_cli, out: Path, *extra: str, target: str = "onnxruntime"):
    return run_cli("build", "--model", "vanillanet_5", "--width", W, "--target", target, "-o", out, *extra)


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("target,roles,primary", [
    ("onnxruntime", {"onnx", "onnxruntime-optimized", "loader"}, "onnxruntime-optimized"),
    ("openvino", {"onnx", "openvino-xml", "openvino-bin", "loader"}, "openvino-xml"),
])
def test_build_runs_every_stage_and_writes_a_verified_bundle(tmp_path, run_cli, target, roles, primary):
    out = tmp_path / "bundle"
    result = narrow_build(run_cli, out, target=target)
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest) >= MANIFEST_KEYS and manifest["schema"] == 2 and manifest["status"] == "ok"
    assert manifest["model"]["trained"] is False
    assert {"name", "form", "act_num", "num_classes", "checkpoint_sha256", "trained"} <= set(manifest["model"])
    assert manifest["model"]["form"] == "deploy"
    assert set(manifest["target"]) == {"name", "version", "device", "precision", "facts"}
    assert manifest["target"]["device"] == "CPU" and manifest["input_shape"] == [1, 3, 224, 224]
    assert {a["role"] for a in manifest["artifacts"]} == roles
    assert [a["role"] for a in manifest["artifacts"] if a["primary"]] == [primary]
    memory = manifest["memory"]  # no plan of the runtime's own: the analytic estimate of the compiled ONNX
    assert memory["source"] == "estimated" and memory["max_kb"] == pytest.approx(
        memory["weights_kb"] + memory["activations_kb"])
    for artifact in manifest["artifacts"]:
        assert (out / artifact["path"]).stat().st_size == artifact["bytes"]
    assert [s["name"] for s in manifest["stages"]] == ["load", "fuse", "export", "simplify", "reference", "compile",
                                                      "verify"]
    verification = manifest["verification"]
    assert verification["passed"] and verification["tolerance"] == {"fp32": {"rel": 1e-4}}
    stages = [s["stage"] for s in verification["stages"]]
    assert stages == ["torch fused", "onnx exported", "onnx simplified", f"{target} CPU"]
    assert all({"stage", "max_abs", "rel", "cosine", "top1_agreement", "outputs"} <= set(s)
               for s in verification["stages"])
    assert all([o["name"] for o in s["outputs"]] == ["logits"] for s in verification["stages"])
    assert (out / "build.log").read_text().count("stage") >= 6
    assert {"python", "torch", "onnx", "onnxruntime"} <= set(manifest["toolchain"])
    assert leftovers(tmp_path) == []


def test_json_prints_only_the_manifest_on_stdout(tmp_path, run_cli):
    out = tmp_path / "b"
    result = narrow_build(run_cli, out, "--json")
    assert result.code == 0
    assert result.json() == json.loads((out / "manifest.json").read_text())


def test_cache_hit_changed_input_and_altered_entry(tmp_path, isolated_cache):
    cache = BuildCache(isolated_cache)
    request = BuildRequest(ModelSource(model_name="vanillanet_5", width=NARROW), "onnxruntime")
    first = build(request, tmp_path / "a", cache=cache)
    assert not first.cached
    second = build(request, tmp_path / "b", cache=cache)
    assert second.cached and second.manifest == first.manifest
    assert build(request, tmp_path / "b", cache=cache).up_to_date
    changed = BuildRequest(ModelSource(model_name="vanillanet_5", width=NARROW), "onnxruntime", opset=19)
    assert not build(changed, tmp_path / "c", cache=cache).cached
    entry = cache.entry(first.manifest["cache_key"])
    with open(entry / "model.onnx", "ab") as f:
        f.write(b"tampered")
    rebuilt = build(request, tmp_path / "d", cache=cache)
    assert not rebuilt.cached and rebuilt.manifest["artifacts"] == first.manifest["artifacts"]


def test_concurrent_identical_builds_share_one_cache_entry(tmp_path, isolated_cache):
    args = [sys.executable, "-m", "vncompile", "build", "--model", "vanillanet_5", "--width", W,
            "--target", "onnxruntime", "-o"]
    env = {**os.environ, "VNCOMPILE_CACHE_DIR": str(isolated_cache)}
    procs = [subprocess.Popen([*args, str(tmp_path / f"out{i}")], env=env, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    errors = [p.communicate()[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert sum("served from the cache" in e for e in errors) == 1
    assert len(list((isolated_cache / "builds").iterdir())) == 1
    manifests = [json.loads((tmp_path / f"out{i}" / "manifest.json").read_text()) for i in range(2)]
    assert manifests[0] == manifests[1]


def test_failed_verification_fails_the_build_and_writes_nothing(tmp_path, run_cli, isolated_cache):
    out = tmp_path / "b"
    result = narrow_build(run_cli, out, "--tolerance", "fp32=rel:1e-12")
    assert result.code == 1
    line = one_line_error(result)
    assert "verification failed at 'torch fused' (fp32)" in line and "needs rel <= 1e-12" in line
    would_pass = re.search(r"--tolerance (fp32=rel:\S+) would pass it", line).group(1)
    assert not out.exists() and leftovers(tmp_path) == []
    assert not (isolated_cache / "builds").exists() or not any((isolated_cache / "builds").iterdir())
    loose = narrow_build(run_cli, out, "--tolerance", would_pass)  # the tolerance it named does pass
    assert loose.code == 0, loose.err
    assert json.loads((out / "manifest.json").read_text())["verification"]["tolerance"]["fp32"]["rel"] > 1e-12
    kept = narrow_build(run_cli, out, "--no-verify", "--force")
    assert kept.code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["skipped"]
    assert not {"verify", "reference"} & {s["name"] for s in manifest["stages"]}


def test_existing_different_output_needs_force(tmp_path, run_cli):
    out = tmp_path / "b"
    assert narrow_build(run_cli, out).code == 0
    before = (out / "manifest.json").read_text()
    other = narrow_build(run_cli, out, "--opset", "19")
    assert other.code == 2 and "--force" in one_line_error(other)
    assert (out / "manifest.json").read_text() == before
    assert narrow_build(run_cli, out, "--opset", "19", "--force").code == 0
    assert json.loads((out / "manifest.json").read_text())["opset"] == 19
    assert leftovers(tmp_path) == []


@pytest.fixture
def plugins(monkeypatch):
    """Register the tests' third-party targets through the entry-point group, as an installed package would."""
    import vncompile.targets as registry

    eps = [EntryPoint("copy", "tests.plugins.third_party:CopyTarget", registry.ENTRY_POINT_GROUP),
           EntryPoint("missing", "tests.plugins.third_party:MissingToolchainTarget", registry.ENTRY_POINT_GROUP),
           EntryPoint("broken", "tests.plugins.no_such_module:Target", registry.ENTRY_POINT_GROUP),
           *(EntryPoint(name, f"tests.plugins.third_party:{cls}", registry.ENTRY_POINT_GROUP) for name, cls in (
               ("wrong-values", "WrongValuesTarget"), ("wrong-shape", "WrongShapeTarget"),
               ("drops-accuracy", "DropsAccuracyTarget")))]
    monkeypatch.setattr(registry, "entry_points", lambda group: eps if group == registry.ENTRY_POINT_GROUP else [])
    registry.get_target.cache_clear()
    yield
    registry.get_target.cache_clear()


def test_third_party_target_is_listed_and_builds(tmp_path, run_cli, plugins):
    rows = {row["name"]: row for row in run_cli("targets", "--json").json()}
    assert rows["copy"]["available"] and rows["onnxruntime"]["available"] and rows["openvino"]["available"]
    assert not rows["missing"]["available"] and "pip install vendor-sdk" in rows["missing"]["reason"]
    assert not rows["broken"]["available"] and "failed to load" in rows["broken"]["reason"]
    out = tmp_path / "b"
    result = narrow_build(run_cli, out, target="copy")
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"]["facts"] == {"vendor": "third party"} and manifest["verification"]["stages"][-1]["passed"]


@pytest.mark.parametrize("target,message", [
    ("wrong-values", r"^error: verification failed at 'wrong-values CPU' \(fp32\): rel error [\d.e+-]+, cosine "),
    ("wrong-shape", r"^error: verification failed at 'wrong-shape CPU': output 'stage0_s\d+' has shape 1x\d+, "
                    r"the reference 1x\d+x\d+x\d+$"),
])
def test_a_target_whose_outputs_are_wrong_fails_verification_at_its_stage(tmp_path, run_cli, plugins, target,
                                                                        message):
    """Every ONNX stage passes; the target's own stage fails: exit 1, one line naming the stage and the output."""
    out = tmp_path / "b"
    extra = ("--features", "0,1,2") if target == "wrong-shape" else ()
    result = narrow_build(run_cli, out, *extra, target=target)
    assert result.code == 1, result.err
    assert re.match(message, one_line_error(result)), one_line_error(result)
    assert not out.exists()


def test_max_top1_drop_fails_a_target_that_really_drops_accuracy(tmp_path, run_cli, plugins):
    from tests.test_real_data import CHECKPOINT, HELDOUT

    # a tolerance its outputs pass, so that accuracy is what fails it
    args = ("build", CHECKPOINT, "--size", "64", "--target", "drops-accuracy", "--eval-data", HELDOUT, "--tolerance",
            "fp32=rel:10")
    failed = run_cli(*args, "-o", tmp_path / "strict")
    assert failed.code == 1 and re.match(
        r"^error: drops-accuracy fp32 top-1 on 300 images of .*heldout is [\d.]+%, [\d.]+ points below the "
        r"reference's [\d.]+% \(allowed: --max-top1-drop 1\)$", one_line_error(failed)), failed.err
    assert not (tmp_path / "strict").exists()
    allowed = run_cli(*args, "--max-top1-drop", "100", "-o", tmp_path / "lenient")
    assert allowed.code == 0, allowed.err
    accuracy = json.loads((tmp_path / "lenient" / "manifest.json").read_text())["accuracy"]
    assert accuracy["target"]["top1"] < accuracy["reference"]["top1"] - 1


def test_unavailable_target_is_a_one_line_error(tmp_path, run_cli, plugins):
    result = narrow_build(run_cli, tmp_path / "b", target="missing")
    assert result.code == 2 and "pip install vendor-sdk" in one_line_error(result)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args,message", [
    (["--model", "resnet_9000"], "unknown model 'resnet_9000'"),
    (["--target", "tpu"], "unknown target 'tpu'"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--precision", "bf16"], "onnxruntime builds fp32, fp16, int8, not bf16"),
    (["--precision", "int16"], "onnxruntime builds fp32, fp16, int8, not int16"),
    (["--target", "openvino", "--precision", "int16"], "openvino builds fp32, fp16, bf16, int8, not int16"),
    (["--size", "0"], "'--size': must be a positive integer, got '0'"),
    (["--size", "-3"], "'--size': must be a positive integer, got '-3'"),
    (["--size", "16"], "needs inputs of at least 32x32"),
    (["--size", "60000"], "too large for this machine"),
    (["--input-shape", "1x3x224"], "--input-shape must look like 1x3x224x224"),
    (["--input-shape", "1x1x224x224"], "takes 3 input channels"),
    (["--size", "224", "--input-shape", "1x3x224x224"], "give --size or --input-shape, not both"),
    (["--device", "GPU"], "no GPU provider here"),
    (["--simplifier", "magic"], "unknown simplifier 'magic'"),
    (["--opset", "3"], "--opset must be between 18 and 23 (the opsets the ONNX export writes), got 3"),
    (["--opset", "7"], "--opset must be between 18 and 23"),
    (["--opset", "17"], "--opset must be between 18 and 23"),  # the exporter's graph cannot be converted down
    (["--opset", "24"], "--opset must be between 18 and 23"),
    (["--act-learn", "2"], "--act-learn must be in [0, 1]"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, run_cli, args, message):
    base = {"--model": "vanillanet_5", "--target": "onnxruntime"}
    for i, arg in enumerate(args):
        if arg in base:
            base[arg] = args[i + 1]
    rest = [a for i, a in enumerate(args) if a not in base and (i == 0 or args[i - 1] not in base)]
    out = tmp_path / "b"
    result = run_cli("build", "--model", base["--model"], "--width", W, "--target", base["--target"], "-o", out, *rest)
    assert result.code == 2, result.err
    assert message in one_line_error(result)
    assert not out.exists() and leftovers(tmp_path) == []


def test_missing_checkpoint_is_one_line(tmp_path, run_cli):
    result = run_cli("build", tmp_path / "nope.pth", "--target", "onnxruntime", "-o", tmp_path / "b")
    assert result.code == 2 and "no such checkpoint file" in one_line_error(result)
    # a model's name where the checkpoint goes (with a --model option): the missing file, and how to build it
    named = run_cli("build", "vanillanet_5", "--width", W, "--target", "analytic", "-o", tmp_path / "c")
    assert one_line_error(named) == ("error: vanillanet_5: no such checkpoint file (a network with random weights: "
                                     "--model vanillanet_5)")


def test_dynamic_build_verifies_two_sizes(tmp_path, run_cli):
    out = tmp_path / "b"
    assert narrow_build(run_cli, out, "--dynamic", target="openvino").code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dynamic"]
    stages = [s["stage"] for s in manifest["verification"]["stages"]]
    assert "openvino CPU @224" in stages and "openvino CPU @256" in stages


def test_ada_pool_variant_exports_at_its_native_size_and_refuses_dynamic(tmp_path, run_cli):
    args = ["build", "--model", "vanillanet_13_x1_5_ada_pool", "--width", str(1 / 24), "--target", "onnxruntime"]
    static = run_cli(*args, "-o", tmp_path / "static")
    assert static.code == 0, static.err
    dynamic = run_cli(*args, "--dynamic", "-o", tmp_path / "dynamic")
    assert dynamic.code == 2
    line = one_line_error(dynamic)
    assert "adaptive max pools" in line and "static size" in line and "224" in line
    assert not (tmp_path / "dynamic").exists()


@pytest.mark.parametrize("target,precision", [("onnxruntime", "int8"), ("onnxruntime", "fp16"),
                                              ("openvino", "bf16"), ("openvino", "fp16"), ("openvino", "int8")])
def test_reduced_precisions_verify_within_their_tolerance(tmp_path, run_cli, target, precision):
    """A precision the CPU has no arithmetic for (OpenVINO bf16 and fp16 on most x86 CPUs) is refused, asked of the
    host as the build asks it; where the CPU has it, the build verifies."""
    from vncompile.targets.openvino import has_arithmetic

    out = tmp_path / "b"
    result = narrow_build(run_cli, out, "--precision", precision, target=target)
    if target == "openvino" and not has_arithmetic(precision):
        assert result.code == 2 and f"has no {precision} arithmetic" in one_line_error(result)
        assert not out.exists()
        return
    assert result.code == 0, result.err
    verification = json.loads((out / "manifest.json").read_text())["verification"]
    assert verification["passed"] and precision in verification["tolerance"]
    final = verification["stages"][-1]
    assert final["precision"] == precision and final["stage"] == f"{target} CPU"


def test_int8_uses_a_calibration_directory(tmp_path, run_cli):
    import numpy as np

    calibration = tmp_path / "calib"
    calibration.mkdir()
    for i in range(4):
        np.save(calibration / f"{i}.npy", np.random.default_rng(i).standard_normal((3, 224, 224), dtype=np.float32))
    out = tmp_path / "b"
    assert narrow_build(run_cli, out, "--precision", "int8", "--calibration", calibration).code == 0
    (calibration / "bad.npy").write_bytes(b"nope")
    bad = narrow_build(run_cli, tmp_path / "c", "--precision", "int8", "--calibration", calibration)
    assert bad.code != 0 and not (tmp_path / "c").exists()


def test_onnxsim_simplifier(tmp_path, run_cli):
    out = tmp_path / "b"
    assert narrow_build(run_cli, out, "--simplifier", "onnxsim").code == 0
    assert json.loads((out / "manifest.json").read_text())["simplifier"] == "onnxsim"


def test_checkpoint_build_and_act_learn_override(tmp_path, run_cli):
    ckpt = official_checkpoint(tmp_path / "checkpoint-49.pth", random_network(seed=3), epoch=49, decay_epochs=100)
    out = tmp_path / "b"
    result = run_cli("build", ckpt, "--target", "onnxruntime", "--act-learn", "0.49", "-o", out)
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["form"] == "train" and manifest["model"]["trained"]
    assert manifest["model"]["act_learn"]["source"] == "override"
    assert manifest["model"]["checkpoint_sha256"] and manifest["verification"]["passed"]
    assert [s["stage"] for s in manifest["verification"]["stages"]][0] == "onnx exported"


def test_default_output_directory(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, "--target", "onnxruntime", "--size", "160")
    assert result.code == 0
    assert (tmp_path / "build" / f"vanillanet_5-w{NARROW:g}-onnxruntime-fp32-160" / "manifest.json").is_file()


def test_input_shape_and_batch(tmp_path):
    assert InputShape.parse("2x3x192x256").as_tuple() == (2, 3, 192, 256)
    request = BuildRequest(ModelSource(model_name="vanillanet_5", width=NARROW), "onnxruntime",
                           shape=InputShape(2, 3, 192, 256))
    outcome = build(request, tmp_path / "b")
    assert outcome.manifest["input_shape"] == [2, 3, 192, 256]
    assert outcome.manifest["verification"]["passed"]


def test_stage_names_are_the_pipeline_in_order():
    assert build_module.STAGE_NAMES == ["load", "fuse", "export", "simplify", "quantize", "reference", "evaluate",
                                        "compile", "verify"]


def test_targets_share_the_prepared_onnx_stages(tmp_path, isolated_cache):
    source = ModelSource(model_name="vanillanet_5", width=NARROW)
    first = build(BuildRequest(source, "onnxruntime"), tmp_path / "a")
    second = build(BuildRequest(source, "openvino"), tmp_path / "b")
    assert not any(s["cached"] for s in first.manifest["stages"] if s["name"] in ("export", "reference"))
    assert all(s["cached"] for s in second.manifest["stages"] if s["name"] in ("export", "reference"))
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()
    assert len(list((isolated_cache / "onnx").iterdir())) == 1
