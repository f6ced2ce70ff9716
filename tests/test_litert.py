"""The litert target with the real toolchain (litert-torch and the LiteRT interpreter in the ethos-u
environment): a narrow VanillaNet-5 as fp32, fp16 and int8 .tflite, verified on the interpreter with XNNPACK,
measured in the interpreter's own process; how the operators XNNPACK leaves out are found; what it refuses."""

from __future__ import annotations

import importlib
import json
import sys

import pytest

from tests.conftest import NARROW, one_line_error
from vncompile.profiling.measure import measure
from vncompile.toolchains.spec import WORKERS_DIR


def build(run_cli, out, *args):
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "litert", "--size", "64",
                     *args, "-o", out)
    assert result.code == 0, result.err
    return json.loads((out / "manifest.json").read_text())


@pytest.mark.parametrize("precision,layout,input_shape,input_dtype", [
    ("fp32", "nchw", [1, 3, 64, 64], "float32"),
    ("fp16", "nhwc", [1, 64, 64, 3], "float32"),
    ("int8", "nhwc", [1, 64, 64, 3], "int8"),
])
def test_tflite_verifies_on_xnnpack(run_cli, tmp_path, ethos_u_toolchain, precision, layout, input_shape,
                                    input_dtype):
    manifest = build(run_cli, tmp_path / "b", "--precision", precision, "--input-layout", layout)
    (primary,) = [a for a in manifest["artifacts"] if a["primary"]]
    assert primary["path"] == f"model_{precision}.tflite" and primary["role"] == f"tflite-{precision}"
    final = manifest["verification"]["stages"][-1]
    assert final["stage"] == "litert CPU" and final["precision"] == precision and final["passed"]
    facts = manifest["target"]["facts"]
    assert facts["input_layout"] == layout and facts["delegate"] == "XNNPACK" and facts["threads"] == 1
    assert (facts["input"]["shape"], facts["input"]["dtype"]) == (input_shape, input_dtype)
    assert facts["xnnpack"]["cpu_operators"] == [] and facts["xnnpack"]["partitions"] == 1
    assert "XNNPACK takes all" in (tmp_path / "b" / "build.log").read_text()
    if precision == "fp16":  # float16 weights: half the fp32 file
        assert primary["bytes"] < 0.6 * (tmp_path / "b" / "model.onnx").stat().st_size
    if precision == "int8":
        measured = measure("litert", tmp_path / "b", manifest, warmup=1, runs=3, timeout_s=600)
        assert measured["latency"]["source"] == measured["memory"]["source"] == "measured"
        assert measured["latency"]["runs"] == 3 and "XNNPACK" in measured["latency"]["detail"]
        assert "1 thread(s)" in measured["latency"]["detail"]
        assert measured["memory"]["max_kb"] > 0 and measured["memory"]["weights_kb"] > 0


def test_a_backbone_keeps_every_output_in_order(run_cli, tmp_path, ethos_u_toolchain):
    manifest = build(run_cli, tmp_path / "b", "--features", "stem,0,1,2", "--precision", "fp16")
    final = manifest["verification"]["stages"][-1]
    assert [o["name"] for o in final["outputs"]] == ["stem_s4", "stage0_s8", "stage1_s16", "stage2_s32"]
    assert final["passed"]


def test_operators_left_out_of_the_delegate_are_found_from_its_partitions(monkeypatch):
    monkeypatch.syspath_prepend(str(WORKERS_DIR))
    worker = importlib.import_module("ethos_u_worker")
    try:
        # input 0 -> CONV(1) -> t1 -> MAX_POOL(2) -> t2 -> CUSTOM(3) -> t3 -> MEAN(4) -> t4; weights 10, 11, 12
        ops = [{"index": 0, "op_name": "CONV_2D", "inputs": [0, 10, 11], "outputs": [1]},
               {"index": 1, "op_name": "MAX_POOL_2D", "inputs": [1], "outputs": [2]},
               {"index": 2, "op_name": "GELU", "inputs": [2], "outputs": [3]},
               {"index": 3, "op_name": "CONV_2D", "inputs": [3, 12, -1], "outputs": [4]},
               {"index": 4, "op_name": "DELEGATE", "inputs": [0, 10, 11], "outputs": [2]},
               {"index": 5, "op_name": "DELEGATE", "inputs": [3, 12], "outputs": [4]}]
        assert worker.undelegated(ops) == [{"op": "GELU", "index": 2}]
        assert worker.undelegated(ops[:4]) == [{"op": op["op_name"], "index": op["index"]} for op in ops[:4]]
    finally:
        sys.modules.pop("ethos_u_worker", None)


@pytest.mark.parametrize("args,message", [
    (["--precision", "bf16"], "litert builds fp32, fp16 (float16 weights) or int8 (full-integer), not bf16"),
    (["--dynamic"], "litert builds static shapes"),
    (["--batch", "2"], "litert builds batch 1"),
    (["--input-layout", "nchwc"], "--input-layout"),
    (["--threads", "0"], "--threads"),
    (["--soc", "SM8650"], "--soc does not apply to --target litert (its own: --input-layout, --threads)"),
])
def test_requests_litert_cannot_honour_are_one_line(run_cli, tmp_path, args, message):
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "litert", "--size", "64",
                     *args, "-o", tmp_path / "b")
    assert result.code == 2 and message in one_line_error(result)
    assert not (tmp_path / "b").exists()
