"""``vncompile ci``: build a matrix's cells into publishable bundles, with an index, a summary and JUnit.

``dist/<model>/<device>/<size>/`` holds each cell's bundle (artifacts + manifest,
exactly what ``build`` writes); ``dist/index.json`` lists them, ``dist/SUMMARY.md``
is a table for a CI job summary and ``dist/junit.xml`` has one test case per cell.
Every cell is built (a failing one does not stop the others) in build worker
processes, ``jobs`` at a time, through the shared cache; the whole ``dist/`` is
written atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..core.errors import InputError, VncompileError
from ..core.io import atomic_directory, holds_document, write_json
from ..pipeline.build_process import BuildWorker
from ..pipeline.cache import BuildCache, copy_tree, reading
from .matrix import Cell

INDEX_SCHEMA = 1


@dataclass
class CellResult:
    id: str
    model: str
    device: str
    size: int | str
    runner: str
    status: str  # ok | deferred | failed
    reason: str | None
    seconds: float
    path: str | None  # the bundle, relative to dist/
    sha256: str | None  # digest of the bundle's artifacts (see bundle_digest)
    bytes: int | None  # the artifacts' total size
    verification_rel: float | None  # the largest relative error of any verified stage

    def as_index_entry(self) -> dict[str, Any]:
        return asdict(self)


def bundle_digest(manifest: dict[str, Any]) -> str:
    """One hash for a bundle: over its artifacts' paths and hashes, so equal bundles hash equal."""
    lines = sorted(f"{a['path']} {a['sha256']}\n" for a in manifest["artifacts"])
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def _result(cell: Cell, status: str, seconds: float, reason: str | None = None,
            manifest: dict[str, Any] | None = None) -> CellResult:
    stages = (manifest or {}).get("verification", {}).get("stages", [])
    return CellResult(
        id=cell.id, model=cell.model.label, device=cell.device.name,
        size="dynamic" if cell.device.dynamic else cell.size, runner=cell.runner_key, status=status, reason=reason,
        seconds=round(seconds, 2), path=cell.id if manifest else None,
        sha256=bundle_digest(manifest) if manifest else None,
        bytes=sum(a["bytes"] for a in manifest["artifacts"]) if manifest else None,
        verification_rel=max((s["rel"] for s in stages), default=None),
    )


def build_cells(cells: list[Cell], dist: Path, *, jobs: int = 1, timeout_s: float = 3600.0,
                on_result: Callable[[CellResult], None] | None = None,
                on_start: Callable[[Cell], None] | None = None) -> list[CellResult]:
    """Build every cell (``jobs`` at a time) and copy each bundle into ``dist``; failures are results too.
    ``on_start`` hears each cell as a worker takes it up, ``on_result`` its result (the progress display)."""
    if jobs < 1:
        raise InputError(f"--jobs must be a positive integer, got {jobs}")
    workers: queue.Queue[BuildWorker] = queue.Queue()
    parallel = min(jobs, max(1, len(cells)))
    # Each build is multi-threaded already: N parallel builds each get 1/N of the cores, not all of them.
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    for _ in range(parallel):
        workers.put(BuildWorker(timeout_s=timeout_s, threads=threads))

    def build_one(cell: Cell) -> CellResult:
        worker = workers.get()
        if on_start is not None:
            on_start(cell)
        start = time.perf_counter()
        try:
            manifest, directory = worker.build(cell.request)
            bundle = dist / cell.id
            bundle.mkdir(parents=True)
            with reading(directory):  # no other process evicts it meanwhile
                copy_tree(directory, bundle)
            result = _result(cell, "ok" if manifest["status"] == "ok" else manifest["status"],
                             time.perf_counter() - start, manifest.get("notice"), manifest)
        except VncompileError as exc:
            result = _result(cell, "failed", time.perf_counter() - start, str(exc))
        finally:
            workers.put(worker)
        if on_result is not None:
            on_result(result)
        return result

    try:  # the bundles are copied from where the cache keeps them: in use for the whole run
        with BuildCache().in_use(), ThreadPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(build_one, cells))
    finally:
        while not workers.empty():
            workers.get().close()


def write_reports(results: list[CellResult], dist: Path) -> None:
    write_json(dist / "index.json", {"schema": INDEX_SCHEMA, "bundles": [r.as_index_entry() for r in results]})
    (dist / "SUMMARY.md").write_text(summary_markdown(results))
    ET.ElementTree(junit(results)).write(dist / "junit.xml", encoding="utf-8", xml_declaration=True)


def summary_markdown(results: list[CellResult]) -> str:
    failed = sum(r.status == "failed" for r in results)
    icon = {"ok": "✅", "deferred": "⏳", "failed": "❌"}
    lines = [f"### vncompile: {len(results) - failed}/{len(results)} bundles built", "",
             "| model | device | size | status | artifacts | max verification error | build time |",
             "|---|---|---:|---|---:|---:|---:|"]
    for r in results:
        size = "-" if r.bytes is None else f"{r.bytes / 2**20:.1f} MiB"
        error = "-" if r.verification_rel is None else f"{r.verification_rel:.2e}"
        status = f"{icon.get(r.status, '')} {r.status}" + (f": {r.reason}" if r.reason else "")
        lines.append(f"| {r.model} | {r.device} | {r.size} | {status} | {size} | {error} | {r.seconds:.1f} s |")
    return "\n".join(lines) + "\n"


def junit(results: list[CellResult]) -> ET.Element:
    suite = ET.Element("testsuite", name="vncompile-ci", tests=str(len(results)),
                       failures=str(sum(r.status == "failed" for r in results)), errors="0", skipped="0",
                       time=f"{sum(r.seconds for r in results):.2f}")
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"vncompile.{r.model}", name=f"{r.device}@{r.size}",
                             time=f"{r.seconds:.2f}")
        if r.status == "failed":
            ET.SubElement(case, "failure", message=r.reason or "failed")
        elif r.status != "ok":
            ET.SubElement(case, "system-out").text = f"{r.status}: {r.reason or ''}"
    return suite


def is_ci_output(directory: Path) -> bool:
    """Whether ``directory`` holds bundles ``vncompile ci`` wrote (its index): one ``ci -o DIR --force`` replaces."""
    return holds_document(directory, "index.json", "schema", "bundles")


def run_ci(cells: list[Cell], out: Path, *, jobs: int = 1, force: bool = False, timeout_s: float = 3600.0,
           on_result: Callable[[CellResult], None] | None = None,
           on_start: Callable[[Cell], None] | None = None) -> list[CellResult]:
    """Build ``cells`` into ``out`` (written atomically) and write the index, summary and JUnit."""
    if not cells:
        raise InputError("the selection has no cells to build")
    with atomic_directory(out, is_ci_output, force=force) as tmp:
        results = build_cells(cells, tmp, jobs=jobs, timeout_s=timeout_s, on_result=on_result, on_start=on_start)
        write_reports(results, tmp)
    return results


def merge(shards: list[Path], out: Path, force: bool = False) -> list[CellResult]:
    """One ``dist/`` from several shards' outputs (the CI's last job): bundles, index, summary, JUnit."""
    results: list[CellResult] = []
    with atomic_directory(out, is_ci_output, force=force) as tmp:
        for shard in shards:
            try:
                index = json.loads((shard / "index.json").read_text())
            except (OSError, ValueError):
                raise InputError(f"{shard}: no readable index.json (is it a 'vncompile ci' output?)") from None
            for entry in index["bundles"]:
                if entry["path"] is not None:
                    if (tmp / entry["path"]).exists():
                        raise InputError(f"{shard}: bundle {entry['path']} is in two shards")
                    (tmp / entry["path"]).mkdir(parents=True)
                    copy_tree(shard / entry["path"], tmp / entry["path"])
                results.append(CellResult(**entry))
        results.sort(key=lambda r: r.id)
        write_reports(results, tmp)
    return results
