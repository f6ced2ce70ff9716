"""Per-layer profiles: what ONNX Runtime's profiler, OpenVINO's performance counters and the analytic plan
report per layer, named by the network's own modules, with their sources; the memory timeline with its peak;
the file formats read back as written; and the network names a runtime's derived layer resolves to."""

from __future__ import annotations

import csv
import json

import pytest

from tests.conftest import NARROW
from vncompile.api.target import LayerRecord
from vncompile.onnxtools.blocks import Blocks
from vncompile.profiling.layer_files import (
    LAYER_COLUMNS,
    TIMELINE_COLUMNS,
    TimelineRow,
    read_layers,
    read_timeline,
    top_layers,
    write_layers,
    write_timeline,
)
from vncompile.targets.ethos_u.vela import vela_layers

SOURCES = {"onnxruntime": "measured", "openvino": "measured", "analytic": "estimated"}


@pytest.fixture(scope="module")
def layer_profile(tmp_path_factory):
    """One profile of the narrow VanillaNet-5 at 64 on the targets that run here in-process, with --layers."""
    from vncompile.cli import main

    out = tmp_path_factory.mktemp("profile") / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--models", "vanillanet_5", "--width", str(NARROW), "--sizes", "64", "--targets",
              ",".join(SOURCES), "--runs", "3", "--warmup", "1", "--layers", "--no-verify", "-o", str(out)])
    assert not exit_info.value.code
    return out, json.loads((out / "profile.json").read_text())


def test_every_targets_layers_are_named_by_the_network_with_their_source(layer_profile):
    out, doc = layer_profile
    assert doc["settings"]["layers"] is True
    for row in doc["rows"]:
        path = out / row["layers"]
        assert row["layers"] == f"layers/vanillanet_5-w0.0625-{row['target']}-fp32-64.csv"
        assert next(csv.reader(path.open())) == LAYER_COLUMNS
        records = read_layers(path)
        network = {"stem.0", "stem.1", "stages.0.conv", "stages.0.pool", "stages.1.conv", "stages.2.act", "cls.2"}
        assert network <= {r.block for r in records}, row["target"]
        assert {r.source for r in records} == {SOURCES[row["target"]]}
        if row["target"] == "analytic":
            assert all(r.memory_bytes > 0 and r.time_ms is None for r in records)
        else:
            assert all(r.time_ms is not None and r.time_ms >= 0 for r in records)
            assert {"Conv", "Convolution"} & {r.op for r in records if r.block == "stages.0.conv"}
        if row["target"] == "openvino":  # its kernels' names end in the precision they compute
            assert {r.precision for r in records if r.block == "stages.0.conv"} == {"fp32"}


def test_the_memory_timeline_marks_its_peak_and_what_is_live_there(layer_profile):
    out, doc = layer_profile
    paths = {row["timeline"] for row in doc["rows"]}
    assert paths == {"timeline/vanillanet_5-w0.0625-fp32-64.csv"}  # one per model, precision and size
    path = out / paths.pop()
    assert next(csv.reader(path.open())) == TIMELINE_COLUMNS
    steps = read_timeline(path)
    peaks = [s for s in steps if s.is_peak]
    assert len(peaks) == 1 and peaks[0].live_bytes == max(s.live_bytes for s in steps)
    # VanillaNet's peak: the first stage's 1x1 conv writing its map while the stem's is still live
    assert peaks[0].block == "stages.0.conv"
    assert sum(size for _, size in peaks[0].live_at_peak) == peaks[0].live_bytes
    assert all(not s.live_at_peak for s in steps if not s.is_peak)
    assert [s.step for s in steps] == list(range(len(steps)))
    analytic = next(row for row in doc["rows"] if row["target"] == "analytic")
    assert [r.memory_bytes for r in read_layers(out / analytic["layers"])] == [s.live_bytes for s in steps]


def test_build_layers_writes_the_builds_layer_profile(run_cli, tmp_path):
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--size", "64", "--target", "analytic",
                     "--no-verify", "--layers", "-o", tmp_path / "b")
    assert result.code == 0, result.err
    records = read_layers(tmp_path / "b" / "layer_profile.csv")
    assert records[0].block == "stem.0" and "top 5 by" in result.err
    assert (tmp_path / "b" / "layers.csv").exists() is False  # the int8 error table's name stays its own


def test_the_files_read_back_as_written(tmp_path):
    records = [LayerRecord("conv2d_2_nchwc", "stages.0.conv", "Conv", "measured", time_ms=0.25, memory_bytes=4096,
                           exec_type="CPUExecutionProvider", precision="fp32"),
               LayerRecord("Conv:node_conv2d", "stem.0", "ConvRelu", "compiler", cycles=8192)]
    write_layers(records, tmp_path / "layers" / "x.csv")
    assert read_layers(tmp_path / "layers" / "x.csv") == records
    rows = [TimelineRow(0, "node_conv2d", "stem.0", "Conv+Relu", 10, False),
            TimelineRow(1, "node_conv2d_1", "stem.1", "Conv", 30, True, (("conv2d_1", 20), ("relu", 10)))]
    write_timeline(rows, tmp_path / "t.csv")
    assert read_timeline(tmp_path / "t.csv") == rows
    assert "conv2d_1:20;relu:10" in (tmp_path / "t.csv").read_text()
    assert top_layers(records, "time") == records[:1]  # untimed layers rank by cycles only when none is timed
    assert top_layers(records[1:], "time") == records[1:]


def test_a_runtimes_derived_layer_resolves_to_the_node_it_came_from():
    blocks = Blocks({"node_conv2d_2": "stages.0.conv", "conv2d_2": "stages.0.conv", "node_conv2d": "stem.0",
                     "node_mean": "cls.0"})
    assert blocks.of("conv2d_2_nchwc") == "stages.0.conv"  # ONNX Runtime's layout pass
    assert blocks.of("node_conv2d/WithoutBiases") == "stem.0"  # OpenVINO
    assert blocks.of("node_mean#1_rs#1") == "cls.0"  # rknn
    assert blocks.of("node_conv2d_2") == "stages.0.conv"  # the longest name it starts with, not node_conv2d
    assert blocks.of("ReorderInput") == "" and blocks.of("node_conv2dx") == ""  # the runtime's own; no separator


def test_vela_rows_take_blocks_only_where_the_operators_line_up():
    def row(original, nng, name):
        return {"Original Operator": original, "NNG Operator": nng, "Name": name, "Staging Usage": "64",
                "Op Cycles": "10", "Target": "NPU"}

    rows = [row("Transpose", "Transpose", "#1"), row("Conv2D", "Conv2D", "a;1"), row("Conv2D", "Relu", "a;1"),
            row("Quantize", "Quantize", "q"), row("Mean", "DepthwiseConv2D", "m_intermediate"),
            row("Mean", "Mul", "m")]
    graph = [("Transpose", "stem.0"), ("Conv", "stem.0"), ("Relu", "stem.0"), ("ReduceMean", "cls.0")]
    records = vela_layers(rows, graph)
    assert [r.block for r in records] == ["stem.0", "stem.0", "stem.0", "cls.0", "cls.0", "cls.0"]
    assert {r.source for r in records} == {"compiler"} and records[0].cycles == 10
    assert {r.block for r in vela_layers(rows, graph[:2])} == {""}  # a Mean the graph lacks: no block claimed
