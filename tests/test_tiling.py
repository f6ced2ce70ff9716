"""--fit-memory: tiled execution of the high-resolution stages is exact, the chosen tiling meets the
budget in the analytic plan, and a budget no tiling reaches is one line."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import NARROW, one_line_error, random_network
from vncompile.core.errors import InputError
from vncompile.vanillanet.fusion import switch_to_deploy
from vncompile.vanillanet.tiling import TiledVanillaNet, Tiling, extra_macs, strip_bounds


@pytest.mark.parametrize("name", ["vanillanet_5", "vanillanet_8", "vanillanet_13"])
@pytest.mark.parametrize("height,width", [(64, 64), (96, 72), (131, 100)])  # odd sizes: uneven strips
def test_tiled_execution_is_the_same_function(name, height, width):
    net = switch_to_deploy(random_network(name, NARROW)).double().eval()
    x = torch.randn(1, 3, height, width, dtype=torch.float64)
    with torch.no_grad():
        reference = net(x)
        for stages in (0, 1, 2):
            for strips in (2, 3, 5):
                tiled = TiledVanillaNet(net, Tiling(stages, strips))(x)
                assert (tiled - reference).abs().max().item() < 1e-12, (stages, strips)


def test_strips_cover_the_rows_once():
    for rows, strips in ((128, 4), (33, 5), (3, 8)):
        bounds = strip_bounds(rows, strips)
        assert bounds[0][0] == 0 and bounds[-1][1] == rows
        assert all(a < b and b == c for (a, b), (c, _) in zip(bounds, bounds[1:], strict=False))


def test_halos_cost_extra_macs_that_grow_with_strips():
    net = switch_to_deploy(random_network("vanillanet_5", NARROW)).eval()
    costs = [extra_macs(net, Tiling(1, strips), 256, 256) for strips in (1, 2, 4, 8)]
    assert costs[0] == 0 and costs[1] < costs[2] < costs[3]


def test_tiling_refuses_what_it_cannot_do_exactly():
    with pytest.raises(InputError, match="adaptive pools or a padded stem"):
        TiledVanillaNet(switch_to_deploy(random_network("vanillanet_13_x1_5_ada_pool", NARROW)), Tiling(1, 2))
    with pytest.raises(InputError, match="runs on the fused deploy form"):
        TiledVanillaNet(random_network("vanillanet_5", NARROW), Tiling(1, 2))


def test_fit_memory_build_meets_the_budget_and_verifies(tmp_path, run_cli):
    """A budget between the untiled plan and the tiled one: the build tiles, plans under it, and its ONNX
    matches the float64 training form (fp32 verification: rel <= 1e-4), here in ONNX Runtime."""
    out = tmp_path / "b"
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "onnxruntime", "--size",
                     "512", "--fit-memory", "7MB", "-o", out, "--json")
    assert result.code == 0, result.err
    manifest = json.loads((out / "manifest.json").read_text())
    fit = manifest["model"]["fit_memory"]
    assert fit["tiling"] is not None and fit["untiled_peak_kb"] > 7168 >= fit["planned_peak_kb"]
    assert manifest["memory"]["max_kb"] <= 7168 and fit["extra_macs"] > 0
    assert manifest["verification"]["passed"]
    assert all(s["rel"] < 1e-5 for s in manifest["verification"]["stages"])


def test_a_budget_no_tiling_reaches_is_one_line(tmp_path, run_cli):
    result = run_cli("build", "--model", "vanillanet_5", "--width", NARROW, "--target", "analytic", "--size", "128",
                     "--fit-memory", "1KB", "-o", tmp_path / "b")
    assert result.code == 2
    line = one_line_error(result)
    assert "--fit-memory 1 KB: no tiling fits" in line
    assert "none lowers the planned peak below the untiled network's" in line  # the input dominates at 128
    assert not (tmp_path / "b").exists()
