"""Terminal output: stage progress and tables, all on stderr so stdout stays for data."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from .api.target import LayerRecord
from .profiling.layer_files import ProfileFiles, top_layers
from .profiling.reports import blocks, cell_label, paper_rows, peak_notes, sources, table_rows

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


def seconds_left(finished: Sequence[float], remaining: int, running_for: Sequence[float] = (),
                 parallel: int = 1) -> float | None:
    """The time a run of cells has left: every cell not finished takes the mean time of the finished ones (a cell
    served from the cache took its few seconds, and counts as that fast), less what the ``running_for`` cells
    have run already; ``parallel`` run at once. None until a cell has finished: nothing to go by."""
    if remaining <= 0:
        return 0.0
    if not finished:
        return None
    mean = sum(finished) / len(finished)
    running = sum(max(mean - elapsed, 0.0) for elapsed in running_for)
    queued = max(remaining - len(running_for), 0)
    return (running + queued * mean) / max(parallel, 1)


def duration_text(seconds: float) -> str:
    """A duration for people: '4.2 s', '3 min 12 s', '1 h 02 min'."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class _TimeLeftColumn(ProgressColumn):
    def __init__(self, left: Callable[[], float | None]) -> None:
        super().__init__()
        self._left = left

    def render(self, task: Any) -> Text:
        left = self._left()
        return Text("estimating time left" if left is None else f"~{duration_text(left)} left", style="cyan")


class CellProgress:
    """Progress over a run of cells (``profile``, ``ci``). On a terminal: a bar with the cells done / total, the
    time elapsed, an estimate of the time left (``seconds_left``) and the cell(s) running, above it a line per
    finished cell. Elsewhere (a CI log, a pipe) only those lines, one per finished cell with its time: nothing
    that redraws. Cells may start and finish on several threads (``ci --jobs``)."""

    def __init__(self, title: str, total: int, *, parallel: int = 1, console: Console = stderr,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self._title, self._total, self._parallel = title, total, parallel
        self._console, self._clock = console, clock
        self._lock = threading.Lock()
        self._running: dict[str, float] = {}  # label -> when it started
        self._seconds: list[float] = []
        self._progress: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> CellProgress:
        if self._console.is_terminal:
            self._progress = Progress(TextColumn(f"[bold]{escape(self._title)}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), _TimeLeftColumn(self.left),
                                      TextColumn("{task.description}"), console=self._console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task("", total=self._total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def left(self) -> float | None:
        with self._lock:
            now = self._clock()
            return seconds_left(self._seconds, self._total - len(self._seconds),
                                [now - start for start in self._running.values()], self._parallel)

    def started(self, label: str) -> None:
        with self._lock:
            self._running[label] = self._clock()
            running = ", ".join(self._running)
        if self._progress is not None:
            self._progress.update(self._task, description=escape(running))

    def finished(self, label: str, status: str = "ok", note: str | None = None,
                 seconds: float | None = None) -> None:
        """``label`` has finished; ``seconds`` where the caller timed it (else the time since ``started``)."""
        with self._lock:
            start = self._running.pop(label, None)
            if seconds is None:
                seconds = 0.0 if start is None else self._clock() - start
            self._seconds.append(seconds)
            done, running = len(self._seconds), ", ".join(self._running)
        outcome = "" if status == "ok" else f"  {status}" + (f": {note}" if note else "")
        line = f"[{done}/{self._total}] {label}  {duration_text(seconds)}{outcome}"
        if self._progress is None:
            self._console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        self._progress.update(self._task, completed=done, description=escape(running))


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


def render_graph_description(facts: dict[str, Any], console: Console = stderr) -> None:
    """``inspect model.onnx``: the graph's interface, what it detects, and the deploy fusion's effect."""
    table = Table(show_header=False, box=None)
    table.add_row("graph", escape(f"{facts['path']} ({facts['family']}; opset {facts['opset']}, {facts['nodes']} "
                                  f"nodes{', by ' + facts['producer'] if facts['producer'] else ''})"))
    dims = "x".join(str(d) for d in facts["input"]["dims"])
    size = ("fixed: builds at this size only" if facts["fixed_size"] else "dynamic: builds at any size")
    table.add_row("input", escape(f"{facts['input']['name']} {dims} ({size})"))
    for output in facts["outputs"]:
        table.add_row("output", escape(f"{output['name']} {'x'.join(str(d) for d in output['dims'])}"))
    if facts["external_data"]:
        table.add_row("external data", escape(", ".join(facts["external_data"])))
    detector = facts.get("detector")
    if detector:
        names = ", ".join(detector["names"][:8]) + (" ..." if len(detector["names"]) > 8 else "")
        table.add_row("detects", escape(f"{len(detector['names']) or '?'} classes ({names}); decoded as "
                                        f"{'a YOLO Detect output' if detector['decode'] == 'yolo' else 'NMS rows'}"
                                        + (f"; imgsz {detector['imgsz'][0]}x{detector['imgsz'][1]}"
                                           if detector["imgsz"] else "")))
    fusion = facts["deploy_fusion"]
    table.add_row("deploy fusion", escape(fusion["summary"]))
    if fusion["finding"]:
        table.add_row("", f"[yellow]{escape(fusion['finding'])}[/]")
    console.print(table)


def render_graph_notes(model: dict[str, Any], console: Console = stderr) -> None:
    """An ONNX file's build: what the deploy fusion did, and which reference it was verified against."""
    fusion = model.get("deploy_fusion")
    if fusion is None:
        return
    console.print(escape(fusion["summary"]))
    if fusion["finding"]:
        console.print(f"[yellow]warning:[/] {escape(fusion['finding'])}")
    console.print(escape(f"reference: {model['reference']}"))


def _accuracy_columns(accuracy: dict[str, Any]) -> tuple[str, list[str], Any]:
    """What the table shows of the labelled images: a classifier's top-1 and agreement with the reference, a
    detector's mAP50-95 and mAP50 (each stage's figures, in percent)."""
    reference = accuracy["reference"]
    if "map50_95" in reference:
        caption = (f"images: {accuracy['images']} labelled, {accuracy['objects']} objects, reference mAP50-95 "
                   f"{reference['map50_95']:.2f}%, mAP50 {reference['map50']:.2f}%")
        return caption, ["mAP50-95", "mAP50"], lambda f: [f"{f['map50_95']:.2f}%", f"{f['map50']:.2f}%"]
    caption = (f"images: {accuracy['images']} labelled, reference top-1 {reference['top1']:.2f}%, top-5 "
               f"{reference['top5']:.2f}%")
    return caption, ["top-1 images", "agreement"], lambda f: [f"{f['top1']:.2f}%", f"{f.get('agreement', 100):.1f}%"]


def render_verification(verification: dict[str, Any], accuracy: dict[str, Any] | None = None,
                        console: Console = stderr) -> None:
    """One row per stage (per output, for a multi-output network); with --eval-data, each stage's accuracy on the
    labelled images beside its numerical error (top-1 and agreement, or a detector's mAP50-95 and mAP50)."""
    if verification.get("skipped") and accuracy is None:
        console.print("verification skipped (--no-verify)")
        return
    tolerance = "; ".join(f"{p} {', '.join(f'{k} {v:g}' for k, v in t.items())}"
                          for p, t in verification["tolerance"].items())
    caption = f"tolerance: {tolerance}" if tolerance else ""
    columns = ["stage", "output", "precision", "max abs", "rel", "cosine", "top-1 agree", ""]
    if accuracy is not None:
        images, figures, cells_of = _accuracy_columns(accuracy)
        caption += f"{'; ' if caption else ''}{images}"
        columns[-1:-1] = figures
    table = Table(title="verification against the float64 reference", caption=caption)
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
                cells += ["-", "-"] if not found else cells_of(found)
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
            console.print(f"[yellow]{escape(cell_label(row['model'], row['target'], row['size']))}:[/] "
                          f"{escape(row['reason'])}")


def _layer_figure(record: LayerRecord, by: str) -> float:
    if by == "memory":
        return record.memory_bytes or 0
    return (record.time_ms if record.time_ms is not None else record.cycles) or 0


def render_top_layers(title: str, records: list[LayerRecord], console: Console = stderr) -> None:
    """The layers with the most time (cycles where the reporter times none), with their share of the whole, and the
    most memory (a figure per layer that does not add up across layers: no share), each with its source."""
    for by in ("time", "memory"):
        top = top_layers(records, by)
        if not top:
            console.print(f"[dim]{escape(title)}: no per-layer {by} figures[/]")
            continue
        unit = "bytes" if by == "memory" else "ms" if top[0].time_ms is not None else "cycles"
        total = sum(_layer_figure(r, by) for r in records) or 1
        table = Table(title=f"{title} · top {len(top)} by {'time' if unit == 'ms' else unit}",
                      caption=f"{top[0].source} (README: what each target reports per layer)")
        shares = by == "time"
        for column in ("block", "layer", "op", unit, *(("share",) if shares else ())):
            table.add_column(column, justify="right" if column in (unit, "share") else "left")
        for record in top:
            value = _layer_figure(record, by)
            text = f"{value:.3f}" if unit == "ms" else f"{value:,.0f}"
            table.add_row(escape(record.block or "-"), escape(record.name), escape(record.op), text,
                          *((f"{100 * value / total:.1f}%",) if shares else ()))
        console.print(table)


def render_profile_layers(doc: dict[str, Any], files: ProfileFiles, console: Console = stderr) -> None:
    """Every measured cell's top layers, and the cells whose target reports none."""
    for row in doc["rows"]:
        title = f"{row['model']} · {row['target']} · {row['precision']} · {row['size']}"
        if row.get("layers") in files.layers:
            render_top_layers(title, files.layers[row["layers"]], console)
        elif row.get("layers_note"):
            console.print(f"[dim]{escape(title)}: {escape(row['layers_note'])}[/]")
