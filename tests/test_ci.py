"""`vncompile ci`: device configs, a small real matrix over two shards, merge, JUnit, index, determinism."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from tests.conftest import NARROW, one_line_error
from vncompile.ci.matrix import github_matrix, load_ci_config, parse_shard, select
from vncompile.core.errors import InputError
from vncompile.devices import load_device_config

REPO = Path(__file__).parents[1]
DEVICES = sorted((REPO / "configs" / "devices").glob("*.yaml"))
SMALL_DEVICES = ["x86-onnxruntime-fp32", "intel-cpu-openvino-fp32", "rk3588-npu-fp16", "jetson-orin-tensorrt-fp16"]


def write_matrix(tmp_path: Path, devices: list[str], extra: dict | None = None) -> Path:
    """A small real matrix: the repository's device configs, a narrow model, one size."""
    config = {"devices_dir": str(REPO / "configs" / "devices"),
              "models": [{"name": "vanillanet_5", "width": NARROW, "label": "v5-narrow"}],
              "devices": devices, "sizes": [96], **(extra or {})}
    path = tmp_path / "ci.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def without_timings(manifest: dict) -> dict:
    """A manifest minus what legitimately differs between runs: when, and how long."""
    stripped = {k: v for k, v in manifest.items() if k != "created"}
    stripped["stages"] = [s["name"] for s in manifest["stages"]]
    return stripped


# ---------------------------------------------------------------- device configs


def test_the_repository_configs_validate():
    names = {path.stem for path in DEVICES}
    assert {"x86-onnxruntime-fp32", "intel-cpu-openvino-fp32", "intel-cpu-openvino-fp16", "rk3588-npu-fp16",
            "rk3588-npu-int8", "rv1106-npu-int8", "jetson-orin-tensorrt-fp16", "jetson-orin-tensorrt-int8"} <= names
    for path in DEVICES:
        config = load_device_config(path)
        assert config.runner and config.sizes
    cells = load_ci_config(REPO / "configs" / "ci.yaml").cells
    assert len(cells) == len(DEVICES)


@pytest.mark.parametrize("document,message", [
    ({"target": "onnxruntime", "precision": "fp32", "sizes": [224], "runner": "x", "colour": 1},
     "unknown key 'colour'"),
    ({"target": "onnxruntime", "precision": "fp32", "sizes": [224]}, "missing field 'runner'"),
    ({"target": "onnxruntime", "precision": "fp32", "sizes": "224", "runner": "x"},
     "'sizes' must be a non-empty list of positive integers"),
    ({"target": "onnxruntime", "precision": "fp99", "sizes": [224], "runner": "x"}, "'precision' must be one of"),
    ({"target": "tpu", "precision": "fp32", "sizes": [224], "runner": "x"}, "'target' must be one of"),
    ({"target": "rknn", "precision": "fp16", "sizes": [224], "runner": "x", "options": {"platfrom": "rk3588"}},
     "options: unknown key 'platfrom'"),
    ({"target": "tensorrt", "precision": "fp16", "sizes": [224], "runner": "x", "options": {"workspace_mb": "2G"}},
     "'workspace_mb' must be a positive integer"),
    ({"target": "onnxruntime", "precision": "fp32", "sizes": [224], "runner": "x", "memory_limit": "lots"},
     "'memory_limit'"),
])
def test_config_errors_name_the_file_and_the_field(tmp_path, run_cli, document, message):
    path = tmp_path / "bad-device.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(InputError, match=message):
        load_device_config(path)
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--device", path, "-o", tmp_path / "b")
    assert result.code == 2
    line = one_line_error(result)
    assert str(path) in line and message.split("'")[1 if "'" in message else 0] in line
    assert not (tmp_path / "b").exists()


def test_invalid_yaml_is_one_line(tmp_path, run_cli):
    path = tmp_path / "broken.yaml"
    path.write_text("target: [onnxruntime\n")
    result = run_cli("build", "--model", "vanillanet_5", "--device", path)
    assert result.code == 2 and f"{path}: not valid YAML" in one_line_error(result)


def test_build_uses_a_device_config(tmp_path, run_cli):
    out = tmp_path / "b"
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--size", "96",
                     "--device", REPO / "configs" / "devices" / "intel-cpu-openvino-fp32.yaml", "-o", out)
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["target"]["name"], manifest["target"]["precision"], manifest["target"]["device"]) == (
        "openvino", "fp32", "CPU")
    assert manifest["input_shape"] == [1, 3, 96, 96]


# ---------------------------------------------------------------- the matrix


def test_shards_partition_the_cells():
    cells = load_ci_config(REPO / "configs" / "ci.yaml").cells
    for count in (1, 2, 3, len(cells) + 2):
        shards = [select(cells, shard=(i, count)) for i in range(1, count + 1)]
        ids = [c.id for shard in shards for c in shard]
        assert sorted(ids) == sorted(c.id for c in cells)  # each cell in exactly one shard
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [c.id for c in select(cells, shard=(1, 2))] == [c.id for c in select(cells, shard=(1, 2))]


def test_github_matrix_covers_every_cell_on_its_runner():
    cells = load_ci_config(REPO / "configs" / "ci.yaml").cells
    matrix = github_matrix(cells, cells_per_job=2)
    listed = [cell for job in matrix["include"] for cell in job["cells"]]
    assert sorted(listed) == sorted(c.id for c in cells)
    for job in matrix["include"]:
        built = select(cells, runner=job["runner"], shard=parse_shard(job["shard"]))
        assert [c.id for c in built] == job["cells"] and len(built) <= 2
    jetson = [job for job in matrix["include"] if "jetson-orin" in job["runs_on"]]
    assert jetson and all(c.endswith(("dynamic", "224")) for job in jetson for c in job["cells"])


def test_overrides_skip_and_change_cells(tmp_path):
    path = write_matrix(tmp_path, SMALL_DEVICES, {"overrides": [
        {"device": "intel-cpu-openvino-fp32", "skip": True},
        {"device": "x86-onnxruntime-fp32", "precision": "int8"},
    ]})
    cells = {c.device.name: c for c in load_ci_config(path).cells}
    assert "intel-cpu-openvino-fp32" not in cells
    assert cells["x86-onnxruntime-fp32"].request.precision == "int8"


@pytest.mark.parametrize("change,message", [
    ({"models": []}, "'models' must be a list"),
    ({"devices": ["no-such-device"]}, "device 'no-such-device' has no config"),
    ({"overrides": [{"device": "x", "colour": 1}]}, "overrides[0]: unknown key 'colour'"),
    ({"models": ["vanillanet_5", "vanillanet_5"]}, "two models share a label"),
    ({"models": [{"name": "vanillanet_5", "checkpoint": "x.pth"}]}, "exactly one of 'name' or 'checkpoint'"),
])
def test_matrix_errors_are_one_line(tmp_path, run_cli, change, message):
    path = write_matrix(tmp_path, SMALL_DEVICES, change)
    result = run_cli("ci", path, "-o", tmp_path / "dist")
    assert result.code == 2 and message in one_line_error(result)
    assert not (tmp_path / "dist").exists()


def test_small_matrix_over_two_shards_merge_and_determinism(tmp_path, run_cli, monkeypatch, rknn_toolchain):
    path = write_matrix(tmp_path, SMALL_DEVICES, {"overrides": [{"device": "jetson-orin-tensorrt-fp16",
                                                                 "sizes": [96, 128]}]})
    for i in (1, 2):
        result = run_cli("ci", path, "--shard", f"{i}/2", "-o", tmp_path / f"shard{i}")
        assert result.code == 0, result.err
    shard_ids = [[b["id"] for b in json.loads((tmp_path / f"shard{i}" / "index.json").read_text())["bundles"]]
                 for i in (1, 2)]
    assert not set(shard_ids[0]) & set(shard_ids[1]) and len(shard_ids[0] + shard_ids[1]) == 4
    merged = run_cli("ci", "--merge", tmp_path / "shard1", "--merge", tmp_path / "shard2", "-o", tmp_path / "dist")
    assert merged.code == 0, merged.err
    dist = tmp_path / "dist"
    index = json.loads((dist / "index.json").read_text())
    bundles = {b["device"]: b for b in index["bundles"]}
    assert set(bundles) == set(SMALL_DEVICES)
    for device, bundle in bundles.items():
        assert {"model", "device", "path", "status", "sha256"} <= set(bundle)
        assert (dist / bundle["path"] / "manifest.json").is_file() and bundle["path"].startswith(f"v5-narrow/{device}/")
    assert bundles["x86-onnxruntime-fp32"]["status"] == bundles["rk3588-npu-fp16"]["status"] == "ok"
    assert bundles["jetson-orin-tensorrt-fp16"]["status"] in ("deferred", "ok")
    suite = ET.parse(dist / "junit.xml").getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "4" and suite.get("failures") == "0"
    assert {case.get("name") for case in suite} == {"x86-onnxruntime-fp32@96", "intel-cpu-openvino-fp32@96",
                                                    "rk3588-npu-fp16@96", "jetson-orin-tensorrt-fp16@dynamic"}
    summary = (dist / "SUMMARY.md").read_text()
    assert "4/4 bundles built" in summary and summary.count("| v5-narrow |") == 4

    # The same matrix again, from an empty cache, in one go: identical bundles.
    monkeypatch.setenv("VNCOMPILE_CACHE_DIR", str(tmp_path / "second-cache"))
    again = run_cli("ci", path, "-o", tmp_path / "again")
    assert again.code == 0, again.err
    second = {b["device"]: b for b in json.loads((tmp_path / "again" / "index.json").read_text())["bundles"]}
    for device, bundle in bundles.items():
        first_dir, second_dir = dist / bundle["path"], tmp_path / "again" / second[device]["path"]
        first_manifest = json.loads((first_dir / "manifest.json").read_text())
        second_manifest = json.loads((second_dir / "manifest.json").read_text())
        assert without_timings(first_manifest) == without_timings(second_manifest), device
        for artifact in first_manifest["artifacts"]:
            if artifact["role"] != "engine":  # TensorRT engines are not reproducible (see README)
                assert (first_dir / artifact["path"]).read_bytes() == (second_dir / artifact["path"]).read_bytes()
        assert bundle["sha256"] == second[device]["sha256"]


def test_a_failing_cell_fails_the_run_but_not_the_others(tmp_path, run_cli):
    path = write_matrix(tmp_path, ["x86-onnxruntime-fp32", "intel-cpu-openvino-fp32"],
                        {"overrides": [{"device": "x86-onnxruntime-fp32", "precision": "bf16"}]})
    result = run_cli("ci", path, "--jobs", "2", "-o", tmp_path / "dist")  # two builds at a time, one cache
    assert result.code == 1
    assert "1 of 2 cells failed" in one_line_error(result) and "bf16" in one_line_error(result)
    progress = [re.fullmatch(r"\[(\d)/2\] (\S+)  \d+\.\d s(  failed: .*)?", line)  # no terminal: a line per cell
                for line in result.err.splitlines() if line.startswith("[")]
    assert sorted(m[1] for m in progress) == ["1", "2"]  # counted in the order they end
    assert {m[2]: bool(m[3]) for m in progress} == {"v5-narrow/x86-onnxruntime-fp32/96": True,
                                                   "v5-narrow/intel-cpu-openvino-fp32/96": False}
    index = json.loads((tmp_path / "dist" / "index.json").read_text())
    status = {b["device"]: b["status"] for b in index["bundles"]}
    assert status == {"x86-onnxruntime-fp32": "failed", "intel-cpu-openvino-fp32": "ok"}
    suite = ET.parse(tmp_path / "dist" / "junit.xml").getroot()
    assert suite.get("failures") == "1"
    failure = next(case for case in suite if case.find("failure") is not None)
    assert failure.get("name") == "x86-onnxruntime-fp32@96"


def test_existing_output_needs_force(tmp_path, run_cli):
    path = write_matrix(tmp_path, ["x86-onnxruntime-fp32"])
    assert run_cli("ci", path, "-o", tmp_path / "dist").code == 0
    again = run_cli("ci", path, "-o", tmp_path / "dist")
    assert again.code == 2 and "--force" in one_line_error(again)
    assert run_cli("ci", path, "-o", tmp_path / "dist", "--force").code == 0
    shutil.rmtree(tmp_path / "dist")


def test_a_cell_for_a_device_this_host_is_not_builds_and_verifies_what_it_can(tmp_path, run_cli):
    """The shipped fp16 OpenVINO cell (fp16 weights for a Sapphire Rapids CPU) on any x86 runner: where the CPU
    has no fp16 arithmetic the IR is verified computing in f32 and the manifest says so; the run passes. A build
    for this host's own CPU (build --device) still refuses a precision it cannot compute."""
    from vncompile.targets.openvino import has_arithmetic

    assert all(cell.request.cross for cell in load_ci_config(REPO / "configs" / "ci.yaml").cells)
    path = write_matrix(tmp_path, ["intel-cpu-openvino-fp16"])
    result = run_cli("ci", path, "-o", tmp_path / "dist")
    assert result.code == 0, result.err
    index = {b["device"]: b for b in json.loads((tmp_path / "dist" / "index.json").read_text())["bundles"]}
    assert {b["status"] for b in index.values()} == {"ok"}
    bundle = tmp_path / "dist" / index["intel-cpu-openvino-fp16"]["path"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["verification"]["passed"] and 'element_type="f16"' in (bundle / "model.xml").read_text()
    facts = manifest["target"]["facts"]
    assert facts["inference_precision_hint"] == "f16"  # what the device runs (load_model.py applies it)
    if has_arithmetic("fp16"):
        assert "verified_here" not in facts and index["intel-cpu-openvino-fp16"]["reason"] is None
    else:
        assert facts["verified_here"] == {"device": "CPU", "inference_precision_hint": "f32"}
        assert manifest["notice"] == index["intel-cpu-openvino-fp16"]["reason"]
        assert "verified on its CPU computing in f32" in manifest["notice"]
        assert "verified on its CPU computing in f32" in (tmp_path / "dist" / "SUMMARY.md").read_text()
        direct = run_cli("build", "--model", "vanillanet_5", "--width", str(NARROW), "--device",
                         REPO / "configs" / "devices" / "intel-cpu-openvino-fp16.yaml", "--size", "96",
                         "-o", tmp_path / "here")
        assert direct.code == 2 and "has no fp16 arithmetic" in one_line_error(direct)
