"""The analytic memory planner on graphs whose peak is known by hand."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vncompile.core.errors import InputError
from vncompile.onnxtools.memory_plan import TensorLife, best_fit_arena, plan_memory

MAP = 1 * 4 * 8 * 8 * 4  # bytes of one 1x4x8x8 float32 map: 1024


def graph(nodes, inputs=("x",), outputs=("y",), initializers=(), shape=(1, 4, 8, 8), elem=TensorProto.FLOAT):
    value = lambda name: helper.make_tensor_value_info(name, elem, list(shape))  # noqa: E731
    g = helper.make_graph(nodes, "g", [value(i) for i in inputs], [value(o) for o in outputs],
                          initializer=list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def relu(a, b):
    return helper.make_node("Relu", [a], [b], name=f"relu_{b}")


def test_chain_peaks_at_one_input_plus_one_output():
    model = graph([relu("x", "a"), relu("a", "b"), relu("b", "y")])
    plan = plan_memory(model)
    assert plan.peak_live_bytes == 2 * MAP  # each step: its input and its output
    assert plan.arena_bytes == 2 * MAP  # two buffers ping-pong
    assert plan.weight_bytes == 0 and plan.steps == 3


def test_residual_block_keeps_its_input_alive():
    residual = graph([relu("x", "a"), relu("a", "b"), helper.make_node("Add", ["x", "b"], ["y"], name="add")])
    plain = graph([relu("x", "a"), relu("a", "b"), relu("b", "y")])
    with_shortcut, without = plan_memory(residual), plan_memory(plain)
    assert with_shortcut.peak_live_bytes == 3 * MAP  # x stays live next to a and b
    assert with_shortcut.arena_bytes == 3 * MAP
    assert without.peak_live_bytes == 2 * MAP
    assert "x" in dict(with_shortcut.live_at_peak)
    assert 1 - without.arena_bytes / with_shortcut.arena_bytes == pytest.approx(1 / 3)


def test_weights_and_precision_resizing():
    weight = numpy_helper.from_array(np.zeros((4, 4, 3, 3), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")
    model = graph([conv], initializers=[weight])
    fp32, fp16, int8, int16 = (plan_memory(model, p) for p in ("fp32", "fp16", "int8", "int16"))
    assert fp32.weight_bytes == 4 * 4 * 9 * 4 and fp32.arena_bytes == 2 * MAP
    assert fp16.weight_bytes == fp32.weight_bytes // 2 and fp16.arena_bytes == MAP
    assert int8.arena_bytes == MAP // 2 and int8.weight_bytes == fp32.weight_bytes // 4
    # int16: 16-bit activations (2 bytes each, as fp16's) with 8-bit weights (1 byte, as int8's)
    assert int16.arena_bytes == fp16.arena_bytes and int16.weight_bytes == int8.weight_bytes
    assert fp32.total_bytes == fp32.weight_bytes + fp32.arena_bytes


def test_branches_share_the_arena_when_lifetimes_do_not_overlap():
    # x -> a -> b ; then b -> c -> y: a and c never live together, so c may reuse a's offset.
    model = graph([relu("x", "a"), relu("a", "b"), relu("b", "c"), relu("c", "y")])
    assert plan_memory(model).arena_bytes == 2 * MAP


def test_best_fit_arena_never_overlaps_tensors_alive_together():
    rng = np.random.default_rng(0)
    lives = []
    for i in range(60):
        first = int(rng.integers(0, 40))
        lives.append(TensorLife(f"t{i}", int(rng.integers(1, 100)) * 16, first, first + int(rng.integers(0, 8))))
    arena, offsets = best_fit_arena(lives)
    for a in lives:
        for b in lives:
            if a.name < b.name and a.first <= b.last and b.first <= a.last:
                a0, b0 = offsets[a.name], offsets[b.name]
                assert a0 + a.bytes <= b0 or b0 + b.bytes <= a0
            assert offsets[a.name] + a.bytes <= arena
    peak = max(sum(t.bytes for t in lives if t.first <= s <= t.last) for s in range(50))
    assert peak <= arena <= sum(t.bytes for t in lives)


def test_best_fit_arena_takes_the_smallest_hole_and_leaves_holes_a_larger_tensor_cannot_use():
    # x and a are placed at step 0; b cannot use x's freed byte and goes on top; when a dies, the 5 bytes
    # below b are free but too few for c, which goes on top again (rknn's compiler allocates so).
    lives = [TensorLife("x", 1, 0, 0), TensorLife("a", 4, 0, 1), TensorLife("b", 4, 1, 2), TensorLife("c", 8, 2, 3)]
    arena, offsets = best_fit_arena(lives)
    assert offsets == {"x": 0, "a": 1, "b": 5, "c": 9}
    assert arena == 17  # the live peak is 12 (b and c): the 5 bytes below b are a hole too small for c
    small = [TensorLife("x", 8, 0, 0), TensorLife("y", 2, 0, 0), TensorLife("z", 2, 1, 1)]
    assert best_fit_arena(small)[1]["z"] == 0  # the freed 10 bytes coalesce; z goes to their start


def test_a_conv_absorbs_the_activation_and_residual_add_only_it_feeds():
    weight = numpy_helper.from_array(np.zeros((4, 4, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"), relu("c1", "r1"),
             helper.make_node("Conv", ["r1", "w"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c2", "x"], ["s"], name="add"), relu("s", "y")]
    fused = plan_memory(graph(nodes, initializers=[weight]))
    assert fused.steps == 2  # ConvRelu, then ConvAddRelu: x, r1 and y are the only maps
    assert fused.peak_live_bytes == 3 * MAP  # conv2 reads r1 and x and writes y
    shared = [helper.make_node("Conv", ["x", "w"], ["c1"], name="conv1"), relu("c1", "a"),
              helper.make_node("Add", ["c1", "a"], ["y"], name="add")]
    assert plan_memory(graph(shared, initializers=[weight])).steps == 3  # c1 feeds two ops: nothing fused


def test_dynamic_shapes_are_refused():
    model = graph([relu("x", "y")], shape=("N", 4, 8, 8))
    with pytest.raises(InputError, match="static shapes"):
        plan_memory(model)


def test_shortcuts_cost_memory_in_real_resnet50_graphs(tmp_path):
    """ResNet-50 peaks at a projection shortcut's add; plain-CNN-50 holds only one map in and one out."""
    from tests.conftest import random_network
    from vncompile.api.request import InputShape
    from vncompile.pipeline.families import family_of
    from vncompile.pipeline.stages import LoadedModel, export_onnx
    from vncompile.vanillanet.archs import ModelSpec
    from vncompile.vanillanet.checkpoint import ActLearn

    plans = {}
    for name in ("resnet50", "plain_cnn_50"):
        net = random_network(name, 0.25).eval()
        spec = ModelSpec(name, 0.25)
        loaded = LoadedModel(spec, net, ActLearn(1.0, "untrained", ""), None, family_of(spec, ()))
        path = export_onnx(loaded, InputShape(1, 3, 128, 128), tmp_path / f"{name}.onnx", opset=18, dynamic=False)
        plans[name] = plan_memory(onnx.load(str(path)))
    resnet, plain = plans["resnet50"], plans["plain_cnn_50"]
    assert plain.arena_bytes < resnet.arena_bytes
    assert any(name in dict(resnet.live_at_peak) for name in ("max_pool2d", "relu_3"))  # a shortcut's map
