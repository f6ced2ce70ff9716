"""The model zoo: variant table vs Table 4, exact deploy fusion, backbone mode, baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import NARROW, random_network
from vncompile.core.errors import FusionError
from vncompile.vanillanet.archs import MODEL_NAMES, VARIANTS, ModelSpec, min_input_size
from vncompile.vanillanet.complexity import complexity
from vncompile.vanillanet.fusion import switch_to_deploy
from vncompile.vanillanet.model import AdaptiveMaxPool2d, VanillaNet

PAPER = json.loads((Path(__file__).parents[1] / "vncompile" / "data" / "paper_tables.json").read_text())


def max_rel_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return ((reference - other).abs().max() / reference.abs().max()).item()


def test_all_eleven_variants_are_in_the_table():
    assert len(VARIANTS) == 11
    assert set(VARIANTS) | {"resnet50", "plain_cnn_50"} == set(MODEL_NAMES)


@pytest.mark.parametrize("name", [*VARIANTS, "resnet50"])
def test_deploy_params_and_macs_match_table4(name):
    params_m, macs_g = PAPER["table4_imagenet"][name][:2]
    counted = complexity(ModelSpec(name, form="deploy"), 224)
    assert abs(counted.params / 1e6 - params_m) <= 0.1
    assert abs(counted.macs / 1e9 - macs_g) <= 0.1


@pytest.mark.parametrize("name", [*VARIANTS, "resnet50", "plain_cnn_50"])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_fusion_is_exact(name, dtype, tolerance):
    network = random_network(name, NARROW, seed=3).to(dtype)
    fused = switch_to_deploy(network)
    x = torch.randn(2, 3, 224, 224, dtype=dtype, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert max_rel_error(network(x), fused(x)) <= tolerance


def test_fusion_is_exact_for_full_width_vanillanet_5():
    network = random_network("vanillanet_5", 1.0, seed=5)
    fused = switch_to_deploy(network)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert max_rel_error(network(x), fused(x)) <= 1e-5


def test_fusion_returns_a_fresh_contiguous_deploy_model_and_leaves_the_original_alone():
    network = random_network()
    before = {k: v.clone() for k, v in network.state_dict().items()}
    fused = switch_to_deploy(network)
    assert fused is not network and fused.deploy and not network.deploy
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
    assert all(p.is_contiguous() for p in fused.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert not any(k.startswith(("stem1", "stem2", "cls1", "cls2")) or ".conv1." in k for k in fused.state_dict())


def test_bn_statistics_are_non_trivial_in_the_fusion_tests():
    network = random_network()
    bn = network.stages[0].conv1[1]
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_fusion_refuses_when_act_learn_is_below_one():
    network = random_network()
    network.set_act_learn(0.5)
    with pytest.raises(FusionError, match="act_learn is 0.5"):
        switch_to_deploy(network)


def test_act_learn_zero_point_five_changes_the_function():
    network = random_network()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y1 = network(x)
        network.set_act_learn(0.5)
        y2 = network(x)
    assert not torch.allclose(y1, y2)


def test_features_only_returns_stem_and_stage_maps():
    arch = ModelSpec("vanillanet_5", width=NARROW).arch()
    backbone = VanillaNet(arch, features_only=True).eval()
    features = backbone(torch.randn(1, 3, 640, 640))
    assert [f.shape[1] for f in features] == list(arch.dims)  # the seed post's width_list
    assert [f.shape[-1] for f in features] == [160, 80, 40, 20]
    chosen = VanillaNet(arch, features_only=True, out_indices=(1, 3)).eval()(torch.randn(1, 3, 640, 640))
    assert [f.shape[-1] for f in chosen] == [80, 20]
    assert not hasattr(backbone, "cls1")


def test_features_only_fuses_exactly():
    arch = ModelSpec("vanillanet_7", width=NARROW).arch()
    from vncompile.vanillanet.zoo import init_random_weights

    backbone = init_random_weights(VanillaNet(arch, features_only=True).eval(), seed=2)
    fused = switch_to_deploy(backbone)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        for a, b in zip(backbone(x), fused(x), strict=True):
            assert max_rel_error(a, b) <= 1e-5


@pytest.mark.parametrize("size_in,size_out", [(75, 38), (38, 19), (19, 10), (20, 10), (7, 10), (1, 3), (171, 38)])
def test_exportable_adaptive_max_pool_is_exact(size_in, size_out):
    x = torch.randn(2, 3, size_in, size_in + 5)
    assert torch.equal(AdaptiveMaxPool2d(size_out)(x), F.adaptive_max_pool2d(x, size_out))


def test_minimum_input_sizes():
    assert min_input_size(ModelSpec("vanillanet_5")) == 32  # stem /4, then three 2x pools
    assert min_input_size(ModelSpec("vanillanet_13_x1_5_ada_pool")) == 2
    network = random_network("vanillanet_5")
    network(torch.randn(1, 3, 32, 32))
    with pytest.raises(RuntimeError):
        network(torch.randn(1, 3, 28, 28))


def test_plain_cnn_50_is_resnet_50_without_any_shortcut():
    resnet, plain = random_network("resnet50", 1.0), random_network("plain_cnn_50", 1.0)
    resnet_keys, plain_keys = set(resnet.state_dict()), set(plain.state_dict())
    assert plain_keys < resnet_keys
    assert {k.split(".downsample.")[0] for k in resnet_keys - plain_keys} == {f"layer{i}.0" for i in range(1, 5)}
    assert not any(block.shortcut for block in plain.modules() if hasattr(block, "shortcut"))


def test_resnet50_uses_torchvision_layout():
    keys = set(random_network("resnet50", 1.0).state_dict())
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight",
                "fc.weight"):
        assert key in keys
    assert len([k for k in keys if k.endswith("num_batches_tracked")]) == 53
