"""The rknn target with the real rknn-toolkit2 in its real environment: narrow fp16 and int8 builds
verified on the simulator, the compiler's memory plan and cycle table, the profile hooks, the
toolkit's own failures as one line, and the requests the target refuses before any work."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import NARROW, one_line_error
from vncompile.core.errors import VerificationError, VncompileError
from vncompile.targets.rknn import RknnTarget
from vncompile.targets.rknn.compiler_output import LAYER_TABLE, parse_layer_table, parse_memory_plan
from vncompile.targets.rknn.toolkit import RknnOptions, RknnSettings, compile_onnx
from vncompile.toolchains import default_root, install, start_worker

W = str(NARROW)


@pytest.fixture
def rknn_build(run_cli, rknn_toolchain, tmp_path):
    def build(*args: str) -> tuple[Path, dict]:
        out = tmp_path / "bundle"
        result = run_cli("build", "--model", "vanillanet_5", "--width", W, "--target", "rknn", "-o", out, *args)
        assert result.code == 0, result.err
        return out, json.loads((out / "manifest.json").read_text())

    return build


def plan_in_log(out: Path) -> dict[str, float]:
    """The memory plan as build.log has it, read independently of the target's parser."""
    text = (out / "build.log").read_text()
    found = dict(re.findall(r"Total (Internal|Weight) Memory Size: ([\d.]+)KB", text))
    return {"internal_kb": float(found["Internal"]), "weight_kb": float(found["Weight"])}


def test_fp16_build_verifies_on_the_simulator_with_the_compilers_plan(rknn_build):
    out, manifest = rknn_build("--precision", "fp16")
    target = manifest["target"]["facts"]
    assert target["platform"] == "rk3588" and manifest["target"]["precision"] == "fp16"
    assert manifest["target"]["device"] == "simulator"
    assert [a["role"] for a in manifest["artifacts"] if a["primary"]] == ["rknn"]
    assert manifest["memory"]["source"] == "compiler" and manifest["latency"]["source"] == "estimated"
    assert {a["role"] for a in manifest["artifacts"]} == {"onnx", "rknn", "rknn-layers"}
    assert (out / "model.rknn").stat().st_size > 0
    final = manifest["verification"]["stages"][-1]
    assert final["stage"] == "rknn simulator" and final["precision"] == "fp16" and final["passed"]
    assert final["rel"] <= 2e-2 and manifest["verification"]["passed"]

    plan = plan_in_log(out)
    assert {k: target["memory_plan"][k] for k in plan} == plan
    assert target["memory_plan"]["total_kb"] == plan["internal_kb"] + plan["weight_kb"]
    memory = RknnTarget().compiler_memory(out, manifest)
    assert memory is not None and memory.source == "compiler"
    assert memory.max_kb == plan["internal_kb"] + plan["weight_kb"]
    assert (memory.activations_kb, memory.weights_kb) == (plan["internal_kb"], plan["weight_kb"])

    with open(out / LAYER_TABLE, newline="") as f:
        layers = list(csv.DictReader(f))
    assert len(layers) == target["layers"] > 5
    assert {"op_type", "cycles_ddr", "cycles_npu", "cycles_total", "rw_kb", "full_name"} <= set(layers[0])
    assert any(row["op_type"].startswith("Conv") for row in layers)
    cycles = sum(int(row["cycles_total"]) for row in layers)
    latency = RknnTarget().estimated_latency(out, manifest)
    assert latency is not None and latency.source == "estimated" and target["npu_clock_mhz"] == 1000
    assert latency.samples_ms == [pytest.approx(cycles / 1e6)] and "1000 MHz" in latency.detail
    assert "Network Layer Information Table" in (out / "build.log").read_text()

    session = RknnTarget().load(out, manifest)  # one worker: the rebuild, then any number of inputs
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    try:
        first, second = session.run(x), session.run(x)
    finally:
        session.close()
    assert first[0].shape == (1, 1000) and first[0].dtype == np.float32
    assert np.array_equal(first[0], second[0])


def test_build_layers_is_the_compilers_table_named_by_the_network(rknn_build):
    from vncompile.profiling.layer_files import read_layers

    out, manifest = rknn_build("--precision", "fp16", "--size", "64", "--layers")
    records = read_layers(out / "layer_profile.csv")
    assert {r.source for r in records} == {"compiler"} and all(r.time_ms is None for r in records)
    assert sum(r.cycles for r in records) == manifest["target"]["facts"]["npu_cycles"]
    by_block = {r.block: r for r in records}
    assert {"stem.0", "stages.0.conv", "stages.0.pool", "stages.2.act", "cls.2"} <= set(by_block)
    assert by_block["stem.0"].op == "ConvRelu" and by_block["stem.0"].exec_type == "NPU"  # the fused stem conv
    assert by_block["stages.0.conv"].precision == "fp16" and by_block["stages.0.conv"].memory_bytes > 0


def test_int8_build_quantizes_with_the_calibration_set(rknn_build, tmp_path):
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for i in range(4):
        np.save(calibration / f"{i}.npy", np.random.default_rng(i).standard_normal((3, 224, 224), dtype=np.float32))
    out, manifest = rknn_build("--precision", "int8", "--platform", "rv1106", "--quant-algorithm", "kl_divergence",
                               "--calibration", calibration)
    target = manifest["target"]["facts"]
    assert target["platform"] == "rv1106" and target["quant_algorithm"] == "kl_divergence"
    assert target["calibration"]["directory"] == str(calibration.resolve())
    assert target["calibration"]["samples"] == 4
    final = manifest["verification"]["stages"][-1]
    assert final["stage"] == "rknn simulator" and final["precision"] == "int8"
    assert final["passed"] and final["cosine"] >= 0.99
    assert {k: target["memory_plan"][k] for k in ("internal_kb", "weight_kb")} == plan_in_log(out)

    np.save(calibration / "0.npy", np.zeros((3, 224, 224), dtype=np.float32))
    with pytest.raises(VerificationError, match="calibration set .* changed since the build"):
        RknnTarget().load(out, manifest)


def test_two_users_build_byte_identical_rknn_files(rknn_toolchain, tmp_path):
    """As two users meet it: another $HOME, cache, $TMPDIR, working and output directory (each of another
    length) and unrelated variables, yet the same .rknn; the toolkit's header holds heap addresses, and
    all of these once moved its heap."""
    users = [tmp_path / "u", tmp_path / "a-second-user-with-a-much-longer-name"]
    procs = []
    for i, user in enumerate(users):
        (user / "tmp").mkdir(parents=True)
        env = {**os.environ, "HOME": str(user), "VNCOMPILE_CACHE_DIR": str(user / "cache" / ("c" * 10 * i)),
               "TMPDIR": str(user / "tmp"), "VNCOMPILE_TOOLCHAIN_DIR": str(default_root()),
               "UNRELATED": "x" * 300 * i, "RKNN_LOG_LEVEL": str(i)}
        command = [sys.executable, "-m", "vncompile", "build", "--model", "vanillanet_5", "--width", W,
                   "--target", "rknn", "--precision", "fp16", "-o", str(user / "bundle" / ("b" * 20 * i))]
        procs.append(subprocess.Popen(command, env=env, cwd=user, stderr=subprocess.PIPE, text=True))
    errors = [proc.communicate()[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    first, second = (user / "bundle" / ("b" * 20 * i) / "model.rknn" for i, user in enumerate(users))
    assert first.read_bytes() == second.read_bytes()


def test_the_analytic_plan_is_the_compilers_internal_memory(rknn_toolchain, tmp_path):
    """Fused ops, depth-first order and a best-fit arena: the analytic activation figure is rknn's own
    "Total Internal Memory Size" to the KB, for VanillaNet-5, ResNet-50 (shortcuts) and plain-CNN-50."""
    from vncompile.api.request import InputShape, ModelSource
    from vncompile.onnxtools.memory_plan import plan_memory
    from vncompile.onnxtools.order import depth_first_order
    from vncompile.onnxtools.simplify import simplify_onnx
    from vncompile.pipeline import stages

    with start_worker("rknn", logging.getLogger("test")) as worker:
        for name, width in (("vanillanet_5", NARROW), ("resnet50", 0.25), ("plain_cnn_50", 0.25)):
            loaded = stages.network_for_export(stages.fuse(stages.load_model(ModelSource(model_name=name,
                                                                                        width=width))))
            exported = stages.export_onnx(loaded, InputShape.square(128), tmp_path / f"{name}.onnx", opset=18,
                                          dynamic=False)
            graph = tmp_path / f"{name}.simplified.onnx"
            simplify_onnx(exported, graph, "onnxslim")
            depth_first_order(graph)
            report = compile_onnx(worker, graph, RknnSettings("rk3588", "fp16", None), None, None)
            assert plan_memory(graph, "fp16").arena_bytes / 1024 == report.memory.internal_kb, name


def test_fit_memory_takes_the_first_tiling_the_compiler_fits(rknn_build):
    """rknn hoists the strips' input slices (channel-padded) to the start, so its figure for a tiled graph
    exceeds the analytic plan: the compiler judges each candidate, and the first that fits is built and
    verified on the simulator. Here 2 strips fit the plan but not the compiler; 3 strips fit both."""
    out, manifest = rknn_build("--width", "0.5", "--size", "256", "--fit-memory", "15950KB")
    fit = manifest["model"]["fit_memory"]
    assert fit["judged_by"] == "rknn" and fit["tiling"] == {"stages": 1, "strips": 3}
    first = next(t for t in fit["tried"] if t["target_peak_kb"] is not None)  # the first the compiler judged
    assert first["tiling"] == {"stages": 1, "strips": 2}
    assert first["planned_peak_kb"] <= 15950 < first["target_peak_kb"]
    assert manifest["memory"]["max_kb"] == fit["target_peak_kb"] <= 15950 < fit["untiled_peak_kb"]
    assert manifest["verification"]["passed"]


def test_int8_with_the_synthetic_set_is_smaller_than_fp16(rknn_build):
    _, fp16 = rknn_build("--precision", "fp16")
    _, int8 = rknn_build("--precision", "int8", "--force")
    int8_facts, fp16_facts = int8["target"]["facts"], fp16["target"]["facts"]
    assert int8_facts["quant_algorithm"] == "normal" and int8_facts["calibration"]["directory"] is None
    assert int8["verification"]["passed"]
    assert int8_facts["memory_plan"]["weight_kb"] < 0.7 * fp16_facts["memory_plan"]["weight_kb"]


@pytest.mark.parametrize("args,message", [
    (["--precision", "fp32"], "rknn builds fp16 or int8"),
    (["--precision", "bf16"], "rknn builds fp16 or int8"),
    (["--precision", "fp16", "--platform", "rv1106"], "rv1106 runs int8 only"),
    (["--precision", "fp16", "--platform", "rv1103"], "rv1103 runs int8 only"),
    (["--precision", "fp16", "--platform", "rk9999"], "unknown --platform 'rk9999'"),
    (["--precision", "int8", "--quant-algorithm", "magic"], "unknown --quant-algorithm 'magic'"),
    (["--precision", "fp16", "--quant-algorithm", "mmse"], "--quant-algorithm applies to --precision int8"),
    (["--precision", "fp16", "--dynamic"], "static input shapes"),
    (["--precision", "fp16", "--opset", "20"], "opset <= 19"),
    (["--precision", "fp16", "--device", "NPU"], "a board is --rknn-target"),
    (["--precision", "fp16", "--io-dtype", "fp16"], "--io-dtype applies to fp16 ONNX graphs"),
])
def test_requests_rknn_cannot_honour_are_refused_before_any_work(run_cli, rknn_toolchain, tmp_path, args, message):
    out = tmp_path / "bundle"
    result = run_cli("build", "--model", "vanillanet_5", "--width", W, "--target", "rknn", "-o", out, *args)
    assert result.code == 2, result.err
    assert message in one_line_error(result)
    assert not out.exists()


def tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "tiny", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_the_toolkits_own_failures_are_one_line(rknn_toolchain, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with start_worker("rknn", logging.getLogger("vncompile")) as worker:
        with pytest.raises(VncompileError) as raised:  # the toolkit raised: the last line of its exception
            compile_onnx(worker, garbage, RknnSettings("rk3588", "fp16", None), None, None)
        assert "\n" not in str(raised.value) and "DecodeError" in str(raised.value)
        with pytest.raises(VncompileError) as refused:  # it returned -1: the reason it logged
            compile_onnx(worker, tiny_onnx(tmp_path / "tiny.onnx"), RknnSettings("rv1106", "fp16", None), None, None)
        assert "rv1106" in str(refused.value) and "do_quantization = False" in str(refused.value)


def test_defaults_and_cache_key_facts(rknn_toolchain):
    target = RknnTarget()
    assert target.default_precision(RknnOptions()) == "fp16"
    assert target.default_precision(RknnOptions(platform="rv1103")) == "int8"
    versions = target.cache_identity()
    assert versions["rknn-toolkit2"] == "2.5.0" and versions["rknn-toolchain"]


def test_installing_again_verifies_and_returns(rknn_toolchain):
    started = time.monotonic()
    again = install("rknn")
    assert time.monotonic() - started < 60
    assert again == rknn_toolchain and again.installed and again.version == "2.5.0"


# A table as rknn-toolkit2 2.5.0 prints it for rv1126b (with its SparseRatio column), and its memory plan.
RV1126B_OUTPUT = """\
D RKNN: [08:50:00.514] ID   OpType             DataType Target InputShape                               OutputShape            Cycles(DDR/NPU/Total)    SparseRatio  RW(KB)       FullName
D RKNN: [08:50:00.514] ----------------------------------------------------------------------------------------
D RKNN: [08:50:00.514] 0    InputOperator      FLOAT16  CPU    \\                                        (1,3,224,224)          0/0/0                    0%           0            InputOperator:input
D RKNN: [08:50:00.514] 1    ConvRelu           FLOAT16  NPU    (1,3,224,224),(32,3,4,4),(32)            (1,32,56,56)           67781/100352/100352      0%           298          Conv:node_conv2d
D RKNN: [08:50:00.514] ----------------------------------------------------------------------------------------
D RKNN: [08:50:00.515] Total Internal Memory Size: 588KB
D RKNN: [08:50:00.515] Total Weight Memory Size: 1.5MB
""".splitlines()  # noqa: E501


def test_the_parsers_read_the_table_by_its_header():
    rows = parse_layer_table(RV1126B_OUTPUT)
    assert [row["id"] for row in rows] == [0, 1]
    assert rows[1]["cycles_total"] == 100352 and rows[1]["cycles_ddr"] == 67781 and rows[1]["sparse_ratio"] == "0%"
    assert rows[1]["rw_kb"] == 298.0 and rows[1]["full_name"] == "Conv:node_conv2d"
    plan = parse_memory_plan(RV1126B_OUTPUT)
    assert (plan.internal_kb, plan.weight_kb) == (588.0, 1536.0)
    with pytest.raises(VncompileError, match="no memory plan"):
        parse_memory_plan(RV1126B_OUTPUT[:4])
