"""The qnn target with the real onnxruntime-qnn: a narrow VanillaNet-5 quantized for the HTP (int8, and int16
activations with int8 weights), compiled into a context binary and verified on the x86 HTP simulator, with and
without the NPU graph passes, and how fully quantized the graph QNN receives is; what it refuses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import NARROW, one_line_error
from vncompile.onnxtools.memory_plan import plan_memory

pytest.importorskip("onnxruntime_qnn", reason="onnxruntime-qnn is not installed (pip install 'vncompile[qnn]')")


@pytest.mark.parametrize("passes", ["none", "relu-before-maxpool,stem-space-to-depth"])
def test_int8_context_binary_verifies_on_the_htp_simulator(run_cli, tmp_path, passes):
    out = tmp_path / "b"
    result = run_cli("build", "--model", "vanillanet_5", "--width", str(NARROW), "--target", "qnn", "--size", "64",
                     "--soc", "SM8750", "--graph-passes", passes, "-o", out)
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    facts = manifest["target"]["facts"]
    assert facts["soc"] == "SM8750" and facts["htp_arch"] == "79" and manifest["target"]["precision"] == "int8"
    roles = {a["role"]: a for a in manifest["artifacts"]}
    assert roles["qnn-context-binary"]["primary"] and {"qnn-epcontext", "onnx-qdq"} <= set(roles)
    assert (out / "model_ctx_qnn.bin").stat().st_size == facts["context_binary_kb"] * 1024
    final = manifest["verification"]["stages"][-1]
    assert final["stage"] == "qnn simulator" and final["passed"] and final["cosine"] >= 0.99
    assert manifest["memory"]["source"] == "estimated" and "context binary" in manifest["memory"]["detail"]
    assert manifest["latency"] is None  # the simulator's wall clock is no phone's
    assert manifest["model"]["graph_passes"] == ({} if passes == "none" else
                                                 {"relu-before-maxpool": 3, "stem-space-to-depth": 1})
    # Without the pass the quantizer folds each pool's ReLU into its output scale: the HTP runs the three
    # MaxPools in float between a Dequantize and a Quantize, and the build says which pass quantizes them.
    log = (out / "build.log").read_text()
    if passes == "none":
        assert facts["float_nodes"] == {"MaxPool": 3} and facts["quantized_nodes"] == 11
        assert "3 of 14 compute nodes in float" in facts["placement"]
        assert "node_max_pool2d_2; adding relu-before-maxpool to --graph-passes quantizes the pools" in log
    else:  # the stem's SpaceToDepth is one more node, quantized too
        assert facts["float_nodes"] == {} and facts["quantized_nodes"] == 15
        assert "all 15 compute nodes quantized" in facts["placement"] and "run in float" not in log


def test_int16_activations_verify_on_the_htp_simulator(run_cli, tmp_path):
    out = tmp_path / "b"
    result = run_cli("build", "--model", "vanillanet_5", "--width", str(NARROW), "--target", "qnn", "--size", "64",
                     "--precision", "int16", "--graph-passes", "relu-before-maxpool", "-o", out)
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    facts = manifest["target"]["facts"]
    assert manifest["target"]["precision"] == "int16"
    assert (facts["activations"], facts["weights"]) == ("uint16", "uint8")
    assert facts["float_nodes"] == {} and facts["quantized_nodes"] == 14
    assert (out / "model_ctx_qnn.bin").stat().st_size == facts["context_binary_kb"] * 1024
    verification = manifest["verification"]
    final = verification["stages"][-1]
    assert final["stage"] == "qnn simulator" and final["precision"] == "int16" and final["passed"]
    assert final["cosine"] >= 0.99 and "int16" in verification["tolerance"]
    # The memory estimate: 2-byte activations (twice int8's arena), 1-byte weights (int8's)
    memory, int8 = manifest["memory"], plan_memory(out / "model.onnx", "int8")
    assert memory["activations_kb"] == 2 * int8.arena_bytes / 1024 and memory["weights_kb"] == int8.weight_bytes / 1024


@pytest.mark.parametrize("args,message", [
    (["--precision", "fp16"], "qnn builds int8 (uint8 activations and weights on the HTP) or int16 (uint16 "
                               "activations, uint8 weights), not fp16; pass --precision int8 or int16"),
    (["--soc", "SM0000"], "unknown --soc 'SM0000'; qnn builds for SM8450, SM8550, SM8650, SM8750"),
])
def test_requests_qnn_cannot_honour_are_one_line(run_cli, tmp_path, args, message):
    result = run_cli("build", "--model", "vanillanet_5", "--width", str(NARROW), "--target", "qnn", "--size", "64",
                     *args, "-o", tmp_path / "b")
    assert result.code == 2 and message in one_line_error(result)
    assert not (tmp_path / "b").exists()


def test_json_on_stdout_is_only_json_though_qnn_prints_on_loading(tmp_path):
    """onnxruntime-qnn's native library prints a banner to file descriptor 1 when it loads; a real process's
    --json output is still the manifest alone."""
    command = [sys.executable, "-m", "vncompile", "build", "--model", "vanillanet_5", "--width", str(NARROW),
               "--target", "qnn", "--size", "64", "--calibration-size", "4", "-o", str(tmp_path / "b"), "--json"]
    process = subprocess.run(command, capture_output=True, text=True, check=False)
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout)["target"]["name"] == "qnn"
