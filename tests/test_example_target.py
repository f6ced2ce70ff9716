"""The third-party target API as a package author uses it: examples/vncompile-target-example, installed with pip
into a folder of its own, found through its entry point, its own option on the command line and in a device config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import NARROW

ROOT = Path(__file__).parents[1]
EXAMPLE = ROOT / "examples" / "vncompile-target-example"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(site), str(EXAMPLE)], check=True, capture_output=True)
    return site


def vncompile(site: Path, *args: object) -> subprocess.CompletedProcess:
    """vncompile in a new process with the example package on its path, as after `pip install`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    return subprocess.run([sys.executable, "-c", "from vncompile.cli import main; main()", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600)


def test_an_installed_target_package_is_listed_and_builds_with_its_own_option(installed, tmp_path):
    rows = {row["name"]: row for row in json.loads(vncompile(installed, "targets", "--json").stdout)}
    assert rows["ort-offline"]["available"] and rows["ort-offline"]["description"].startswith("ONNX Runtime graph")
    help_text = vncompile(installed, "build", "--help").stdout
    assert "--ort-level" in help_text and "ort-offline: the graph optimization level" in help_text

    model = ("--model", "vanillanet_5", "--width", NARROW, "--size", "64")
    built = vncompile(installed, "build", *model, "--target", "ort-offline", "--ort-level", "all", "-o", tmp_path / "a")
    assert built.returncode == 0, built.stderr
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["target"]["facts"]["ort_level"] == "all" and manifest["verification"]["passed"]
    assert [a["path"] for a in manifest["artifacts"] if a["primary"]] == ["model.ort.onnx"]

    other = vncompile(installed, "build", *model, "--target", "ort-offline", "--ort-level", "basic", "-o",
                      tmp_path / "b")
    assert other.returncode == 0, other.stderr  # its option keys the build: not served the level-all entry
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["target"]["facts"]["ort_level"] == "basic"

    refused = vncompile(installed, "build", *model, "--target", "onnxruntime", "--ort-level", "all")
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1] == "error: --ort-level does not apply to --target onnxruntime"
    bad = vncompile(installed, "build", *model, "--target", "ort-offline", "--ort-level", "maximal")
    assert bad.returncode == 2 and "is not one of" in bad.stderr.strip().splitlines()[-1]

    config = tmp_path / "ort.yaml"
    config.write_text("target: ort-offline\nprecision: fp32\nsizes: [64]\nrunner: ubuntu-latest\n"
                      "options: {ort_level: basic}\n")
    from_config = vncompile(installed, "build", "--model", "vanillanet_5", "--width", NARROW, "--device", config,
                            "-o", tmp_path / "c")
    assert from_config.returncode == 0, from_config.stderr
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["cache_key"] == json.loads(
        (tmp_path / "b" / "manifest.json").read_text())["cache_key"]  # the same build, however it was asked for
