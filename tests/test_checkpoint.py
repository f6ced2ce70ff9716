"""Checkpoint loading: every accepted layout, inference from tensors, every bad file, the act_learn guard."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import NARROW, official_checkpoint, one_line_error, random_network
from vncompile.core.errors import CheckpointError
from vncompile.vanillanet.checkpoint import act_learn_from_schedule, instantiate, load_checkpoint
from vncompile.vanillanet.fusion import switch_to_deploy


def outputs_match(a, b, x=None, tolerance=1e-5) -> bool:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) if x is None else x
    with torch.no_grad():
        ya, yb = a(x), b(x)
    return ((ya - yb).abs().max() / ya.abs().max()).item() <= tolerance


# ---------------------------------------------------------------- accepted layouts


def test_official_training_checkpoint_prefers_ema_and_fuses_exactly(tmp_path):
    model, ema = random_network(seed=1), random_network(seed=2)
    path = official_checkpoint(tmp_path / "checkpoint-299.pth", model, ema=ema)
    ckpt = load_checkpoint(path)
    assert ckpt.weights_key == "model_ema" and ckpt.epoch == 299
    assert (ckpt.spec.name, ckpt.spec.width, ckpt.spec.form, ckpt.spec.act_num, ckpt.spec.num_classes) == (
        "vanillanet_5", NARROW, "train", 3, 1000)
    assert ckpt.act_learn.value == 1.0 and ckpt.act_learn.source == "schedule"
    loaded = instantiate(ckpt)
    assert outputs_match(ema, loaded, tolerance=0)
    assert outputs_match(loaded, switch_to_deploy(loaded))


def test_weights_model_selects_the_raw_weights(tmp_path):
    model, ema = random_network(seed=1), random_network(seed=2)
    path = official_checkpoint(tmp_path / "ckpt.pth", model, ema=ema)
    ckpt = load_checkpoint(path, weights="model")
    assert ckpt.weights_key == "model"
    assert outputs_match(model, instantiate(ckpt), tolerance=0)


def test_weights_model_ema_missing_is_an_error(tmp_path):
    path = official_checkpoint(tmp_path / "ckpt.pth", random_network())
    with pytest.raises(CheckpointError, match="no 'model_ema' weights"):
        load_checkpoint(path, weights="model_ema")


def test_deploy_checkpoint_bare_state_dict_and_safetensors(tmp_path):
    fused = switch_to_deploy(random_network("vanillanet_6", seed=4))
    torch.save({"model": fused.state_dict()}, tmp_path / "deploy.pth")
    torch.save(fused.state_dict(), tmp_path / "bare.pth")
    save_file({k: v.contiguous() for k, v in fused.state_dict().items()}, str(tmp_path / "deploy.safetensors"))
    for name in ("deploy.pth", "bare.pth", "deploy.safetensors"):
        ckpt = load_checkpoint(tmp_path / name)
        assert (ckpt.spec.name, ckpt.spec.form) == ("vanillanet_6", "deploy")
        assert ckpt.act_learn.fusable
        assert outputs_match(fused, instantiate(ckpt), tolerance=0)


def test_legacy_release_with_three_layer_deploy_stem_is_folded(tmp_path):
    train = random_network(seed=6)
    fused = switch_to_deploy(train)
    sd = fused.state_dict()
    # The early release kept the stem's 4x4 conv and 1x1 conv apart: split ours into such a pair.
    c = sd["stem.0.weight"].shape[0]
    legacy = {k: v for k, v in sd.items() if not k.startswith("stem.")}
    legacy.update({"stem.0.weight": sd["stem.0.weight"], "stem.0.bias": sd["stem.0.bias"] - 1.0,
                   "stem.1.weight": torch.eye(c).reshape(c, c, 1, 1), "stem.1.bias": torch.ones(c),
                   "stem.2.weight": sd["stem.1.weight"], "stem.2.bias": sd["stem.1.bias"]})
    torch.save({"model": legacy}, tmp_path / "legacy.pth")
    ckpt = load_checkpoint(tmp_path / "legacy.pth")
    assert ckpt.notes and outputs_match(fused, instantiate(ckpt))


def test_resnet_checkpoints_in_torchvision_layout(tmp_path):
    torch.save(random_network("resnet50", 1.0).state_dict(), tmp_path / "r50.pth")
    torch.save(random_network("plain_cnn_50", 0.25).state_dict(), tmp_path / "plain.pth")
    assert load_checkpoint(tmp_path / "r50.pth").spec.name == "resnet50"
    plain = load_checkpoint(tmp_path / "plain.pth").spec
    assert (plain.name, plain.width) == ("plain_cnn_50", 0.25)


def test_variant_inference_for_every_depth(tmp_path):
    for name in ("vanillanet_8", "vanillanet_10", "vanillanet_13"):
        torch.save(random_network(name).state_dict(), tmp_path / "x.pth")
        assert load_checkpoint(tmp_path / "x.pth").spec.name == name


def test_act_num_and_num_classes_are_inferred(tmp_path):
    from vncompile.vanillanet.archs import ModelSpec
    from vncompile.vanillanet.zoo import create_model

    network = create_model(ModelSpec("vanillanet_5", width=NARROW, act_num=4, num_classes=80))
    torch.save(network.state_dict(), tmp_path / "det.pth")
    spec = load_checkpoint(tmp_path / "det.pth").spec
    assert (spec.act_num, spec.num_classes) == (4, 80)


def test_ada_pool_weights_need_a_hint(tmp_path):
    """x1_5 and x1_5_ada_pool have identical tensors; only pooling differs."""
    sd = switch_to_deploy(random_network("vanillanet_13_x1_5", 1 / 24)).state_dict()
    # at a narrow width both map to other names too; exact-width ambiguity is what matters
    from vncompile.vanillanet.checkpoint import _match_variant

    dims = (768, 768, 1536, 3072, 3072, 3072, 3072, 3072, 3072, 3072, 6144, 6144)
    with pytest.raises(CheckpointError, match="pass --model"):
        _match_variant(dims, [])
    assert _match_variant(dims, ["vanillanet_13_x1_5_ada_pool"])[0] == "vanillanet_13_x1_5_ada_pool"
    # a file named after the variant, as the official release names them, is enough
    torch.save(sd, tmp_path / "vanillanet_13_x1_5_ada_pool.pth")
    assert load_checkpoint(tmp_path / "vanillanet_13_x1_5_ada_pool.pth").spec.name.startswith("vanillanet_13")


# ---------------------------------------------------------------- the act_learn guard


@pytest.mark.parametrize("epoch,decay,linear,expected", [
    (50, 100, True, 0.5), (100, 100, True, 1.0), (101, 100, True, 1.0), (299, 100, True, 1.0),
    (50, 100, False, 0.5), (25, 100, False, 0.5 * (1 - 0.7071067811865476)), (0, 100, True, 0.0),
])
def test_act_learn_schedule(epoch, decay, linear, expected):
    assert act_learn_from_schedule(epoch, decay, linear) == pytest.approx(expected)


def test_mid_schedule_checkpoint_is_not_fusable(tmp_path):
    path = official_checkpoint(tmp_path / "checkpoint-49.pth", random_network(), epoch=49, decay_epochs=100)
    ckpt = load_checkpoint(path)
    assert ckpt.act_learn.value == pytest.approx(0.49) and not ckpt.act_learn.fusable
    assert instantiate(ckpt).act_learn == pytest.approx(0.49)


def test_cli_refuses_to_fuse_mid_schedule_and_writes_nothing(tmp_path, run_cli):
    path = official_checkpoint(tmp_path / "checkpoint-49.pth", random_network(), epoch=49, decay_epochs=100)
    out = tmp_path / "deploy.safetensors"
    result = run_cli("deploy", path, "-o", out)
    assert result.code == 1
    line = one_line_error(result)
    assert "act_learn 0.49" in line and "--act-learn" in line
    assert not out.exists() and list(tmp_path.iterdir()) == [path]
    build = run_cli("build", path, "--target", "onnxruntime", "-o", tmp_path / "b")
    assert build.code == 1 and "act_learn 0.49" in one_line_error(build)
    assert not (tmp_path / "b").exists()


# ---------------------------------------------------------------- bad files


class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def bad_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = io.BytesIO()
    torch.save({"model": random_network().state_dict()}, good)
    data = good.getvalue()
    marker = tmp_path / "pwned"
    files = {
        "pickled callable": ({"model": Exploit(marker)}, "refusing to load: it pickles"),
        "empty": (b"", "empty"),
        "truncated": (data[: len(data) // 2], "truncated"),
        "text": (b"this is not a checkpoint\n", "not a checkpoint"),
        "not a dict": ([1, 2, 3], "not a checkpoint"),
        "no state dict": ({"epoch": 3, "args": None}, "no state_dict"),
        "another architecture": ({"encoder.weight": torch.zeros(3, 3), "decoder.bias": torch.zeros(3)},
                                 "not a VanillaNet or ResNet-50 checkpoint"),
        "missing keys": ({k: v for k, v in random_network().state_dict().items() if "stages.1.conv2" not in k},
                         "missing keys stages.1.conv2"),
        "unexpected keys": ({**random_network().state_dict(), "extra.weight": torch.zeros(1)},
                            "unexpected keys extra.weight"),
    }
    paths = {}
    for name, (content, message) in files.items():
        path = tmp_path / (name.replace(" ", "_") + ".pth")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path)
        paths[name] = (path, message)
    zip_path = tmp_path / "archive.pth"
    with zipfile.ZipFile(zip_path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    paths["zip, not torch"] = (zip_path, "not a torch checkpoint")
    return paths


def test_bad_checkpoints_raise_one_line_errors(tmp_path):
    for name, (path, message) in bad_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert message in str(info.value), name
        assert "\n" not in str(info.value) and str(path) in str(info.value), name
    assert not (tmp_path / "pwned").exists(), "a pickled callable was executed"


@pytest.mark.parametrize("command", ["inspect", "build", "deploy"])
def test_cli_bad_checkpoints_exit_2_with_one_line_and_write_nothing(tmp_path, run_cli, command):
    cases = bad_checkpoints(tmp_path)
    cases["missing file"] = (tmp_path / "nope.pth", "no such checkpoint file")
    out = tmp_path / "out"
    for name, (path, message) in cases.items():
        extra = {"inspect": [], "build": ["--target", "onnxruntime", "-o", out],
                 "deploy": ["-o", out.with_suffix(".pth")]}[command]
        result = run_cli(command, path, *extra)
        assert result.code == 2, (name, result.err)
        assert message in one_line_error(result), name
        assert not out.exists() and not out.with_suffix(".pth").exists()
    assert not (tmp_path / "pwned").exists()
