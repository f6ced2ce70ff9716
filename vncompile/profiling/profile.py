"""``vncompile profile``: max memory and latency of each (model, target, size).

Each cell is built through the same pipeline and cache as ``build`` (in a build
worker process) and measured in a process of its own (``measure``), both under
a timeout: a build failure, crash, hang or out-of-memory kill is one failed row with
its one-line reason, never the end of the profile. With ``layers``, that process also
takes the target's per-layer profile; every (model, precision, size) gets its memory
timeline from the analytic plan of its ONNX (``layer_files``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..api.options import DEFAULT_RUNTIME_PROFILE, TargetOptions
from ..api.request import BuildRequest, InputShape, ModelSource
from ..api.target import LayerRecord, Target
from ..api.tolerance import Tolerance
from ..core.errors import InputError, VncompileError
from ..core.host import machine_info, toolchain_versions
from ..core.schema import settings_of
from ..devices import DeviceConfig
from ..pipeline.build_process import BuildWorker
from ..pipeline.cache import BuildCache, reading
from ..pipeline.manifest import primary_artifact
from ..vanillanet.archs import VARIANTS
from .layer_files import LAYER_PROFILE, ProfileFiles, layers_path, memory_timeline, timeline_path, write_layers
from .measure import measure
from .reports import PROFILE_SCHEMA, cell_label

DEFAULT_MODELS = ("vanillanet_5", "resnet50", "plain_cnn_50")
DEFAULT_SIZES = (256, 384, 512)
BACKBONE_SIZES = (640, 1280)  # detection inputs (YOLO's 640, and twice that)
LAYER_RUNS = 20  # timed runs of a build's per-layer profile (``build --layers``), after one warm-up


@dataclass(frozen=True)
class ProfileRequest:
    models: tuple[ModelSource, ...]
    targets: tuple[str, ...]
    sizes: tuple[int, ...] = DEFAULT_SIZES
    precision: str | None = None  # None: each target's default (fp32; rknn fp16)
    batch: int = 1
    warmup: int = 5
    runs: int = 20
    memory_limit_kb: float | None = None
    timeout_s: float = 900.0
    options: TargetOptions = field(default_factory=TargetOptions)
    tolerance: tuple[tuple[str, Tolerance], ...] = ()
    verify: bool = True  # False: measure unverified builds (random weights at detection sizes: the float64
    # reference of every cell costs more than its measurement)
    device: DeviceConfig | None = None  # --device CONFIG.yaml: its dynamic, batch and options too
    layers: bool = False  # each cell's per-layer profile too (``Target.layer_profile``)

    def cells(self) -> list[tuple[ModelSource, str, int]]:
        return [(m, t, s) for m in self.models for t in self.targets for s in self.sizes]

    def build_request(self, source: ModelSource, target: Target, size: int, precision: str | None) -> BuildRequest:
        # Each target gets its own options (--soc is qnn's, --platform rknn's); --runtime-profile is for the
        # targets that have them, the others' memory is no session setting: their rows are built as always.
        declared = settings_of(target.own_options)
        options = dataclasses.replace(self.options, own=tuple((name, value) for name, value in self.options.own
                                                              if name in declared))
        if not target.runtime_profiles:
            options = dataclasses.replace(options, runtime_profile=DEFAULT_RUNTIME_PROFILE)
        fields = {"target": target.name, "precision": precision, "options": options, "tolerance": self.tolerance,
                  "verify": self.verify}
        if self.device is not None:
            return self.device.build_request(source, size, sizes=self.sizes, **fields)
        return BuildRequest(source, shape=InputShape.square(size, self.batch), **fields)

    def check_options(self, targets: list[Target]) -> None:
        """An option that none of the profiled targets reads is a mistake (a typo'd target list, a flag for a
        target left out), refused before anything is built."""
        from ..targets import own_option_declarations

        read = {name for target in targets for name in settings_of(target.own_options)}
        declared = own_option_declarations()
        unread = [declared[name].flag or name if name in declared else name
                  for name, _ in self.options.own if name not in read]
        if unread:
            raise InputError(f"{', '.join(unread)} {'applies' if len(unread) == 1 else 'apply'} to none of the "
                             f"profiled targets ({', '.join(self.targets)})")

    @property
    def batch_size(self) -> int:
        return self.device.batch if self.device is not None else self.batch


def profilable_targets() -> list[str]:
    """Every target that can run (or plan) here: available, with a device to measure on."""
    from ..targets import get_target, target_names

    names = []
    for name in target_names():
        availability = get_target(name).availability()
        if availability.available and availability.devices:
            names.append(name)
    return names


def _row(source: ModelSource, target: str, size: int, request: ProfileRequest) -> dict[str, Any]:
    """A row before measuring: an error until proven otherwise."""
    return {
        "model": label_of(source), "network": source.model_name, "target": target, "precision": request.precision,
        "size": size, "batch": request.batch_size, "status": "error", "reason": None, "latency": None,
        "memory": None, "artifact_sha256": None, "top1": None, "fit_memory": None, "layers": None, "timeline": None,
    }


def label_of(source: ModelSource) -> str:
    """A model's name in the tables, the files and the progress: the checkpoint's stem, else the network's label."""
    label = Path(source.checkpoint).stem if source.checkpoint is not None else source.spec_without_checkpoint().label
    return label + (f"[{source.features}]" if source.features else "")


def backbone_features(model_name: str | None, features: str) -> str:
    """What ``profile --features`` builds of each model: VanillaNet the maps asked for; the ResNet
    baselines their own four stages (C2-C5, strides 4-32: what a detector takes from them), with the
    stem when it was asked for, so the rows compare backbones, not index lists."""
    if model_name is None or model_name in VARIANTS or features == "all":
        return features
    return "stem,0,1,2,3" if "stem" in features.split(",") else "0,1,2,3"


def profile_cell(source: ModelSource, target: Target, size: int, request: ProfileRequest,
                 builder: BuildWorker, files: ProfileFiles | None = None) -> dict[str, Any]:
    """Build one cell (or take it from the cache) and measure it, each in a child process: one row; its
    per-layer table and timeline into ``files``."""
    from ..pipeline.plan import resolve

    row = _row(source, target.name, size, request)
    try:
        plan = resolve(request.build_request(source, target, size, request.precision))
        row["precision"] = precision = plan.precision
        manifest, directory = builder.build(plan.request)
    except VncompileError as exc:
        row["reason"] = str(exc)
        return row
    row["network"] = manifest["model"]["name"]
    row["artifact_sha256"] = primary_artifact(manifest)["sha256"]
    row["fit_memory"] = manifest["model"].get("fit_memory")  # --fit-memory: the tiling, its peaks and extra MACs
    accuracy = manifest.get("accuracy") or {}
    row["top1"] = accuracy.get("target", {}).get("top1")  # with --eval-data: the artifact's top-1 on the images
    if files is not None:
        _add_timeline(row, directory, files)
    if manifest["status"] != "ok":
        row["reason"] = f"{manifest['status']}: {manifest.get('notice') or 'nothing to run here'}"
        if manifest["status"] == "deferred" and manifest["memory"] is not None:  # what the build knows unrun
            row["status"], row["memory"], row["latency"] = "deferred", manifest["memory"], manifest["latency"]
        return row
    try:
        result = _measure(target.name, directory, manifest, request)
    except VncompileError as exc:
        row["reason"] = str(exc)
        return row
    row["latency"], row["memory"] = result["latency"], result["memory"]
    if request.layers:
        _add_layers(row, target.name, result, files)
    memory = result["memory"]
    row["status"] = "ok"
    limit = request.memory_limit_kb
    if memory is not None and limit is not None and memory["max_kb"] > limit:
        row["status"] = "oom"
        row["reason"] = f"needs {memory['max_kb']:,.0f} KB, over the {limit:,.0f} KB limit"
        if row["network"] in VARIANTS and request.options.fit_memory is None:
            row["fits_with_fit_memory"] = _tiled_to_fit(source, target, size, precision, request, builder)
            row["reason"] += "; " + _fit_note(row["fits_with_fit_memory"], limit)
    return row


def _measure(target: str, directory: Path, manifest: dict[str, Any], request: ProfileRequest) -> dict[str, Any]:
    """Measure a build where the cache keeps it, read-locked so no other process evicts it meanwhile."""
    with reading(directory):
        return measure(target, directory, manifest, warmup=request.warmup, runs=request.runs,
                       timeout_s=request.timeout_s, layers=request.layers)


def build_layer_profile(directory: Path, manifest: dict[str, Any], *, runs: int = LAYER_RUNS,
                        timeout_s: float = 900.0) -> list[LayerRecord] | None:
    """A build's per-layer profile, taken in a process of its own as a profile's is, written into the build
    directory as ``layer_profile.csv``; None where its target reports none."""
    result = measure(manifest["target"]["name"], directory, manifest, warmup=0, runs=runs, timeout_s=timeout_s,
                     figures=False, layers=True)
    if result.get("layers_error"):
        raise VncompileError(f"the per-layer profile failed: {result['layers_error']}")
    records = result["layers"]
    if records is not None:
        write_layers(records, directory / LAYER_PROFILE)
    return records


def _add_layers(row: dict[str, Any], target: str, result: dict[str, Any], files: ProfileFiles | None) -> None:
    """The row's per-layer table, or a note saying why it has none (a failed one costs the row nothing else)."""
    records: list[LayerRecord] | None = result["layers"]
    if records is None:
        error = result.get("layers_error")
        row["layers_note"] = f"per-layer profile failed: {error}" if error else f"{target} reports no per-layer figures"
        return
    row["layers"] = layers_path(row["model"], target, row["precision"], row["size"])
    if files is not None:
        files.layers[row["layers"]] = records


def _add_timeline(row: dict[str, Any], directory: Path, files: ProfileFiles) -> None:
    """The cell's memory timeline: one per (model, precision, size), planned from the first such cell's ONNX."""
    path = timeline_path(row["model"], row["precision"], row["size"])
    if path not in files.timelines:
        try:
            with reading(directory):
                files.timelines[path] = memory_timeline(directory / "model.onnx", row["precision"], directory)
        except VncompileError:  # a dynamic graph has no static plan
            return
        except Exception as exc:  # noqa: BLE001 - a timeline is a report: its failure is a note, never the profile's end
            row["timeline_note"] = f"no memory timeline: {type(exc).__name__}: {exc}"
            return
    row["timeline"] = path


def _tiled_to_fit(source: ModelSource, target: Target, size: int, precision: str, request: ProfileRequest,
                  builder: BuildWorker) -> dict[str, Any]:
    """An OOM VanillaNet cell built again with ``--fit-memory LIMIT`` and measured: what the tiling reaches."""
    options = dataclasses.replace(request.options, fit_memory=request.memory_limit_kb)
    fitted = dataclasses.replace(request, options=options)
    try:
        manifest, directory = builder.build(fitted.build_request(source, target, size, precision))
        result = _measure(target.name, directory, manifest, request)
    except VncompileError as exc:
        return {"fits": False, "reason": str(exc)}
    if manifest["status"] != "ok" or result["memory"] is None:
        return {"fits": False, "reason": f"--fit-memory: {manifest['status']} build, no memory figure"}
    memory = result["memory"]
    fits = memory["max_kb"] <= request.memory_limit_kb
    return {"fits": fits, "memory": memory, "latency": result["latency"],
            "tiling": manifest["model"]["fit_memory"]["tiling"],
            "extra_macs": manifest["model"]["fit_memory"]["extra_macs"]}


def _fit_note(fit: dict[str, Any], limit: float) -> str:
    if "reason" in fit:
        return fit["reason"].removeprefix("build failed: ")  # --fit-memory's own line: the smallest peak
    peak = f"{fit['memory']['max_kb']:,.0f} KB {fit['memory']['source']}"
    tiling = fit["tiling"]
    how = f"{tiling['stages']} stage(s) in {tiling['strips']} strips" if tiling else "untiled"
    if not fit["fits"]:
        return f"with --fit-memory still {peak} ({how})"
    return f"fits with --fit-memory {limit:,.0f}KB: {peak} ({how})"


def run_profile(request: ProfileRequest, on_row: Callable[[dict[str, Any]], None] | None = None,
                on_start: Callable[[str], None] | None = None,
                files: ProfileFiles | None = None) -> dict[str, Any]:
    """Every cell of the matrix, in order; the profile document (``profile.json``). ``on_start`` hears each cell's
    label (``cell_label``) as it starts, ``on_row`` its row as it ends: the progress display. The per-layer tables
    and timelines its rows name go into ``files`` (``write_profile`` writes them)."""
    from ..targets import get_target

    targets = {name: get_target(name) for name in request.targets}  # looked up once: the cells take the objects
    request.check_options(list(targets.values()))
    rows = []
    # The builds are measured where the cache keeps them: in use for the whole run.
    with BuildCache().in_use(), BuildWorker(timeout_s=request.timeout_s) as builder:
        for source, target, size in request.cells():
            if on_start is not None:
                on_start(cell_label(label_of(source), target, size))
            row = profile_cell(source, targets[target], size, request, builder, files)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    packages = sorted({p for t in targets.values() for p in t.packages})
    return {
        "schema": PROFILE_SCHEMA,
        "vncompile": __version__,
        "machine": machine_info(),
        "toolchain": toolchain_versions(*packages),
        "settings": {"sizes": list(request.sizes),
                     "features": sorted({m.features for m in request.models if m.features}),
                     "precision": request.precision or "each target's default",
                     "batch": request.batch_size, "device": request.device.name if request.device else None,
                     "runtime_profile": request.options.runtime_profile,
                     "warmup": request.warmup, "runs": request.runs, "memory_limit_kb": request.memory_limit_kb,
                     "layers": request.layers},
        "rows": rows,
        "paper_table1": paper_table1(),
    }


def paper_table1() -> dict[str, Any]:
    from importlib.resources import files

    tables = json.loads(files("vncompile").joinpath("data/paper_tables.json").read_text())
    return tables["table1_mobile_npu_max_memory_kb"]
