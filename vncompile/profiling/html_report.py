"""``report.html``: one self-contained page per profile, from its ``profile.json`` and the files beside it.

Self-contained so it can be mailed, attached to a CI run or opened offline: the styles are
inline, the charts inline SVG drawn here, there is no script, and a Content-Security-Policy
forbids the page any request at all. The tables reuse the paper-style rows of ``reports``;
every figure keeps its source label (measured / compiler / estimated); a model keeps one
colour across the whole page. Everything taken from the profile is escaped.

The per-layer tables and the memory timelines come from ``layers/*.csv`` and
``timeline/*.csv`` (``profile --layers``), which rows name relative to the profile
directory; a profile without them gets the section's how-to instead.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from ..core.errors import InputError
from ..core.io import atomic_file
from ..core.units import KB_PER, kb
from . import layer_files
from .reports import PROFILE_SCHEMA, blocks, cell_label, is_profile_output, paper_rows, peak_notes, sources, table_rows
from .svg_charts import PALETTE, Series, line_chart

REPORT = "report.html"
TOP_LAYERS = 5
POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"  # no request leaves the page

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 0 auto;
       max-width: 1400px; padding: 0 24px 48px; background: #fff; }
h1 { margin: 20px 0 4px; } h2 { margin-top: 36px; border-bottom: 2px solid #ddd; padding-bottom: 4px; }
nav a { margin-right: 14px; } .sub, .source, .howto { color: #555; }
.source { font-size: 12px; font-style: italic; }
table { border-collapse: collapse; margin: 8px 0 18px; }
th, td { padding: 3px 10px; border-bottom: 1px solid #e4e4e4; text-align: right; vertical-align: top; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; white-space: nowrap; }
table.facts td, table.cells td, table.cells th, table.peaks td, table.peaks th { text-align: left; }
table.layers td:nth-child(-n+3), table.layers th:nth-child(-n+3) { text-align: left; }
tr.italic td { font-style: italic; color: #555; }
caption { caption-side: bottom; text-align: left; font-size: 12px; color: #555; font-style: italic; padding-top: 3px; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px; margin-right: 6px; }
.charts { display: flex; flex-wrap: wrap; gap: 12px 28px; }
.chart text { font: 12px system-ui, sans-serif; fill: #222; } .chart .title { font-weight: 600; font-size: 13px; }
.chart .tick { fill: #555; font-size: 11px; } .chart .note { fill: #555; }
.chart .grid { stroke: #e8e8e8; } .chart .axis { stroke: #888; }
.bar { display: inline-block; height: 9px; border-radius: 2px; margin-right: 6px; vertical-align: middle; }
.cell { margin: 10px 0 22px; } .cell h3 { margin: 0 0 2px; font-size: 15px; }
.pair { display: flex; flex-wrap: wrap; gap: 0 28px; }
code { background: #f4f4f4; padding: 1px 4px; border-radius: 3px; }
"""


# ---------------------------------------------------------------- the per-layer files (profile --layers)


def read_layers(path: Path) -> list[dict[str, Any]]:
    """``layers/<cell>.csv`` (``layer_files``), a dict per layer in execution order: an unknown figure is None."""
    return [{"order": i, **record.as_dict()} for i, record in enumerate(layer_files.read_layers(path))]


def read_timeline(path: Path) -> list[dict[str, Any]]:
    """``timeline/<model>-<precision>-<size>.csv`` (``layer_files``): live bytes at each step; the peak row names
    what is live."""
    return [dataclasses.asdict(row) for row in layer_files.read_timeline(path)]


def _linked(directory: Path, row: dict[str, Any], key: str,
            reader: Callable[[Path], list[dict[str, Any]]]) -> tuple[list[dict[str, Any]] | None, str | None]:
    """The file a row names under ``key``, read: (its rows, None), (None, why not), or (None, None) if none."""
    name = row.get(key)
    if not name:
        return None, None
    path = (directory / name).resolve()
    if not path.is_relative_to(directory.resolve()):
        return None, f"{name}: outside the profile directory, not read"
    try:
        return reader(path), None
    except FileNotFoundError:
        return None, f"{name}: missing"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{name}: unreadable ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------- helpers


def model_colours(doc: dict[str, Any]) -> dict[str, str]:
    """A colour per model label, in the order the rows came, the same in every table and chart."""
    models = list(dict.fromkeys(row["model"] for row in doc["rows"]))
    return {model: PALETTE[i % len(PALETTE)] for i, model in enumerate(models)}


def _swatch(colour: str) -> str:
    return f'<span class="swatch" style="background:{colour}"></span>'


def _memory_unit(largest_kb: float) -> tuple[float, str]:
    """(KB per unit, unit): MB from a megabyte up, so a chart's ticks stay short."""
    return (KB_PER["mb"], "MB") if largest_kb >= KB_PER["mb"] else (1.0, "KB")


def _fmt_kb(value_kb: float) -> str:
    per, unit = _memory_unit(value_kb)
    return f"{value_kb / per:,.{1 if unit == 'MB' else 0}f} {unit}"


def _table(header: list[str], rows: list[str], *, caption: str = "", attrs: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    cap = f"<caption>{escape(caption)}</caption>" if caption else ""
    return f"<table{attrs}>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _row(cells: list[str], style: str = "") -> str:
    """A table row of already-escaped cells; ``style`` is a class (the reduction rows' italic)."""
    opening = f'<tr class="{style}">' if style else "<tr>"
    return opening + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _how_to(text: str) -> str:
    return f'<p class="howto">{text}</p>'


# ---------------------------------------------------------------- sections


def _tables_section(doc: dict[str, Any], colours: dict[str, str]) -> str:
    """Table 1 as the paper lays it out, a block per target, and the paper's own figures beside it."""
    sizes = [str(s) for s in doc["settings"]["sizes"]]
    out = ['<h2 id="table1">Max memory · median latency (the paper\'s Table 1)</h2>']
    for target, models in blocks(doc).items():
        precisions = ", ".join(sorted({r["precision"] or "-" for rows in models.values() for r in rows.values()}))
        rows = []
        for label, cells, style in table_rows(doc, models):
            name = (_swatch(colours[label]) if label in colours else "") + escape(label)
            rows.append(_row([name, *(escape(c) for c in cells)], style))
        out.append(f"<h3>{escape(target)} · {escape(precisions)}</h3>")
        out.append(_table(["model", *sizes], rows, caption=f"source: {sources(models)}",
                          attrs=f' class="profile" data-target="{escape(target)}"'))
    paper = doc["paper_table1"]
    rows = [_row([escape(label), *(escape(c) for c in cells)]) for label, cells in paper_rows(doc)]
    out += ["<h3>Paper, Table 1: mobile NPU max memory</h3>",
            _table(["model", *(str(s) for s in paper["input_sizes"])], rows,
                   caption="Chen et al., NeurIPS 2023 (VanillaNet), as published", attrs=' class="paper"')]
    return "\n".join(out)


def _metric_points(by_size: dict[int, dict[str, Any]], metric: str, per: float) -> list[tuple[float, float]]:
    value = (lambda r: r["memory"]["max_kb"] / per) if metric == "memory" else (lambda r: r["latency"]["median_ms"])
    return sorted((size, value(r)) for size, r in by_size.items() if r[metric] and r["status"] != "error")


def _size_charts_section(doc: dict[str, Any], colours: dict[str, str]) -> str:
    """Memory and latency against input size, a chart per target and metric, a line per model."""
    out = ['<h2 id="sizes">Memory and latency against input size</h2>', '<div class="charts">']
    sizes = sorted(float(s) for s in doc["settings"]["sizes"])
    for target, models in blocks(doc).items():
        rows = [r for by_size in models.values() for r in by_size.values()]
        largest = max((r["memory"]["max_kb"] for r in rows if r["memory"]), default=0.0)
        per, unit = _memory_unit(largest)
        for metric, axis in (("memory", f"max memory ({unit})"), ("latency", "median latency (ms)")):
            series = [Series(model, colours[model], points, tips=[f"{model} at {x:g}: {y:,.2f} "
                                                                  f"{unit if metric == 'memory' else 'ms'}"
                                                                  for x, y in points])
                      for model, by_size in models.items()
                      if (points := _metric_points(by_size, metric, per))]
            labels = sorted({r[metric]["source"] for r in rows if r[metric]})
            if not series:
                out.append(f'<p class="howto">{escape(target)}: no {metric} figures (every cell failed, or the '
                           f'target reports none).</p>')
                continue
            out.append(line_chart(f"{target} · {metric} ({', '.join(labels)})", series, "input size (pixels, square)",
                                  axis, x_ticks=sizes))
    out.append("</div>")
    return "\n".join(out)


def _timeline_section(doc: dict[str, Any], directory: Path, colours: dict[str, str]) -> str:
    """Live bytes across the network at each size, a line per model, its peak marked and named."""
    out = ['<h2 id="timeline">Memory across the network</h2>']
    cells: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    problems = []
    seen = set()
    for row in doc["rows"]:
        if not row.get("timeline") or row["timeline"] in seen:
            continue
        seen.add(row["timeline"])
        steps, problem = _linked(directory, row, "timeline", read_timeline)
        if problem:
            problems.append(problem)
        elif steps:
            cells.setdefault((row["precision"] or "-", row["size"]), {})[row["model"]] = steps
    if not cells:
        out.append(_how_to("No memory timeline in this profile (no cell built an ONNX graph to plan, or the profile "
                           "predates timelines): run <code>vncompile profile</code> again to record every tensor's "
                           "lifetime (the analytic plan) and what is live at the peak."))
    else:
        out.append('<p class="source">source: estimated (the analytic plan: each tensor live from the step that '
                   'writes it to its last reader; x is the position in the network, hover a point for its node)'
                   '</p><div class="charts">')
        peaks = []
        for (precision, size), models in sorted(cells.items(), key=lambda item: item[0][1]):
            largest = max(s["live_bytes"] for steps in models.values() for s in steps)
            per, unit = _memory_unit(kb(largest))
            series = []
            for model, steps in models.items():
                last = max(len(steps) - 1, 1)
                peak = next((i for i, s in enumerate(steps) if s["is_peak"]),
                            max(range(len(steps)), key=lambda i: steps[i]["live_bytes"]))
                at = steps[peak]
                where = at["node"] + (f" ({at['block']})" if at.get("block") else "")
                series.append(Series(
                    model, colours.get(model, PALETTE[0]),
                    [(100.0 * i / last, kb(s["live_bytes"]) / per) for i, s in enumerate(steps)],
                    tips=[f"step {s['step']}: {s['node']} ({s['op']}{', ' + s['block'] if s.get('block') else ''}) "
                          f"{_fmt_kb(kb(s['live_bytes']))} live" for s in steps],
                    marked=peak, note=f"peak {_fmt_kb(kb(at['live_bytes']))} at {where}"))
                peaks.append((model, precision, size, where, at))
            out.append(line_chart(f"{size}×{size} · {precision} · live activations", series,
                                  "position in the network (% of steps)", f"live bytes ({unit})",
                                  x_ticks=[0, 25, 50, 75, 100], width=560))
        out.append("</div>")
        rows = [_row([_swatch(colours.get(m, PALETTE[0])) + escape(m), escape(p), str(s), escape(where),
                      escape(_fmt_kb(kb(at["live_bytes"]))),
                      escape(", ".join(f"{name} {_fmt_kb(kb(size))}" for name, size in at["live_at_peak"]) or "-")])
                for m, p, s, where, at in peaks]
        out.append(_table(["model", "precision", "size", "peak at", "live", "live at the peak"], rows,
                          attrs=' class="peaks"'))
    out += [f'<p class="howto">{escape(p)}</p>' for p in problems]
    return "\n".join(out)


def _top(layers: list[dict[str, Any]], key: str, colour: str) -> str:
    """The layers that take the most of ``key`` (time_ms, cycles or memory_bytes): time and cycles with their share
    of the whole; memory (per layer, not a quantity that adds up across layers) against the largest layer's."""
    ranked = sorted((r for r in layers if r[key] is not None), key=lambda r: -r[key])[:TOP_LAYERS]
    adds_up = key != "memory_bytes"
    total = (sum(r[key] for r in layers if r[key] is not None) if adds_up else max((r[key] for r in ranked),
                                                                                   default=0)) or 1
    rows = []
    for r in ranked:
        share = 100.0 * r[key] / total
        value = _fmt_kb(kb(r[key])) if key == "memory_bytes" else f"{r[key]:,.3f}" if key == "time_ms" else \
            f"{r[key]:,}"
        rows.append(_row([escape(r["name"]), escape(r.get("block") or "-"), escape(r.get("op") or "-"), escape(value),
                          f'<span class="bar" style="width:{share * 0.8:.0f}px;background:{colour}"></span>'
                          f"{share:.1f}%", escape(r.get("exec_type") or "-"), escape(r.get("precision") or "-"),
                          escape(r.get("source") or "-")]))
    what = {"time_ms": "time", "cycles": "cycles", "memory_bytes": "memory"}[key]
    return _table(["layer", "block", "op", "time (ms)" if key == "time_ms" else what,
                   "share" if adds_up else "vs largest", "exec type", "precision", "source"], rows,
                  caption=f"top {len(ranked)} of {len(layers)} layers by {what}",
                  attrs=f' class="layers" data-by="{what}"')


def _layers_section(doc: dict[str, Any], directory: Path, colours: dict[str, str]) -> str:
    """Each cell's top layers by time (cycles where only a compiler's count exists) and by memory."""
    out = ['<h2 id="layers">Where time and memory go, layer by layer</h2>']
    shown, problems = 0, []
    for row in doc["rows"]:
        layers, problem = _linked(directory, row, "layers", read_layers)
        if problem:
            problems.append(f"{cell_label(row['model'], row['target'], row['size'])}: {problem}")
        if not layers:
            continue
        shown += 1
        colour = colours.get(row["model"], PALETTE[0])
        label = f"{cell_label(row['model'], row['target'], row['size'])} · {row['precision'] or '-'}"
        labels = ", ".join(sorted({r.get("source") or "-" for r in layers}))
        # Time where the runtime measured it, else the compiler's cycle count; memory where reported.
        known = [key for key in ("time_ms", "cycles", "memory_bytes") if any(r[key] is not None for r in layers)]
        keys = [k for k in known if k != "cycles" or "time_ms" not in known]
        tables = [_top(layers, key, colour) for key in keys]
        out.append(f'<div class="cell"><h3>{_swatch(colour)}{escape(label)}</h3>'
                   f'<p class="source">source: {escape(labels)}</p><div class="pair">{"".join(tables)}</div></div>')
    missing = len(doc["rows"]) - shown
    if not shown:
        out.append(_how_to("No per-layer data in this profile: run <code>vncompile profile --layers</code> to record "
                           "each cell's layers as its runtime or compiler reports them."))
    elif missing:
        out.append(_how_to(f"{missing} of {len(doc['rows'])} cells have no per-layer data (a failed cell, or a target "
                           "that reports none; profiles without <code>--layers</code> record none)."))
    out += [f'<p class="howto">{escape(p)}</p>' for p in problems]
    return "\n".join(out)


def _notes_section(doc: dict[str, Any]) -> str:
    peaks = peak_notes(doc)
    reasons = [f"{cell_label(r['model'], r['target'], r['size'])}: {r['reason']}" for r in doc["rows"] if r["reason"]]
    if not peaks and not reasons:
        return ""
    out = ['<h2 id="notes">Notes</h2>']
    if peaks:
        out.append("<h3>At the memory peak</h3><ul>" + "".join(f"<li>{escape(p)}</li>" for p in peaks) + "</ul>")
    if reasons:
        out.append("<h3>Cells that did not run as asked</h3><ul>"
                   + "".join(f"<li>{escape(r)}</li>" for r in reasons) + "</ul>")
    return "\n".join(out)


def _facts_text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def _facts_section(doc: dict[str, Any]) -> str:
    """What reproducing the profile takes: this machine, the toolchain's versions, the settings, the artifacts."""
    out = ['<h2 id="facts">Reproduction</h2>']
    for title, facts in (("machine", doc["machine"]), ("toolchain", doc["toolchain"]),
                         ("settings", {"vncompile": doc.get("vncompile"), **doc["settings"]})):
        rows = [_row([escape(str(k)), escape(_facts_text(v))]) for k, v in facts.items()]
        out.append(f"<h3>{escape(title)}</h3>" + _table(["", ""], rows, attrs=f' class="facts" data-facts="{title}"'))
    rows = [_row([escape(r["model"]), escape(r["target"]), escape(r["precision"] or "-"), str(r["size"]),
                  escape(r["status"]), escape((r["memory"] or {}).get("source", "-")),
                  escape((r["latency"] or {}).get("source", "-")),
                  f"<code>{escape(r['artifact_sha256'] or '-')}</code>"]) for r in doc["rows"]]
    out.append("<h3>cells</h3>" + _table(["model", "target", "precision", "size", "status", "memory source",
                                         "latency source", "artifact sha256"], rows, attrs=' class="cells"'))
    return "\n".join(out)


def to_html(doc: dict[str, Any], directory: Path) -> str:
    """The whole page; ``directory`` is where the rows' ``layers``/``timeline`` files are read from."""
    colours = model_colours(doc)
    machine = doc["machine"]
    settings = doc["settings"]
    subtitle = (f"{settings['precision']}, batch {settings['batch']} · {machine['cpu']}, {machine['cores']} cores, "
                f"{machine['memory_gb']} GB" + (f", {machine['gpu']}" if machine.get("gpu") else "")
                + f" · vncompile {doc.get('vncompile', '?')}")
    nav = "".join(f'<a href="#{anchor}">{text}</a>' for anchor, text in (
        ("table1", "Table 1"), ("sizes", "against input size"), ("timeline", "memory timeline"),
        ("layers", "per layer"), ("facts", "reproduction")))
    body = [_tables_section(doc, colours), _size_charts_section(doc, colours),
            _timeline_section(doc, directory, colours), _layers_section(doc, directory, colours),
            _notes_section(doc), _facts_section(doc)]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>vncompile profile</title><style>{STYLE}</style></head><body>"
            f'<h1>vncompile profile</h1><p class="sub">{escape(subtitle)}</p><nav>{nav}</nav>\n'
            + "\n".join(part for part in body if part) + "\n</body></html>\n")


def write_report(directory: Path) -> Path:
    """``vncompile report DIR``: report.html for a profile directory already written, atomically."""
    directory = Path(directory)
    if not is_profile_output(directory):
        raise InputError(f"{directory} is not a profile output: no profile.json written by 'vncompile profile -o' "
                         "there")
    doc = json.loads((directory / "profile.json").read_text())
    if doc["schema"] != PROFILE_SCHEMA:
        raise InputError(f"{directory}/profile.json has schema {doc['schema']}; this vncompile reads schema "
                         f"{PROFILE_SCHEMA}: run the profile again")
    try:
        page = to_html(doc, directory)
    except (KeyError, TypeError, ValueError) as exc:  # edited by hand, or cut short: not a profile we can read
        raise InputError(f"{directory}/profile.json is not a whole profile ({type(exc).__name__}: {exc})") from None
    path = directory / REPORT
    with atomic_file(path, force=True, what="report") as tmp:
        tmp.write_text(page)
    return path
