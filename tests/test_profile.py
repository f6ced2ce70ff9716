"""`vncompile profile`: isolation of failing workers, oom marking, every output format and the schema."""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import re
from pathlib import Path

import pytest

from tests.conftest import NARROW, one_line_error
from vncompile.core.units import parse_memory_size
from vncompile.profiling.profile import DEFAULT_MODELS, profilable_targets

REPO = Path(__file__).parents[1]
QUICK = ["--width", str(NARROW), "--sizes", "64,96", "--runs", "2", "--warmup", "1"]


@pytest.fixture
def installed_plugins(tmp_path, monkeypatch):
    """The test targets installed as a third-party distribution: visible to workers in other processes too."""
    import vncompile.targets as registry

    site = tmp_path / "site"
    dist = site / "vncompile_test_plugins-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vncompile-test-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[vncompile.targets]\n"
        + "".join(f"{n} = tests.plugins.third_party:{c}\n"
                  for n, c in (("copy", "CopyTarget"), ("crash", "CrashTarget"), ("hang", "HangTarget")))
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]))
    importlib.invalidate_caches()
    registry.get_target.cache_clear()
    yield
    registry.get_target.cache_clear()


def check_schema(doc: dict) -> None:
    """profile.json as documented: the machine, toolchain, settings, rows and the paper's Table 1."""
    assert doc["schema"] == 2
    assert {"cpu", "cores", "memory_gb", "gpu"} <= set(doc["machine"])
    assert isinstance(doc["toolchain"], dict) and "onnxruntime" in doc["toolchain"]
    assert doc["paper_table1"]["resnet50"] == [438737, 832733, None]
    for row in doc["rows"]:
        assert {"model", "target", "precision", "size", "batch", "status", "reason", "latency", "memory",
                "artifact_sha256"} <= set(row)
        assert row["status"] in ("ok", "oom", "error", "deferred")  # deferred: a build's own figures, unrun
        assert (row["reason"] is None) == (row["status"] == "ok")
        if row["latency"] is not None:  # the manifest's latency section, the same form
            assert {"median_ms", "mean_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "runs", "source"} <= set(
                row["latency"])
            assert row["latency"]["min_ms"] <= row["latency"]["median_ms"] <= row["latency"]["max_ms"]
        if row["memory"] is not None:  # the manifest's memory section
            assert {"max_kb", "weights_kb", "activations_kb", "source", "detail"} == set(row["memory"])
            assert row["memory"]["source"] in ("measured", "compiler", "estimated")


def test_a_crashing_or_hanging_runtime_is_one_failed_row(run_cli, installed_plugins):
    result = run_cli("profile", "--models", "vanillanet_5", "--targets", "copy,crash,hang,copy", "--timeout", "30",
                     "--format", "json", *QUICK, "--sizes", "64")
    assert result.code == 1  # reports first, then a failed exit: two cells failed
    assert "2 of 4 profile cells failed; first: vanillanet_5-w0.0625 · crash · 64" in one_line_error(result)
    doc = result.json()
    check_schema(doc)
    rows = doc["rows"]
    assert [r["target"] for r in rows] == ["copy", "crash", "hang", "copy"]
    assert rows[0]["status"] == "ok" and rows[3]["status"] == "ok"  # the profile went on after both
    assert rows[1]["status"] == "error" and "killed by SIGSEGV" in rows[1]["reason"]
    assert rows[2]["status"] == "error" and "did not answer 'build' within 30 s" in rows[2]["reason"]


def test_measurement_worker_failures_are_one_line(tmp_path, isolated_cache, installed_plugins):
    """The measuring process on its own: a crash and a hang in the runtime's load."""
    from vncompile.api.request import BuildRequest, ModelSource
    from vncompile.core.errors import VncompileError
    from vncompile.pipeline.build import cached_build
    from vncompile.pipeline.plan import resolve
    from vncompile.profiling.measure import measure

    manifest, directory, _ = cached_build(resolve(BuildRequest(ModelSource(model_name="vanillanet_5", width=NARROW),
                                                               "copy", verify=False)))
    assert measure("copy", directory, manifest, warmup=0, runs=1, timeout_s=60)["latency"]["runs"] == 1
    with pytest.raises(VncompileError, match="killed by SIGSEGV"):
        measure("crash", directory, manifest, warmup=0, runs=1, timeout_s=60)
    with pytest.raises(VncompileError, match="worker timed out after 3 s"):
        measure("hang", directory, manifest, warmup=0, runs=1, timeout_s=3)


def test_an_oom_vanillanet_row_says_whether_fit_memory_fits_it(run_cli):
    """Over the limit untiled, a VanillaNet cell is built again with --fit-memory LIMIT: the row says what
    the tiling reaches (a limit no tiling reaches gets --fit-memory's own line, the smallest peak)."""
    result = run_cli("profile", "--models", "vanillanet_5", "--width", str(NARROW), "--targets", "analytic",
                     "--sizes", "512", "--memory-limit", "7MB", "--no-verify", "--format", "json")
    row = result.json()["rows"][0]
    assert row["status"] == "oom" and result.code == 0
    fit = row["fits_with_fit_memory"]
    assert fit["fits"] and fit["tiling"]["strips"] >= 2 and fit["memory"]["max_kb"] <= 7168 < row["memory"]["max_kb"]
    assert "fits with --fit-memory 7,168KB" in row["reason"]


def test_memory_limit_marks_rows_oom(run_cli):
    result = run_cli("profile", "--models", "vanillanet_5", "--targets", "analytic", "--memory-limit", "1MB",
                     "--format", "json", *QUICK)
    rows = result.json()["rows"]
    assert [r["status"] for r in rows] == ["oom", "oom"]
    assert result.code == 0  # oom rows are findings, not failures
    progress = [line for line in result.err.splitlines() if line.startswith("[")]  # no terminal: a line per cell
    assert [re.sub(r"\d+\.\d s", "T s", line) for line in progress] == [
        "[1/2] vanillanet_5-w0.0625 · analytic · 64  T s  oom", "[2/2] vanillanet_5-w0.0625 · analytic · 96  T s  oom"]
    assert "over the 1,024 KB limit" in rows[0]["reason"]
    generous = run_cli("profile", "--models", "vanillanet_5", "--targets", "analytic", "--memory-limit", "1GB",
                       "--format", "json", *QUICK).json()
    assert [r["status"] for r in generous["rows"]] == ["ok", "ok"]


def test_every_output_format_and_the_output_directory(tmp_path, run_cli):
    args = ["profile", "--models", "resnet50,plain_cnn_50,vanillanet_5", "--targets", "analytic,onnxruntime", *QUICK]
    out = tmp_path / "profile"
    table = run_cli(*args, "-o", out)
    assert table.code == 0, table.err
    assert "paper, Table 1" in table.out and "vs resnet50" in table.out
    assert sorted(p.name for p in out.iterdir()) == ["latency.png", "memory.png", "profile.csv", "profile.json",
                                                     "profile.md", "report.html", "timeline"]
    doc = json.loads((out / "profile.json").read_text())
    check_schema(doc)
    assert len(doc["rows"]) == 3 * 2 * 2
    # the memory timeline of every model at every size, shared by the targets; no --layers: no per-layer tables
    assert len({row["timeline"] for row in doc["rows"]}) == 3 * 2 == len(list((out / "timeline").iterdir()))
    assert all(row["layers"] is None for row in doc["rows"])
    assert json.loads(run_cli(*args, "--format", "json").out)["rows"][0]["model"] == doc["rows"][0]["model"]
    rows = list(csv.DictReader(io.StringIO(run_cli(*args, "--format", "csv").out)))
    assert len(rows) == 12 and {"memory_max_kb", "latency_median_ms", "memory_source"} <= set(rows[0])
    markdown = run_cli(*args, "--format", "markdown").out
    assert "## analytic" in markdown and "## onnxruntime" in markdown and "Paper, Table 1" in markdown
    assert "18.7%" in markdown
    again = run_cli(*args, "-o", out)
    assert again.code == 2 and "--force" in one_line_error(again)
    assert run_cli(*args, "-o", out, "--force").code == 0


def test_analytic_plain_cnn_50_is_below_resnet_50(run_cli):
    doc = run_cli("profile", "--models", "resnet50,plain_cnn_50", "--targets", "analytic", "--format", "json",
                  *QUICK).json()
    memory = {(r["network"], r["size"]): r["memory"]["max_kb"] for r in doc["rows"]}
    assert all(memory[("plain_cnn_50", s)] < memory[("resnet50", s)] for s in (64, 96))


def test_measured_memory_is_the_model_not_the_toolchain(run_cli):
    doc = run_cli("profile", "--models", "vanillanet_5", "--targets", "onnxruntime", "--format", "json",
                  *QUICK).json()
    for row in doc["rows"]:
        memory = row["memory"]
        assert row["status"] == "ok" and memory["source"] == "measured"
        assert 0 < memory["max_kb"] < 64 * 1024  # a 1.3 MB model: no torch or runtime libraries counted
        assert memory["weights_kb"] == pytest.approx(1.3e3, rel=0.2)
        assert row["latency"]["runs"] == 2


def test_defaults():
    assert DEFAULT_MODELS == ("vanillanet_5", "resnet50", "plain_cnn_50")
    assert {"analytic", "onnxruntime", "openvino"} <= set(profilable_targets())
    assert "tensorrt" not in profilable_targets()  # no GPU here: nothing to measure


@pytest.mark.parametrize("text,kb", [("1.2GB", 1.2 * 1024**2), ("900MB", 900 * 1024), ("512MiB", 512 * 1024),
                                     ("2048", 2.0), ("64KB", 64), ("64kib", 64)])
def test_memory_size_parsing(text, kb):
    assert parse_memory_size(text) == pytest.approx(kb)


@pytest.mark.parametrize("args,message", [
    (["--sizes", "256,abc"], "'--sizes': must be comma-separated positive integers"),
    (["--sizes", "256,,384"], "'--sizes': must be comma-separated positive integers"),
    (["--sizes", "256,"], "'--sizes': must be comma-separated positive integers"),
    (["--memory-limit", "12XB"], "'--memory-limit': must be a memory size such as 1.2GB"),
    (["--targets", "npu9000"], "unknown target 'npu9000'"),
    (["--models", "vgg16"], "unknown model 'vgg16'"),
    (["--runs", "0"], "'--runs': must be a positive integer"),
    (["--tolerance", "fp16=rel"], "--tolerance must look like fp16=rel:3e-2"),
])
def test_bad_profile_input_is_one_line(run_cli, args, message):
    result = run_cli("profile", *args)
    assert result.code == 2 and message in one_line_error(result)


def test_parse_memory_size_rejects_zero():
    with pytest.raises(ValueError):
        parse_memory_size("0GB")
