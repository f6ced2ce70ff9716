"""The progress of a run of cells (``profile``, ``ci``): the time-left arithmetic, and the line per finished cell
that a log without a terminal gets. A fake clock: no test here depends on how fast anything runs."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from vncompile.console import CellProgress, duration_text, seconds_left


@pytest.mark.parametrize("finished,remaining,running_for,parallel,left", [
    ([], 5, (), 1, None),  # nothing finished: nothing to go by
    ([10.0, 20.0], 0, (), 1, 0.0),
    ([10.0, 20.0], 3, (), 1, 45.0),  # three more at the mean, 15 s
    ([10.0, 20.0], 3, (5.0,), 1, 40.0),  # the running one is 5 s in: 10 s of it left
    ([10.0, 20.0], 3, (40.0,), 1, 30.0),  # running past the mean: it counts as about to end, not negative
    ([10.0, 20.0], 4, (5.0, 12.0), 2, (10.0 + 3.0 + 2 * 15.0) / 2),  # two at a time
    ([0.5, 0.5, 29.0], 2, (), 1, 20.0),  # cells served from the cache took half a second, and pull the mean down
])
def test_seconds_left(finished, remaining, running_for, parallel, left):
    assert seconds_left(finished, remaining, running_for, parallel) == left


@pytest.mark.parametrize("seconds,text", [(4.24, "4.2 s"), (192, "3 min 12 s"), (3725, "1 h 02 min")])
def test_duration_text(seconds, text):
    assert duration_text(seconds) == text


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_without_a_terminal_a_line_per_finished_cell_with_its_time():
    out, clock = io.StringIO(), FakeClock()
    console = Console(file=out, force_terminal=False, width=60)
    with CellProgress("profile", 3, console=console, clock=clock) as progress:
        progress.started("vanillanet_5 · onnxruntime · 256")
        assert progress.left() is None
        clock.now += 12.5
        progress.finished("vanillanet_5 · onnxruntime · 256")
        progress.started("resnet50 · onnxruntime · 256")
        clock.now += 2.5
        assert progress.left() == pytest.approx(10.0 + 12.5)  # the running cell's rest, then one more
        progress.finished("resnet50 · onnxruntime · 256", "error")
        progress.finished("ci/cell/64", "failed", note="build failed: no converter", seconds=3725.0)
    assert out.getvalue().splitlines() == [  # one line each, never wrapped, nothing that redraws
        "[1/3] vanillanet_5 · onnxruntime · 256  12.5 s",
        "[2/3] resnet50 · onnxruntime · 256  2.5 s  error",
        "[3/3] ci/cell/64  1 h 02 min  failed: build failed: no converter"]


def test_on_a_terminal_the_bar_goes_and_the_lines_stay():
    out, clock = io.StringIO(), FakeClock()
    console = Console(file=out, force_terminal=True, width=120)
    with CellProgress("profile", 2, console=console, clock=clock) as progress:
        progress.started("a · analytic · 64")
        clock.now += 1.0
        progress.finished("a · analytic · 64")
    text = out.getvalue()
    assert "[1/2] a · analytic · 64  1.0 s" in text
