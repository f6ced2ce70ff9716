"""Shared fixtures: an isolated build cache, narrow models, and a CLI runner that keeps exit codes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from vncompile.cli import main
from vncompile.vanillanet.zoo import ModelSpec, create_model, init_random_weights

NARROW = 1 / 16  # vanillanet_5 at 1/16 width: 32..256 channels, builds in seconds


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own build cache, so no test sees another's builds."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("VNCOMPILE_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def rknn_toolchain():
    """The real rknn toolchain: CI installs it first; installing again only verifies it (and waits on a
    lock while another test worker installs it)."""
    from vncompile.toolchains import install

    return install("rknn")


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


@pytest.fixture
def run_cli(capsys):
    def run(*args: str) -> CliResult:
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(exit_info.value.code or 0, captured.out, captured.err)

    return run


def one_line_error(result: CliResult) -> str:
    """The error a failed command printed: exactly one line, starting 'error:', no traceback."""
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert "Traceback" not in result.err, result.err
    assert lines and lines[-1].startswith("error: "), result.err
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.err
    return errors[0]


def random_network(name: str = "vanillanet_5", width: float = NARROW, seed: int = 0, form: str = "train"):
    return init_random_weights(create_model(ModelSpec(name, width=width, form=form)), seed=seed)


def official_checkpoint(path: Path, network, *, epoch: int = 299, decay_epochs: int = 100, linear: bool = True,
                        ema=None, model_name: str = "vanillanet_5") -> Path:
    """A checkpoint in the layout the official training script writes (utils.save_model under DDP)."""
    import argparse

    def ddp(sd):
        return {f"module.{k}": v for k, v in sd.items()}

    args = argparse.Namespace(model=model_name, decay_epochs=decay_epochs, decay_linear=linear, lr=3.5e-3,
                              output_dir="/tmp/out", model_ema=True)
    payload = {
        "model": ddp(network.state_dict()),
        "optimizer": {"state": {0: {"step": torch.tensor(10.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "epoch": epoch,
        "scaler": {"scale": 65536.0, "growth_factor": 2.0},
        "args": args,
    }
    if ema is not None:
        payload["model_ema"] = ema.state_dict()
    torch.save(payload, path)
    return path


@pytest.fixture(scope="session")
def ethos_u_toolchain():
    """The real ethos-u toolchain (litert-torch, vela): CI installs it first, as it does rknn's."""
    from vncompile.toolchains import install

    return install("ethos-u")
