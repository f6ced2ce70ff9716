"""Terminal output: stage progress and tables, all on stderr so stdout stays for data."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .api.target import LayerRecord
from .profiling.layer_files import ProfileFiles, top_layers
from .profiling.reports import blocks, paper_rows, peak_notes, sources, table_rows

stderr = Console(stderr=True, highlight=False)


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:g} {unit}"


class RichStageReporter:
    """One progress bar over a build's stages, with the running stage's name and elapsed time."""

    def __init__(self, console: Console = stderr) -> None:
        self._console = console
        self._progress: Progress | None = None
        self._task = None

    def start(self, title: str, stages: list[str]) -> None:
        self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                                  console=self._console, transient=True)
        self._progress.start()
        self._title = title
        self._task = self._progress.add_task(title, total=len(stages))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        assert self._progress is not None
        self._progress.update(self._task, description=f"{self._title}: {name}")
        yield
        self._progress.advance(self._task)
        self._console.print(f"[green]✓[/] {name}")

    def finish(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def render_description(facts: dict[str, Any], console: Console = stderr) -> None:
    act = facts["act_learn"]
    table = Table(show_header=False, box=None)
    table.add_row("model", facts["model"] + (f" (width x{facts['width']:g})" if facts["width"] != 1 else ""))
    table.add_row("form", facts["form"])
    if facts["act_num"] is not None:
        table.add_row("act_num", str(facts["act_num"]))
    table.add_row("classes", str(facts["num_classes"]) if facts["num_classes"] else "none (backbone)")
    fusable = "[green]fusable[/]" if act["fusable"] else "[red]not fusable[/]"
    table.add_row("act_learn", f"{act['value']:.4g} ({act['source']}: {act['detail']}) {fusable}")
    if facts["checkpoint"]:
        ckpt = facts["checkpoint"]
        table.add_row("checkpoint", f"{ckpt['path']} (weights: {ckpt['weights'] or 'state_dict'}"
                      + (f", epoch {ckpt['epoch']}" if ckpt["epoch"] is not None else "") + ")")
        for note in ckpt["notes"]:
            table.add_row("", escape(note))
        detector = ckpt.get("detector")
        if detector:
            ignored = detector["ignored_groups"]
            more = f" and {len(ignored) - 6} more" if len(ignored) > 6 else ""
            groups = (", ".join(ignored[:6]) + more) or "nothing"
            table.add_row("kind", f"{detector['kind']}: backbone under '{escape(detector['prefix'])}'; ignored "
                          f"{detector['ignored_tensors']} tensors ({escape(groups)})")
        else:
            table.add_row("kind", ckpt.get("kind", "classifier"))
    if facts.get("outputs"):
        table.add_row("outputs", ", ".join(f"{o['name']} ({o['channels']} ch)" for o in facts["outputs"]))
    console.print(table)
    counts = Table(title=f"complexity at {facts['input_size']}x{facts['input_size']}")
    counts.add_column("")
    counts.add_column("train form", justify="right")
    counts.add_column("deploy form", justify="right")
    counts.add_row("params", _si(facts["train"]["params"], ""), _si(facts["deploy"]["params"], ""))
    counts.add_row("MACs", _si(facts["train"]["macs"], ""), _si(facts["deploy"]["macs"], ""))
    console.print(counts)


def render_verification(verification: dict[str, Any], accuracy: dict[str, Any] | None = None,
                        console: Console = stderr) -> None:
    """One row per stage (per output, for a multi-output network); with --eval-data, each stage's top-1 and
    agreement on the labelled images beside its numerical error."""
    if verification.get("skipped") and accuracy is None:
        console.print("verification skipped (--no-verify)")
        return
    tolerance = "; ".join(f"{p} {', '.join(f'{k} {v:g}' for k, v in t.items())}"
                          for p, t in verification["tolerance"].items())
    caption = f"tolerance: {tolerance}" if tolerance else ""
    if accuracy is not None:
        caption += (f"{'; ' if caption else ''}images: {accuracy['images']} labelled, reference top-1 "
                    f"{accuracy['reference']['top1']:.2f}%, top-5 {accuracy['reference']['top5']:.2f}%")
    table = Table(title="verification against the float64 reference", caption=caption)
    columns = ["stage", "output", "precision", "max abs", "rel", "cosine", "top-1 agree", ""]
    if accuracy is not None:
        columns[-1:-1] = ["top-1 images", "agreement"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("stage", "output", "precision") else "right")
    target_stage = verification["stages"][-1]["stage"] if verification["stages"] else None
    for stage in verification["stages"]:
        for i, o in enumerate(stage["outputs"]):
            top1 = "-" if o["top1_agreement"] is None else f"{o['top1_agreement']:.0%}"
            verdict = "[green]ok[/]" if o["passed"] else f"[red]FAIL[/] (passes {o['would_pass'] or '-'})"
            cells = [stage["stage"] if i == 0 else "", o["name"], stage["precision"], f"{o['max_abs']:.2e}",
                     f"{o['rel']:.2e}", f"{o['cosine']:.6f}", top1]
            if accuracy is not None:
                key = "target" if stage["stage"] == target_stage and "target" in accuracy else stage["stage"]
                found = accuracy.get(key) if i == 0 else None
                cells += ["-", "-"] if not found else [f"{found['top1']:.2f}%", f"{found.get('agreement', 100):.1f}%"]
            table.add_row(*cells, verdict)
    console.print(table)


def render_targets(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="targets")
    for column in ("target", "available", "version", "devices", "precisions", "notes"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], "[green]yes[/]" if row["available"] else "[red]no[/]", row["version"] or "-",
                      ", ".join(row["devices"]) or "-", ", ".join(row["precisions"]),
                      escape(row["reason"] or row["description"]))
    console.print(table)


def render_profile(doc: dict[str, Any], console: Console) -> None:
    sizes = doc["settings"]["sizes"]
    for target, models in blocks(doc).items():
        precisions = sorted({r["precision"] for rows in models.values() for r in rows.values()})
        table = Table(title=f"{target} · {', '.join(precisions)} · max memory · median latency",
                      caption=sources(models))
        table.add_column("model")
        for size in sizes:
            table.add_column(str(size), justify="right")
        for label, cells, style in table_rows(doc, models):
            table.add_row(label, *cells, style=style or None)
        console.print(table)
    paper = Table(title="paper, Table 1: mobile NPU max memory", caption="Chen et al., NeurIPS 2023")
    paper.add_column("model")
    for size in doc["paper_table1"]["input_sizes"]:
        paper.add_column(str(size), justify="right")
    for label, cells in paper_rows(doc):
        paper.add_row(label, *cells)
    console.print(paper)
    for line in peak_notes(doc):
        console.print(f"[dim]peak:[/] {escape(line)}")
    for row in doc["rows"]:
        if row["reason"]:
            console.print(f"[yellow]{escape(row['model'])} · {row['target']} · {row['size']}:[/] "
                          f"{escape(row['reason'])}")


def _layer_figure(record: LayerRecord, by: str) -> float:
    if by == "memory":
        return record.memory_bytes or 0
    return (record.time_ms if record.time_ms is not None else record.cycles) or 0


def render_top_layers(title: str, records: list[LayerRecord], console: Console = stderr) -> None:
    """The layers with the most time (cycles where the reporter times none) and the most memory, with their share
    of the whole and the figure's source."""
    for by in ("time", "memory"):
        top = top_layers(records, by)
        if not top:
            console.print(f"[dim]{escape(title)}: no per-layer {by} figures[/]")
            continue
        unit = "bytes" if by == "memory" else "ms" if top[0].time_ms is not None else "cycles"
        total = sum(_layer_figure(r, by) for r in records) or 1
        table = Table(title=f"{title} · top {len(top)} by {'time' if unit == 'ms' else unit}",
                      caption=f"{top[0].source} (README: what each target reports per layer)")
        for column in ("block", "layer", "op", unit, "share"):
            table.add_column(column, justify="right" if column in (unit, "share") else "left")
        for record in top:
            value = _layer_figure(record, by)
            text = f"{value:.3f}" if unit == "ms" else f"{value:,.0f}"
            table.add_row(escape(record.block or "-"), escape(record.name), escape(record.op), text,
                          f"{100 * value / total:.1f}%")
        console.print(table)


def render_profile_layers(doc: dict[str, Any], files: ProfileFiles, console: Console = stderr) -> None:
    """Every measured cell's top layers, and the cells whose target reports none."""
    for row in doc["rows"]:
        title = f"{row['model']} · {row['target']} · {row['precision']} · {row['size']}"
        if row.get("layers") in files.layers:
            render_top_layers(title, files.layers[row["layers"]], console)
        elif row.get("layers_note"):
            console.print(f"[dim]{escape(title)}: {escape(row['layers_note'])}[/]")
