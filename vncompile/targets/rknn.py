"""Rockchip RKNN: rknn-toolkit2 compiles the ONNX into ``model.rknn`` for a Rockchip NPU.

rknn-toolkit2 pins numpy<=1.26.4, onnx<=1.18 and torch<=2.4, so it lives in its own
environment (``vncompile toolchain install rknn``) and is driven through a worker
process (``vncompile.toolchains``); nothing here imports it.

- Both precisions hand the toolkit the fp32 ONNX: it converts to fp16 itself, and
  for int8 it quantizes itself from the calibration inputs (our Q/DQ graph would be
  a second, different quantization). The ONNX takes normalized inputs, so the
  toolkit's own mean/std stay at 0/1.
- Verification runs the toolkit's x86 simulator. The simulator refuses a model
  loaded from a ``.rknn`` file ("RKNN model that loaded by 'load_rknn' not support
  inference on the simulator"), and a ``.rknn`` is not byte-reproducible (its header
  carries heap addresses), so ``load`` rebuilds from the bundle's ``model.onnx`` with
  the recorded settings and the same calibration set, and refuses a rebuild whose
  memory plan or cycle count differs from the recorded compile.
- Memory is the compiler's plan (``Total Internal/Weight Memory Size``), latency the
  sum of the per-layer cycle estimates at the SoC's NPU clock; both come from the
  verbose build's output, which also goes to ``build.log``. The per-layer table is
  saved as ``rknn_layers.csv``. With a board (``--rknn-target``), the toolkit's
  ``eval_memory``/``eval_perf`` on the board replace both (untested here: no board).
"""

from __future__ import annotations

import csv
import hashlib
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..api.options import TargetOptions
from ..api.request import BuildRequest, InputShape
from ..api.target import (
    Artifact,
    Availability,
    CompileContext,
    CompileResult,
    LatencyFigure,
    MemoryFigure,
    OnnxForm,
    Session,
    Target,
    facts,
)
from ..core.errors import InputError, VerificationError, VncompileError
from ..core.units import BYTES_PER_KB, kb, unit_kb
from ..data.calibration import calibration_samples
from ..toolchains import Worker, WorkerReply, WorkerRequestFailed, get_spec, locate, missing_message, start_worker

log = logging.getLogger("vncompile")

PLATFORMS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1106", "rv1103", "rv1126b")
DEFAULT_PLATFORM = "rk3588"
INT8_ONLY = frozenset({"rv1106", "rv1103"})  # the toolkit refuses do_quantization=False for these
QUANT_ALGORITHMS = ("normal", "mmse", "kl_divergence")  # 'gdq' exists only for w4a16/w8a16
MAX_OPSET = 19  # the toolkit's ONNX loader
RKNN_MODEL, LAYER_TABLE = "model.rknn", "rknn_layers.csv"
BUILD_TIMEOUT_S, RUN_TIMEOUT_S = 3600.0, 600.0


@dataclass(frozen=True)
class NpuClock:
    mhz: float
    source: str

    def milliseconds(self, cycles: int) -> float:
        return cycles / (self.mhz * 1e3)


# The clock the cycle estimate is converted at: the NPU's top operating point.
# RK3588: Rockchip's kernel device tree (rk3588s.dtsi, npu-opp-table) tops out at 1 GHz, and its
# rockchip,init-freq is 1 GHz. For the others we found no primary source and assume the family's
# 1 GHz top OPP (RK3576: 950 MHz); the figure's detail says which.
NPU_CLOCKS: dict[str, NpuClock] = {
    "rk3588": NpuClock(1000, "top NPU OPP in Rockchip's rk3588s.dtsi"),
    "rk3576": NpuClock(950, "assumed top NPU OPP"),
    "rk3568": NpuClock(1000, "assumed top NPU OPP"),
    "rk3566": NpuClock(1000, "assumed top NPU OPP"),
    "rk3562": NpuClock(1000, "assumed top NPU OPP"),
    "rv1106": NpuClock(1000, "assumed top NPU OPP"),
    "rv1103": NpuClock(1000, "assumed top NPU OPP"),
    "rv1126b": NpuClock(1000, "assumed top NPU OPP"),
}


# ---------------------------------------------------------------------------- the compiler's output

COMPILER_LINE = re.compile(r"^[DIWE] RKNN: \[[^\]]*\] ?(.*)$")
MEMORY_LINE = re.compile(r"Total (Internal|Weight) Memory Size:\s*([\d.]+)\s*([KMG]?B)")
LAYER_HEADER = "Cycles(DDR/NPU/Total)"
COLUMN_NAMES = {"ID": "id", "OpType": "op_type", "DataType": "data_type", "Target": "target",
                "InputShape": "input_shape", "OutputShape": "output_shape", "SparseRatio": "sparse_ratio",
                "RW(KB)": "rw_kb", "FullName": "full_name"}
TOOLKIT_ERROR = re.compile(r"^E (\w+): (.+)$")


@dataclass(frozen=True)
class RknnMemoryPlan:
    internal_kb: float  # activations (feature maps) the compiler places in DDR
    weight_kb: float

    @property
    def total_kb(self) -> float:
        return self.internal_kb + self.weight_kb

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "total_kb": self.total_kb}


@dataclass(frozen=True)
class CompilerReport:
    memory: RknnMemoryPlan
    layers: list[dict[str, Any]]

    @property
    def cycles(self) -> int:
        return sum(row["cycles_total"] for row in self.layers)


def compiler_lines(output: list[str]) -> list[str]:
    """The compiler's own lines (``D RKNN: [time] ...``), without their prefix."""
    return [m.group(1) for m in map(COMPILER_LINE.match, output) if m]


def parse_memory_plan(output: list[str]) -> RknnMemoryPlan:
    sizes: dict[str, float] = {}
    for line in compiler_lines(output):
        match = MEMORY_LINE.search(line)
        if match:
            sizes[match.group(1)] = float(match.group(2)) * unit_kb(match.group(3))
    if set(sizes) != {"Internal", "Weight"}:
        raise VncompileError("rknn-toolkit2 printed no memory plan ('Total Internal/Weight Memory Size'); "
                             "its output is in build.log")
    return RknnMemoryPlan(internal_kb=sizes["Internal"], weight_kb=sizes["Weight"])


def parse_layer_table(output: list[str]) -> list[dict[str, Any]]:
    """The last 'Network Layer Information Table' the compiler printed, one dict per layer."""
    tables: list[list[dict[str, Any]]] = []
    columns: list[str] | None = None
    for line in compiler_lines(output):
        if LAYER_HEADER in line:
            columns = line.split()
            tables.append([])
        elif columns is not None and line.strip() and set(line.strip()) <= {"-"}:
            if tables[-1]:  # the rule after the rows ends the table; the one under the header does not
                columns = None
        elif columns is not None:
            fields = line.split(None, len(columns) - 1)
            if len(fields) == len(columns) and fields[0].isdigit():
                tables[-1].append(_layer_row(columns, fields))
    return tables[-1] if tables else []


def _layer_row(columns: list[str], fields: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for column, value in zip(columns, fields, strict=True):
        if column == LAYER_HEADER:
            ddr, npu, total = (int(v) for v in value.split("/"))
            row.update(cycles_ddr=ddr, cycles_npu=npu, cycles_total=total)
        else:
            name = COLUMN_NAMES.get(column, column.lower())
            row[name] = int(value) if name == "id" else float(value) if name == "rw_kb" else value
    return row


def write_layer_table(layers: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(layers[0]))
        writer.writeheader()
        writer.writerows(layers)


def read_layer_cycles(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(row["cycles_total"]) for row in csv.DictReader(f)]


def toolkit_failure(exc: WorkerRequestFailed) -> VncompileError:
    """A failed request in the toolkit's own words: the reason it logged (``E build: ...``) when it
    returned an error code, else the last line of the exception it raised (its log line is then
    only the word 'Traceback')."""
    said = [m for m in map(TOOLKIT_ERROR.match, (line.strip() for line in exc.output))
            if m and not m.group(2).startswith("Traceback")]
    step, reason = (said[-1].group(1), said[-1].group(2)) if said else (exc.op, exc.error)
    return VncompileError(f"rknn-toolkit2 failed to {step}: {reason}")


# ---------------------------------------------------------------------------- talking to the toolkit


@dataclass(frozen=True)
class RknnSettings:
    """What a build asks the toolkit for; recorded in the manifest so ``load`` can ask again."""

    platform: str
    precision: str
    quant_algorithm: str | None  # int8 only

    @classmethod
    def of_request(cls, request: BuildRequest) -> RknnSettings:
        int8 = request.precision == "int8"
        return cls(request.options.platform or DEFAULT_PLATFORM, request.precision,
                   (request.options.quant_algorithm or "normal") if int8 else None)

    @classmethod
    def of_manifest(cls, manifest: dict[str, Any]) -> RknnSettings:
        recorded = facts(manifest)
        return cls(recorded["platform"], manifest["target"]["precision"], recorded.get("quant_algorithm"))


def _request(worker: Worker, op: str, args: dict[str, Any] | None = None,
             timeout: float = RUN_TIMEOUT_S) -> WorkerReply:
    try:
        return worker.request(op, args, timeout=timeout)
    except WorkerRequestFailed as exc:
        raise toolkit_failure(exc) from None


def _compile(worker: Worker, onnx: Path, settings: RknnSettings, dataset: Path | None,
             export: Path | None) -> CompilerReport:
    """Build ``onnx`` (and write the .rknn to ``export``). The toolkit reads and writes only paths inside
    the worker's directory, the same length for everyone: their lengths move its heap, whose addresses
    end up in the .rknn (see ``toolchains.worker``). ``dataset`` is written there already."""
    assert worker.scratch is not None, "start_worker gives every toolchain worker its directory"
    model, exported = worker.scratch / "model.onnx", worker.scratch / RKNN_MODEL
    shutil.copyfile(onnx, model)
    reply = _request(worker, "build", {"onnx": str(model), "platform": settings.platform,
                                       "quantize": settings.precision == "int8",
                                       "quant_algorithm": settings.quant_algorithm,
                                       "dataset": None if dataset is None else str(dataset),
                                       "export": None if export is None else str(exported)}, BUILD_TIMEOUT_S)
    if export is not None:
        shutil.move(exported, export)
    layers = parse_layer_table(reply.output)
    if not layers:
        raise VncompileError("rknn-toolkit2 printed no per-layer table ('Network Layer Information Table'); "
                             "its output is in build.log")
    return CompilerReport(parse_memory_plan(reply.output), layers)


def write_dataset(samples: np.ndarray, batch: int, directory: Path) -> Path:
    """The toolkit's calibration list: one .npy per input batch, NCHW with the batch axis, as it requires."""
    count = max(1, len(samples) // batch)
    paths = []
    for i in range(count):
        chunk = samples[i * batch:(i + 1) * batch]
        if len(chunk) < batch:  # fewer samples than one batch: repeat them
            chunk = np.resize(chunk, (batch, *chunk.shape[1:]))
        path = directory / f"calibration_{i:04d}.npy"
        np.save(path, np.ascontiguousarray(chunk, dtype=np.float32))
        paths.append(str(path))
    dataset = directory / "dataset.txt"
    dataset.write_text("\n".join(paths) + "\n")
    return dataset


def calibration_identity(samples: np.ndarray, directory: Path | None) -> dict[str, Any]:
    return {"directory": None if directory is None else str(Path(directory).resolve()), "samples": len(samples),
            "sha256": hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()}


def _recorded_calibration(manifest: dict[str, Any]) -> np.ndarray:
    """The build's calibration set again (a directory's files, or the seeded synthetic set), checked by hash."""
    recorded = facts(manifest)["calibration"]
    directory = None if recorded["directory"] is None else Path(recorded["directory"])
    samples = calibration_samples(directory, InputShape(*manifest["input_shape"]), count=recorded["samples"])
    if calibration_identity(samples, directory)["sha256"] != recorded["sha256"]:
        raise VerificationError(f"the calibration set {directory or '(synthetic)'} changed since the build; the "
                                "simulator must quantize with the same one (rebuild with --force)")
    return samples


class RknnSimulatorSession(Session):
    """model.onnx rebuilt with the recorded settings in a persistent worker, run on the toolkit's simulator."""

    def __init__(self, worker: Worker) -> None:
        assert worker.scratch is not None, "start_worker gives every toolchain worker its directory"
        self._worker, self._scratch = worker, worker.scratch

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        batch = self._scratch / "input.npy"
        np.save(batch, np.ascontiguousarray(x, dtype=np.float32))
        reply = _request(self._worker, "infer", {"inputs": [str(batch)], "output_dir": str(self._scratch)})
        return [np.load(path).astype(np.float32) for path in reply.result["outputs"]]

    def close(self) -> None:
        self._worker.close()  # the worker's process and its directory (the worker's finalizer is the safety net)


# ---------------------------------------------------------------------------- the target


class RknnTarget(Target):
    name = "rknn"
    description = "Rockchip NPU via rknn-toolkit2 (verified on its x86 simulator)"
    precisions = ("fp16", "int8")
    devices = ("simulator",)

    def availability(self) -> Availability:
        installed = locate("rknn")
        if not installed.installed:
            return Availability(False, installed.version, missing_message(installed))
        return Availability(True, installed.version, "", self.devices)

    def default_precision(self, options: TargetOptions) -> str:
        """The precision to build when none is asked for: fp16 where the NPU has it, int8 on the int8-only SoCs."""
        return "int8" if (options.platform or DEFAULT_PLATFORM) in INT8_ONLY else "fp16"

    def cache_identity(self) -> dict[str, str | None]:
        """The toolkit in its own environment, and that environment's spec (``packages`` can only name
        distributions of vncompile's environment)."""
        installed = locate("rknn")
        return {"rknn-toolkit2": installed.version, "rknn-toolchain": get_spec("rknn").fingerprint()}

    def onnx_form(self, precision: str) -> OnnxForm:
        return "fp32"  # the toolkit makes its own fp16 and int8 from the float graph

    def check_request(self, request: BuildRequest) -> None:
        options = request.options
        platform = options.platform or DEFAULT_PLATFORM
        if platform not in PLATFORMS:
            raise InputError(f"unknown --platform '{platform}'; rknn builds for {', '.join(PLATFORMS)}")
        if request.precision not in self.precisions:
            suggestion = "int8" if platform in INT8_ONLY else "fp16 (or int8)"
            raise InputError(f"rknn builds fp16 or int8 (the NPU computes no {request.precision}); "
                             f"pass --precision {suggestion}")
        if request.precision == "fp16" and platform in INT8_ONLY:
            raise InputError(f"{platform} runs int8 only (its NPU has no fp16 path); pass --precision int8")
        if options.quant_algorithm is not None and request.precision != "int8":
            raise InputError("--quant-algorithm applies to --precision int8")
        if (options.quant_algorithm or "normal") not in QUANT_ALGORITHMS:
            raise InputError(f"unknown --quant-algorithm '{options.quant_algorithm}'; choose from "
                             f"{', '.join(QUANT_ALGORITHMS)}")
        self._check_graph(request)

    def _check_graph(self, request: BuildRequest) -> None:
        device = request.options.device
        if device not in (None, *self.devices):
            raise InputError(f"rknn verifies on its simulator, not --device {device}; a board is --rknn-target ID")
        if request.dynamic:
            raise InputError("rknn compiles static input shapes; drop --dynamic")
        if request.opset > MAX_OPSET:
            raise InputError(f"rknn-toolkit2 reads ONNX opset <= {MAX_OPSET}, not {request.opset}; "
                             f"pass --opset {MAX_OPSET} or lower")
        if request.options.io_dtype != "fp32":
            raise InputError("--io-dtype applies to fp16 ONNX graphs; rknn takes float32 inputs and converts itself")

    def compile(self, ctx: CompileContext) -> CompileResult:
        settings = RknnSettings.of_request(ctx.request)
        with start_worker("rknn", ctx.log) as worker:
            assert worker.scratch is not None
            dataset = None
            if settings.precision == "int8":
                assert ctx.calibration is not None, "the pipeline passes calibration inputs for int8"
                dataset = write_dataset(ctx.calibration, ctx.request.shape.batch, worker.scratch)
            report = _compile(worker, ctx.onnx_path, settings, dataset, ctx.build_dir / RKNN_MODEL)
            toolkit = worker.facts.get("version")
        write_layer_table(report.layers, ctx.build_dir / LAYER_TABLE)
        clock = NPU_CLOCKS[settings.platform]
        ctx.log.info("rknn: %s %s, memory plan %.1f KB internal + %.1f KB weights, %d layers, %d cycles",
                     settings.platform, settings.precision, report.memory.internal_kb, report.memory.weight_kb,
                     len(report.layers), report.cycles)
        info = {
            "platform": settings.platform,
            "quant_algorithm": settings.quant_algorithm,
            "calibration": None if ctx.calibration is None else calibration_identity(
                ctx.calibration, ctx.request.options.calibration),
            "toolkit": f"rknn-toolkit2 {toolkit}",
            "memory_plan": report.memory.as_dict(),
            "layers": len(report.layers),
            "npu_cycles": report.cycles,
            "npu_clock_mhz": clock.mhz,
            "npu_clock_source": clock.source,
            "estimated_latency_ms": clock.milliseconds(report.cycles),
            "board": ctx.request.options.board,
            "verified_on": "rknn-toolkit2 simulator (rebuilt from model.onnx)",
        }
        return CompileResult([Artifact(RKNN_MODEL, "rknn", primary=True), Artifact(LAYER_TABLE, "rknn-layers")],
                             facts=info)

    def load(self, build_dir: Path, manifest: dict[str, Any]) -> Session:
        settings = RknnSettings.of_manifest(manifest)
        calibration = _recorded_calibration(manifest) if settings.precision == "int8" else None
        worker = start_worker("rknn", log)
        try:
            assert worker.scratch is not None
            dataset = None if calibration is None else write_dataset(calibration, manifest["input_shape"][0],
                                                                     worker.scratch)
            report = _compile(worker, build_dir / "model.onnx", settings, dataset, export=None)
            _check_same_compile(report, manifest)
            _request(worker, "init_runtime", {"target": None})  # None: the simulator
        except BaseException:
            worker.close()
            raise
        return RknnSimulatorSession(worker)

    def compiler_memory(self, build_dir: Path, manifest: dict[str, Any]) -> MemoryFigure | None:
        target = facts(manifest)
        if target.get("board"):
            return _board_memory(build_dir, manifest)
        plan = target["memory_plan"]
        return MemoryFigure(max_kb=plan["total_kb"], source="compiler", weights_kb=plan["weight_kb"],
                            activations_kb=plan["internal_kb"],
                            detail=f"{target['toolkit']} memory plan for {target['platform']} "
                                   f"{manifest['target']['precision']}")

    def estimated_latency(self, build_dir: Path, manifest: dict[str, Any]) -> LatencyFigure | None:
        target = facts(manifest)
        if target.get("board"):
            return _board_latency(build_dir, manifest)
        cycles = read_layer_cycles(build_dir / LAYER_TABLE)
        clock = NPU_CLOCKS[target["platform"]]
        detail = (f"sum of {len(cycles)} layers' total cycles from the rknn compiler at {clock.mhz:g} MHz "
                  f"({target['platform']}: {clock.source}); one pass through the layers in order, no overlap")
        return LatencyFigure([clock.milliseconds(sum(cycles))], "estimated", detail)


def _check_same_compile(report: CompilerReport, manifest: dict[str, Any]) -> None:
    recorded = facts(manifest)
    if report.memory.as_dict() != recorded["memory_plan"] or report.cycles != recorded["npu_cycles"]:
        raise VerificationError(
            f"the simulator's rebuild of model.onnx differs from the compile that wrote {RKNN_MODEL} (memory plan "
            f"{report.memory.total_kb:.1f} vs {recorded['memory_plan']['total_kb']:.1f} KB, {report.cycles} vs "
            f"{recorded['npu_cycles']} cycles); rebuild with --force")


# ---------------------------------------------------------------------------- a connected board


def _on_board(build_dir: Path, manifest: dict[str, Any], op: str, **runtime: bool) -> WorkerReply:
    """``op`` (eval_perf / eval_memory) on the board running the bundle's model.rknn itself."""
    target = facts(manifest)
    with start_worker("rknn", log, inherit=("PATH",)) as worker:  # the user's PATH: where their adb is
        _request(worker, "load_rknn", {"path": str(build_dir / RKNN_MODEL)})
        _request(worker, "init_runtime", {"target": target["platform"], "device_id": target["board"], **runtime})
        return _request(worker, op)


def _board_latency(build_dir: Path, manifest: dict[str, Any]) -> LatencyFigure:
    reply = _on_board(build_dir, manifest, "eval_perf")
    result = reply.result.get("result")
    microseconds = _number(result, ("total_time", "total_elapsed_time"), reply.output,
                           r"Total Operator Elapsed (?:Per Frame )?Time\(us\):\s*([\d.]+)")
    return LatencyFigure([microseconds / 1000], "measured",
                         f"rknn eval_perf on board {facts(manifest)['board']} (fixed frequency)")


def _board_memory(build_dir: Path, manifest: dict[str, Any]) -> MemoryFigure:
    reply = _on_board(build_dir, manifest, "eval_memory", eval_mem=True)
    result = reply.result.get("result")
    weights = _number(result, ("total_weight_allocation",), reply.output, r"Weight Memory:\s*([\d.]+ \w+)")
    internal = _number(result, ("total_internal_allocation",), reply.output,
                       r"Internal Tensor Memory:\s*([\d.]+ \w+)")
    total = _number(result, ("total_model_allocation",), reply.output, r"Total Memory:\s*([\d.]+ \w+)")
    return MemoryFigure(max_kb=kb(total), source="measured", weights_kb=kb(weights), activations_kb=kb(internal),
                        detail=f"rknn eval_memory on board {facts(manifest)['board']}")




def _number(result: Any, keys: tuple[str, ...], output: list[str], pattern: str) -> float:
    """A figure from the toolkit's returned dict, else from what it printed (bytes for sizes, us for times)."""
    # (the toolkit prints sizes with a unit and times without one)
    if isinstance(result, dict):
        for key in keys:
            if isinstance(result.get(key), (int, float)):
                return float(result[key])
    for line in reversed(output):
        match = re.search(pattern, line)
        if match:
            value, _, unit = match.group(1).partition(" ")
            return float(value) * unit_kb(unit) * BYTES_PER_KB if unit else float(value)
    raise VncompileError(f"rknn-toolkit2 reported no {keys[0]} on the board; its output is in the log")
