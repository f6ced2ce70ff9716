"""`vncompile inspect` and `vncompile deploy`, as a user types them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import official_checkpoint, one_line_error, random_network
from vncompile.vanillanet.checkpoint import instantiate, load_checkpoint

PAPER = json.loads((Path(__file__).parents[1] / "vncompile" / "data" / "paper_tables.json").read_text())


def test_inspect_json_matches_table4_for_vanillanet_5(run_cli):
    result = run_cli("inspect", "--model", "vanillanet_5", "--json")
    assert result.code == 0
    facts = result.json()
    assert set(facts) >= {"model", "form", "act_num", "act_learn", "train", "deploy"}
    assert (facts["model"], facts["form"], facts["act_num"]) == ("vanillanet_5", "train", 3)
    params_m, macs_g = PAPER["table4_imagenet"]["vanillanet_5"][:2]
    assert abs(facts["deploy"]["params"] / 1e6 - params_m) <= 0.1
    assert abs(facts["deploy"]["macs"] / 1e9 - macs_g) <= 0.1
    assert facts["train"]["params"] > facts["deploy"]["params"]
    assert isinstance(facts["deploy"]["params"], int) and isinstance(facts["deploy"]["macs"], int)


def test_inspect_checkpoint_reports_act_learn(tmp_path, run_cli):
    path = official_checkpoint(tmp_path / "ckpt.pth", random_network(), epoch=30, decay_epochs=100)
    facts = run_cli("inspect", path, "--json").json()
    assert facts["act_learn"]["value"] == pytest.approx(0.3) and not facts["act_learn"]["fusable"]
    assert facts["checkpoint"]["weights"] == "model" and facts["checkpoint"]["epoch"] == 30
    table = run_cli("inspect", path)
    assert table.code == 0 and "not fusable" in table.err and "deploy form" in table.err


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_deploy_writes_a_fused_checkpoint_that_reloads(tmp_path, run_cli, suffix):
    train = random_network(seed=9)
    path = official_checkpoint(tmp_path / "ckpt.pth", train, ema=train)
    out = tmp_path / f"deploy{suffix}"
    result = run_cli("deploy", path, "-o", out)
    assert result.code == 0, result.err
    ckpt = load_checkpoint(out)
    assert ckpt.spec.form == "deploy" and ckpt.spec.name == "vanillanet_5"
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(train(x), instantiate(ckpt)(x), rtol=1e-5, atol=1e-5)
    again = run_cli("deploy", path, "-o", out)
    assert again.code == 2 and "--force" in one_line_error(again)
    assert run_cli("deploy", path, "-o", out, "--force").code == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_deploy_rejects_unknown_suffix(tmp_path, run_cli):
    path = official_checkpoint(tmp_path / "ckpt.pth", random_network())
    result = run_cli("deploy", path, "-o", tmp_path / "out.onnx")
    assert result.code == 2 and ".safetensors, .pth or .pt" in one_line_error(result)


@pytest.mark.parametrize("args,message", [
    (["inspect"], "give a checkpoint or --model"),
    (["inspect", "--model", "vanillanet_99"], "unknown model 'vanillanet_99'"),
    (["inspect", "--model", "vanillanet_5", "--size", "0"], "'--size': must be a positive integer, got '0'"),
    (["inspect", "--model", "vanillanet_5", "--width", "-1"], "width must be in (0, 4]"),
    (["inspect", "--bogus"], "No such option"),
])
def test_usage_errors_are_one_line(run_cli, args, message):
    result = run_cli(*args)
    assert result.code == 2 and message in one_line_error(result)


def test_module_entry_point_prints_no_traceback(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    process = subprocess.run([sys.executable, "-m", "vncompile", "inspect", str(bad)], capture_output=True, text=True)
    assert process.returncode == 2
    assert process.stderr.strip().count("\n") == 0 and process.stderr.startswith("error: ")


def test_act_num_of_a_model_network(run_cli):
    facts = run_cli("inspect", "--model", "vanillanet_13", "--act-num", "4", "--width", "0.0625", "--json").json()
    assert facts["act_num"] == 4
    bad = run_cli("inspect", "--model", "vanillanet_5", "--act-num", "9")
    assert bad.code == 2 and "--act-num must be between 0 and 8" in one_line_error(bad)
