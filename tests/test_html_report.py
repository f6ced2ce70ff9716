"""report.html: written by every profile and by ``vncompile report DIR``, checked in a real headless Chromium:
it loads with no console error and no request but its own, its tables hold the profile's numbers, and its
screenshot is not blank."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tests import chromium
from tests.conftest import NARROW, one_line_error
from vncompile.cli import main
from vncompile.profiling.html_report import to_html

PROFILE = ["profile", "--models", "vanillanet_5,resnet50", "--width", str(NARROW), "--targets",
           "onnxruntime,analytic", "--sizes", "64,96", "--runs", "2", "--warmup", "1", "--no-verify"]
LAYERS_HEADER = ["order", "name", "block", "op", "time_ms", "memory_bytes", "cycles", "exec_type", "precision",
                 "source"]
TIMELINE_HEADER = ["step", "node", "block", "op", "live_bytes", "is_peak", "live_at_peak"]


@pytest.fixture(scope="session")
def profile_dir(tmp_path_factory) -> Path:
    """The cheapest real profile (two narrow models, onnxruntime measured and the analytic plan, two sizes)."""
    out = tmp_path_factory.mktemp("profile") / "out"
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        patch.setenv("VNCOMPILE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        with pytest.raises(SystemExit) as exit_info:
            main([*PROFILE, "-o", str(out)])
    assert not exit_info.value.code
    return out


def _write_csv(path: Path, header: list[str], rows: list[list[object]]) -> str:
    path.parent.mkdir(exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return f"{path.parent.name}/{path.name}"


def with_layers(profile_dir: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the profile with per-layer and timeline files for vanillanet_5 at 64, as ``--layers`` writes
    them, named from its rows."""
    out = tmp_path / "layered"
    shutil.copytree(profile_dir, out)
    doc = json.loads((out / "profile.json").read_text())
    layers = [[0, "stem.0", "stem", "Conv", "0.021", "65536", "", "brgconv_avx512", "fp32", "measured"],
              [1, "stages.0.conv", "stage 0", "Conv", "0.052", "131072", "", "jit_avx512", "fp32", "measured"],
              [2, "stages.0.pool", "stage 0", "MaxPool", "0.004", "32768", "", "", "fp32", "measured"],
              [3, "stages.1.conv", "stage 1", "Conv", "0.017", "", "", "", "fp32", "measured"]]
    timeline = [[0, "stem.0", "stem", "Conv", 65536, 0, ""],
                [1, "stages.0.conv", "stage 0", "Conv", 196608, 1, "stages.0.conv:131072;stem.0:65536"],
                [2, "stages.0.pool", "stage 0", "MaxPool", 163840, 0, ""],
                [3, "stages.1.conv", "stage 1", "Conv", 49152, 0, ""]]
    for row in doc["rows"]:
        if row["network"] == "vanillanet_5" and row["size"] == 64:
            row["layers"] = _write_csv(out / "layers" / f"vanillanet_5-{row['target']}-fp32-64.csv", LAYERS_HEADER,
                                       layers)
            row["timeline"] = _write_csv(out / "timeline" / "vanillanet_5-fp32-64.csv", TIMELINE_HEADER, timeline)
    (out / "profile.json").write_text(json.dumps(doc))
    return out, doc


class Tables(HTMLParser):
    """Every table of a page: its attributes and the text of its body's cells, row by row."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: list[tuple[dict[str, str | None], list[list[str]]]] = []
        self._cell: list[str] | None = None
        self._in_body = False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append((dict(attrs), []))
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.tables[-1][1].append([])
        elif tag == "td" and self._in_body:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.tables[-1][1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def find(self, **attrs: str) -> list[list[str]]:
        return next(rows for found, rows in self.tables if all(found.get(k) == v for k, v in attrs.items()))


@pytest.fixture(scope="module")
def browser():
    if chromium.executable() is None:
        if os.environ.get("CI"):  # CI runs the README's test command, which installs it: absent is a failure there
            pytest.fail("chromium is not installed, though CI's test command installs it")
        pytest.skip("chromium is not installed: the README's test command installs Debian's package")
    with chromium.Chromium() as instance:
        yield instance


def check_loads_alone(page, url: str) -> None:
    assert page.errors == []
    assert page.requests == [url]  # nothing fetched but the page itself: no CDN, no font, no script


def check_not_blank(png: bytes) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert pixels.shape[1] >= 1000 and pixels.shape[0] > 1000  # the whole page, not one screen
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 20  # text, tables and the charts' lines: not one colour, nor a blank page and a frame


def test_the_report_renders_the_profile_in_a_real_browser(profile_dir, tmp_path, browser, run_cli):
    layered, doc = with_layers(profile_dir, tmp_path)
    result = run_cli("report", layered)
    assert result.code == 0, result.err
    url = (layered / "report.html").as_uri()
    page = browser.load(url)
    check_loads_alone(page, url)
    check_not_blank(page.screenshot)
    (tmp_path / "report.png").write_bytes(page.screenshot)
    tables = Tables(page.dom)

    sizes = doc["settings"]["sizes"]
    for row in doc["rows"]:  # Table 1: each cell's memory, and its latency where measured
        cells = next(r for r in tables.find(**{"class": "profile", "data-target": row["target"]})
                     if r[0] == row["model"])
        text = cells[1 + sizes.index(row["size"])]
        assert f"{row['memory']['max_kb']:,.0f} KB" in text
        if row["latency"]:
            assert f"{row['latency']['median_ms']:.1f} ms" in text
    assert any("less" in cell or "more" in cell for r in tables.find(**{"class": "profile", "data-target": "analytic"})
               for cell in r[1:])  # the reduction against resnet50, as the paper reports it
    assert tables.find(**{"class": "paper"})[0] == ["resnet50", "438,737 KB", "832,733 KB", "OOM"]

    by_time = tables.find(**{"class": "layers", "data-by": "time"})
    assert [r[0] for r in by_time] == ["stages.0.conv", "stem.0", "stages.1.conv", "stages.0.pool"]
    assert by_time[0][3] == "0.052" and by_time[0][-1] == "measured"  # the figure and its source
    by_memory = tables.find(**{"class": "layers", "data-by": "memory"})
    assert [r[0] for r in by_memory] == ["stages.0.conv", "stem.0", "stages.0.pool"]  # unknown memory: not ranked
    peak = tables.find(**{"class": "peaks"})
    assert peak[0][3] == "stages.0.conv (stage 0)" and peak[0][4] == "192 KB"
    assert peak[0][5] == "stages.0.conv 128 KB, stem.0 64 KB"
    assert "peak 192 KB at stages.0.conv (stage 0)" in page.dom  # named on the timeline chart's legend
    toolchain = dict(tables.find(**{"class": "facts", "data-facts": "toolchain"}))
    assert toolchain["onnxruntime"] == doc["toolchain"]["onnxruntime"]

    plain = profile_dir / "report.html"  # the one the profile itself wrote: no --layers, so the how-to
    page = browser.load(plain.as_uri())
    check_loads_alone(page, plain.as_uri())
    text = " ".join(re.sub(r"<[^>]+>", " ", page.dom).split())
    assert "No per-layer data in this profile: run vncompile profile --layers" in text
    # Every profile plans its timelines: the peak of each model and size, named, from the profile's own files
    peaks = Tables(page.dom).find(**{"class": "peaks"})
    assert {(r[0], r[2]) for r in peaks} >= {(m, str(s)) for m in {r["model"] for r in doc["rows"]}
                                              for s in sizes}


def test_the_browser_check_catches_errors_and_outside_requests(tmp_path, browser):
    """What the test above relies on: a console error and a request for a remote file are both seen."""
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><img src="https://cdn.example.com/x.png"><script>console.error("boom")</script>'
                   "</body></html>")
    page = browser.load(bad.as_uri())
    assert "console: boom" in page.errors
    assert page.requests == [bad.as_uri(), "https://cdn.example.com/x.png"]


def test_the_report_escapes_what_it_shows_and_names_missing_files(profile_dir, tmp_path):
    doc = json.loads((profile_dir / "profile.json").read_text())
    doc["rows"][0]["model"] = "<script>alert(1)</script>"
    doc["rows"][0]["layers"] = "layers/gone.csv"
    doc["rows"][1]["timeline"] = "../../etc/passwd"
    html = to_html(doc, tmp_path)
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "layers/gone.csv: missing" in html
    assert "../../etc/passwd: outside the profile directory, not read" in html


@pytest.mark.parametrize("make,message", [
    ("empty", "is not a profile output"), ("absent", "is not a profile output"),
    ("other json", "is not a profile output"), ("old schema", "has schema 1; this vncompile reads schema 2"),
    ("cut short", "profile.json is not a whole profile (KeyError: 'settings')")])
def test_report_of_a_directory_that_is_no_profile_is_one_line(tmp_path, run_cli, make, message):
    directory = tmp_path / "dir"
    if make != "absent":
        directory.mkdir()
    documents = {"other json": {"bundles": []}, "old schema": {"schema": 1, "rows": []},
                 "cut short": {"schema": 2, "rows": [], "machine": {}}}
    if make in documents:
        (directory / "profile.json").write_text(json.dumps(documents[make]))
    result = run_cli("report", directory)
    assert result.code == 2 and message in one_line_error(result)
    assert not (directory / "report.html").exists()
