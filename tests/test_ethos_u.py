"""The ethos-u target with the real toolchain (litert-torch, vela, the LiteRT interpreter): a narrow
VanillaNet-5 quantized to an int8 TFLite, verified on the interpreter and compiled by vela, with and without
the NPU graph passes; the graph the converter starts from is the verified ONNX; what it refuses."""

from __future__ import annotations

import configparser
import csv
import json
import logging

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import NARROW, one_line_error
from vncompile.core.errors import VncompileError
from vncompile.profiling.layer_files import read_layers
from vncompile.targets.ethos_u.vela import MEMORY_MODES, SYSTEM_CONFIGS, VelaSettings, cpu_operations


def build(run_cli, out, *args):
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "ethos-u", "--size", "64",
                     *args, "-o", out)
    assert result.code == 0, result.err
    return json.loads((out / "manifest.json").read_text())


def test_int8_tflite_verifies_and_vela_plans_it_with_and_without_the_passes(run_cli, tmp_path, ethos_u_toolchain):
    default = build(run_cli, tmp_path / "passes", "--layers")
    plain = build(run_cli, tmp_path / "none", "--graph-passes", "none", "--accelerator", "ethos-u55-128")
    for manifest, out in ((default, tmp_path / "passes"), (plain, tmp_path / "none")):
        roles = {a["role"]: a for a in manifest["artifacts"]}
        assert roles["ethos-u-tflite"]["primary"] and {"tflite-int8", "vela-summary", "vela-layers"} <= set(roles)
        final = manifest["verification"]["stages"][-1]
        assert final["stage"] == "ethos-u interpreter" and final["passed"] and final["cosine"] >= 0.99
        facts = manifest["target"]["facts"]
        summary = next(csv.DictReader((out / "vela_summary.csv").open()))
        assert facts["vela"]["cycles"] == int(float(summary["cycles_total"])) > 0
        assert manifest["memory"]["source"] == "compiler"
        assert manifest["memory"]["max_kb"] == pytest.approx(sum(
            float(summary[f"{area}_memory_used"]) for area in ("sram", "dram", "on_chip_flash", "off_chip_flash")))
        assert manifest["latency"]["source"] == "estimated"
        assert manifest["latency"]["median_ms"] == pytest.approx(float(summary["inference_time"]) * 1e3)
        assert facts["cpu_operators"] == []
    assert default["model"]["graph_passes"] == {"stem-space-to-depth": 1}
    assert plain["model"]["graph_passes"] == {}
    assert (default["target"]["facts"]["accelerator"], plain["target"]["facts"]["memory_mode"]) == (
        "ethos-u65-256", "Shared_Sram")
    layers = list(csv.DictReader((tmp_path / "none" / "vela_per_layer.csv").open()))
    assert sum(row["Original Operator"] == "Conv2D" for row in layers) > 64  # the stem, one conv per pixel
    assert default["target"]["facts"]["vela"]["cycles"] < plain["target"]["facts"]["vela"]["cycles"]
    # --layers: vela's per-layer rows, each lined up with the network's block (the stem's space-to-depth too)
    records = read_layers(tmp_path / "passes" / "layer_profile.csv")
    assert sum(r.cycles for r in records) == pytest.approx(default["target"]["facts"]["vela"]["cycles"], rel=0.01)
    assert {r.source for r in records} == {"compiler"} and all(r.block for r in records)
    assert records[0].block == "stem.0" and records[-1].block == "cls.2"
    assert {"stages.0.conv", "stages.0.pool", "stages.2.act"} <= {r.block for r in records}


def test_a_residual_network_runs_wholly_on_the_npu(run_cli, tmp_path, ethos_u_toolchain):
    """ResNet's Add -> ReLU is quantized as one unit (left float, vela would put 16 ReLUs on the CPU)."""
    result = run_cli("build", "--model", "resnet50", "--width", NARROW, "--target", "ethos-u", "--size", "64",
                     "-o", tmp_path / "b")
    assert result.code == 0, result.err
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["target"]["facts"]["cpu_operators"] == [] and manifest["verification"]["passed"]


def test_the_converter_starts_from_the_verified_graph(run_cli, tmp_path, ethos_u_toolchain):
    """The toolchain rebuilds the ONNX in torch node for node: the same function in float32 as ONNX Runtime
    runs, for VanillaNet with both passes, a tiled VanillaNet, and ResNet-50."""
    from vncompile.toolchains import start_worker

    graphs = {"passes": ["--graph-passes", "relu-before-maxpool,stem-space-to-depth", "--size", "64"],
              "tiled": ["--fit-memory", "7MB", "--size", "512"], "resnet50": ["--size", "64"]}
    with start_worker("ethos-u", logging.getLogger("test")) as worker:
        for name, args in graphs.items():
            model = "resnet50" if name == "resnet50" else "vanillanet_5"
            out = tmp_path / name
            result = run_cli("build", "--model", model, "--width", NARROW, "--target", "onnxruntime", *args, "-o", out)
            assert result.code == 0, result.err
            size = int(args[-1])
            x = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
            np.save(worker.scratch / "x.npy", x)
            reply = worker.request("run_as_torch", {"onnx": str(out / "model.onnx"),
                                                    "input": str(worker.scratch / "x.npy"),
                                                    "output_dir": str(worker.scratch)})
            (torch_out,) = [np.load(p) for p in reply.result["outputs"]]
            session = ort.InferenceSession(str(out / "model.onnx"))
            (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x})
            assert np.abs(torch_out - onnx_out).max() <= 1e-5 * np.abs(onnx_out).max(), name


@pytest.mark.parametrize("args,message", [
    (["--precision", "fp16"], "ethos-u builds int8 (the NPU computes int8 only), not fp16"),
    (["--accelerator", "ethos-u99"], "unknown --accelerator 'ethos-u99'; ethos-u builds for ethos-u55-32,"),
    (["--accelerator", "ethos-u55-64", "--memory-mode", "Dedicated_Sram"], "ethos-u55-64 has no SRAM of its own"),
    (["--system-config", "Ethos_U85_SYS_DRAM_High"], "--system-config Ethos_U85_SYS_DRAM_High describes another "
                                                     "Ethos-U than ethos-u65-256"),
    (["--memory-mode", "Lots"], "unknown --memory-mode 'Lots'"),
    (["--batch", "2"], "ethos-u builds batch 1"),
])
def test_requests_ethos_u_cannot_honour_are_one_line(run_cli, tmp_path, args, message):
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "ethos-u", "--size", "64",
                     *args, "-o", tmp_path / "b")
    assert result.code == 2 and message in one_line_error(result)
    assert not (tmp_path / "b").exists()


def test_cpu_operators_are_read_from_velas_report_and_refused_unless_allowed():
    # vela 5.2's own lines for a TFLite ending in SOFTMAX on an Ethos-U55 (captured from a real run).
    output = ["Warning (supported operators) operator: SOFTMAX, ofm: 'serving_default_output_0_output'",
              "Warning (supported operators) operator: DEQUANTIZE, ofm: 'Wrapper;2'",
              "CPU operators = 2 (28.6%)",
              "   CPU: Passthrough = Wrapper;2 (outputs [1, 1, 1, 1568])",
              "   CPU: Passthrough = serving_default_output_0_output (outputs [1, 1, 1, 1568])",
              "   NPU: Conv2D = conv (outputs [1, 14, 14, 8])"]
    ops = cpu_operations(output)
    assert ops == [{"op": "DEQUANTIZE", "name": "Wrapper;2"},
                   {"op": "SOFTMAX", "name": "serving_default_output_0_output"}]
    settings = VelaSettings("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram", ("Softmax",))
    assert settings.refused_cpu_ops(ops) == ops[:1]
    for word in ("all", "ALL"):
        everything = VelaSettings("ethos-u55-128", "Ethos_U55_High_End_Embedded", "Shared_Sram", (word,))
        assert everything.refused_cpu_ops(ops) == []
    # Where vela cannot read its operator database it prints "CPU: N/A": still counted, never passed over.
    assert cpu_operations(["CPU operators = 1 (5.0%)", "   CPU: N/A"]) == [{"op": "unknown", "name": "N/A"}]
    with pytest.raises(VncompileError, match="vela printed no operator placement"):
        cpu_operations(["Network summary for model"])


def test_the_configurations_offered_are_velas_own(ethos_u_toolchain):
    ini = next(ethos_u_toolchain.path.rglob("ethosu/config_files/Arm/vela.ini"))
    sections = configparser.ConfigParser()
    sections.read(ini)
    assert {s.split(".", 1)[1] for s in sections.sections() if s.startswith("System_Config.")} == set(SYSTEM_CONFIGS)
    assert {s.split(".", 1)[1] for s in sections.sections() if s.startswith("Memory_Mode.")} == set(MEMORY_MODES)


def test_a_backbone_verifies_every_output_in_order(run_cli, tmp_path, ethos_u_toolchain):
    manifest = build(run_cli, tmp_path / "b", "--features", "stem,0,1,2")
    final = manifest["verification"]["stages"][-1]
    assert [o["name"] for o in final["outputs"]] == ["stem_s4", "stage0_s8", "stage1_s16", "stage2_s32"]
    assert all(o["passed"] and o["cosine"] >= 0.99 for o in final["outputs"])
