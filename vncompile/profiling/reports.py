"""Profile reports: the paper-style table (markdown; the terminal's is in ``console``), CSV, JSON and plots.

Laid out like the paper's Table 1: models as rows, input sizes as columns, one block
per target, a "reduction vs resnet50" row per model, and the paper's own mobile-NPU
figures beside ours.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ..core.io import atomic_directory, holds_document, write_json
from ..core.units import KB_PER
from .layer_files import ProfileFiles

PROFILE_SCHEMA = 2  # profile.json's layout: what ``vncompile report`` reads back
BASELINE = "resnet50"
CSV_COLUMNS = ["model", "target", "precision", "size", "batch", "status", "reason",
               "latency_median_ms", "latency_mean_ms", "latency_p90_ms", "latency_p99_ms", "latency_min_ms",
               "latency_max_ms", "latency_runs", "latency_source",
               "memory_max_kb", "memory_weights_kb", "memory_activations_kb", "memory_source", "top1",
               "artifact_sha256"]
# (memory in KB = 1024 bytes, ``core.units``)


def cell_label(model: str, target: str, size: int) -> str:
    """How a profile cell is named to people: in progress lines, notes and errors alike."""
    return f"{model} · {target} · {size}"


def blocks(doc: dict[str, Any]) -> dict[str, dict[str, dict[int, dict[str, Any]]]]:
    """target -> model -> size -> row, in the order the rows came."""
    blocks: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for row in doc["rows"]:
        blocks.setdefault(row["target"], {}).setdefault(row["model"], {})[row["size"]] = row
    return blocks


def _baseline(models: dict[str, dict[int, dict[str, Any]]]) -> str | None:
    """The label of the ResNet-50 rows (a narrowed one in quick runs), if the profile has one."""
    return next((label for label, by_size in models.items()
                 if any(r.get("network") == BASELINE for r in by_size.values())), None)


def reduction_vs_baseline(models: dict[str, dict[int, dict[str, Any]]], model: str, size: int) -> float | None:
    """Percent less max memory than ResNet-50 on the same target and size (the paper's 18.7%/19.6%)."""
    baseline = _baseline(models)
    base = models.get(baseline, {}).get(size) if baseline else None
    row = models.get(model, {}).get(size)
    if not base or not row or not base["memory"] or not row["memory"]:
        return None
    return 100.0 * (1.0 - row["memory"]["max_kb"] / base["memory"]["max_kb"])


def _cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    memory = f"{row['memory']['max_kb']:,.0f} KB" if row["memory"] else "-"
    if row["status"] == "oom":
        fit = row.get("fits_with_fit_memory") or {}
        tiled = f"; --fit-memory: {fit['memory']['max_kb']:,.0f} KB" if fit.get("fits") else ""
        return f"OOM ({memory}{tiled})"
    if row["status"] == "error":
        return "error"
    latency = row["latency"]
    return memory if latency is None else f"{memory} · {latency['median_ms']:.1f} ms"


def _paper_cell(values: list[int | None], i: int) -> str:
    value = values[i] if i < len(values) else None
    return "OOM" if value is None else f"{value:,} KB"


def table_rows(doc: dict[str, Any], models: dict[str, dict[int, dict[str, Any]]]):
    """(label, cells, style) rows of one target's block: the models, then each one's reduction."""
    sizes, paper = doc["settings"]["sizes"], doc["paper_table1"]
    rows = [(model, [_cell(by_size.get(s)) for s in sizes], "") for model, by_size in models.items()]
    baseline = _baseline(models)
    if baseline is None:
        return rows
    for model, by_size in models.items():
        if model == baseline:
            continue
        network = next(iter(by_size.values())).get("network")
        cells = []
        for size in sizes:
            value = reduction_vs_baseline(models, model, size)
            text = "-" if value is None else f"{abs(value):.1f}% {'less' if value >= 0 else 'more'}"
            if network == "plain_cnn_50" and size in paper["input_sizes"]:
                ref = paper["reduction_percent"][paper["input_sizes"].index(size)]
                text += f" (paper {ref}%)" if ref is not None else " (paper: resnet50 OOM)"
            cells.append(text)
        rows.append((f"{model} vs {baseline}", cells, "italic"))
    return rows


def sources(models: dict[str, dict[int, dict[str, Any]]]) -> str:
    memory = sorted({r["memory"]["source"] for m in models.values() for r in m.values() if r["memory"]})
    latency = sorted({r["latency"]["source"] for m in models.values() for r in m.values() if r["latency"]})
    return f"memory: {', '.join(memory) or '-'}; latency: {', '.join(latency) or '-'}"


def peak_notes(doc: dict[str, Any]) -> list[str]:
    """What a plan says is alive at its peak (the analytic plan names the tensors): where memory goes.
    For a backbone that is often its own earlier outputs, which must outlive the rest of the network."""
    return [f"{cell_label(r['model'], r['target'], r['size'])}: {r['memory']['detail']}" for r in doc["rows"]
            if r["memory"] and r["memory"]["source"] != "measured" and r["memory"].get("detail")]


def paper_rows(doc: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The paper's Table 1 at its own sizes (256/384/512), whatever sizes this profile ran."""
    paper = doc["paper_table1"]
    sizes = range(len(paper["input_sizes"]))
    rows = [(model, [_paper_cell(paper[model], i) for i in sizes]) for model in ("resnet50", "plain_cnn_50")]
    reductions = paper["reduction_percent"]
    rows.append(("plain_cnn_50 vs resnet50", ["-" if reductions[i] is None else f"{reductions[i]}% less"
                                              for i in sizes]))
    return rows


def to_markdown(doc: dict[str, Any]) -> str:
    sizes = doc["settings"]["sizes"]
    machine = doc["machine"]
    out = [f"# vncompile profile ({doc['settings']['precision']}, batch {doc['settings']['batch']})", "",
           f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gb']} GB"
           + (f", {machine['gpu']}" if machine.get("gpu") else ""), ""]
    header = "| model | " + " | ".join(map(str, sizes)) + " |"
    rule = "|---|" + "---:|" * len(sizes)
    for target, models in blocks(doc).items():
        out += [f"## {target}", "", f"Max memory · median latency ({sources(models)})", "", header, rule]
        for label, cells, style in table_rows(doc, models):
            name = f"*{label}*" if style else label
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    paper_sizes = doc["paper_table1"]["input_sizes"]
    out += ["## Paper, Table 1 (mobile NPU)", "", "| model | " + " | ".join(map(str, paper_sizes)) + " |",
            "|---|" + "---:|" * len(paper_sizes)]
    out += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in paper_rows(doc)]
    peaks = peak_notes(doc)
    if peaks:
        out += ["", "## At the memory peak", "", *(f"- {line}" for line in peaks)]
    reasons = [f"- {cell_label(r['model'], r['target'], r['size'])}: {r['reason']}" for r in doc["rows"] if r["reason"]]
    if reasons:
        out += ["", "## Notes", "", *reasons]
    return "\n".join(out) + "\n"


def to_csv(doc: dict[str, Any]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in doc["rows"]:
        flat = {k: row.get(k) for k in ("model", "target", "precision", "size", "batch", "status", "reason",
                                        "top1", "artifact_sha256")}
        for key, value in (row["latency"] or {}).items():
            flat[f"latency_{key}"] = value
        for key, value in (row["memory"] or {}).items():
            flat[f"memory_{key}"] = value
        writer.writerow({k: flat.get(k) for k in CSV_COLUMNS})
    return buffer.getvalue()


def write_plots(doc: dict[str, Any], directory: Path) -> list[str]:
    """memory.png and latency.png: value vs input size, a line per model, a panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, metric, unit in (("memory.png", "memory", "max memory (MB)"),
                               ("latency.png", "latency", "median latency (ms)")):
        panels = {t: m for t, m in blocks(doc).items()
                  if any(r[metric] for rows in m.values() for r in rows.values())}
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
        for ax, (target, models) in zip(axes[0], panels.items(), strict=True):
            for model, by_size in models.items():
                points = sorted(
                    (s, r[metric]["max_kb"] / KB_PER["mb"] if metric == "memory" else r[metric]["median_ms"])
                    for s, r in by_size.items() if r[metric] and r["status"] != "error")
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=model)
            ax.set_title(target)
            ax.set_xlabel("input size")
            ax.set_ylabel(unit)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(directory / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def is_profile_output(directory: Path) -> bool:
    """Whether ``directory`` holds a profile vncompile wrote: one ``profile -o DIR --force`` replaces."""
    return holds_document(directory, "profile.json", "schema", "rows")


def write_profile(doc: dict[str, Any], directory: Path, force: bool = False,
                  files: ProfileFiles | None = None) -> tuple[list[str], list[str]]:
    """profile.json, .csv, .md, the plots, the rows' per-layer tables and timelines (``files``) and report.html,
    into ``directory`` atomically: (the files written, notes). The report is written last: it reads the per-layer
    files the rows name, already in place."""
    from .html_report import REPORT, to_html  # the page renders this module's tables: imported where it is used

    notes, written = [], ["profile.json", "profile.csv", "profile.md"]
    with atomic_directory(directory, is_profile_output, force=force) as tmp:
        if files is not None:
            written += files.write(tmp)
        write_json(tmp / "profile.json", doc)
        (tmp / "profile.csv").write_text(to_csv(doc))
        (tmp / "profile.md").write_text(to_markdown(doc))
        try:
            written += write_plots(doc, tmp)
        except ImportError:
            notes.append("plots skipped: matplotlib is not installed (pip install 'vncompile[plot]')")
        try:
            (tmp / REPORT).write_text(to_html(doc, tmp))
            written.append(REPORT)
        except Exception as exc:  # noqa: BLE001 - the page is a view of the files above: never the cost of them
            notes.append(f"report.html not written ({type(exc).__name__}: {exc}); the data files are: try "
                         f"vncompile report {directory}")
    return written, notes
