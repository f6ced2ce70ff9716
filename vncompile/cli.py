"""The ``vncompile`` command line: thin click wrappers over the pipeline.

Every failure a user can cause ends as one line on stderr and a non-zero exit:
2 for bad input, 1 for a build or verification that failed, 3 for a bug (set
``VNCOMPILE_DEBUG=1`` to see its traceback). Heavy modules (torch, the runtimes)
are imported inside the commands, so ``vncompile --help`` stays instant.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from . import __version__
from .api.options import TargetOptions
from .api.request import InputShape
from .api.tolerance import parse_tolerance
from .core.errors import InputError, VncompileError
from .core.schema import IntList, Kind, MemorySize, OneOf, PathKind, PositiveInt, PositiveNumber, settings_of


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    sys.exit(code)


def _reserve_stdout() -> None:
    """Keep the process's stdout for what vncompile prints (``--json``, ``--format json``): native libraries
    loaded in-process (onnxruntime-qnn's prints a banner on loading) write to file descriptor 1, so that
    descriptor becomes stderr and ``sys.stdout`` a copy of the original. Only where stdout is the real
    descriptor 1 (not a test's capture)."""
    try:
        if sys.stdout.fileno() != 1:
            return
    except (AttributeError, ValueError, OSError):
        return
    sys.stdout.flush()
    try:
        original = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no stderr to send them to: leave stdout as it is
        return
    sys.stdout = open(original, "w", encoding=sys.stdout.encoding, errors=sys.stdout.errors,  # noqa: SIM115
                      buffering=1, closefd=True)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn every failure into one line."""
    _reserve_stdout()
    try:
        cli.main(args=argv, prog_name="vncompile", standalone_mode=False)
    except VncompileError as exc:
        _fail(str(exc), exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        _fail("aborted", 130)
    except click.ClickException as exc:
        where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) else ""
        _fail(f"{where}{exc.format_message()}", exc.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except Exception as exc:  # a bug: still one line, unless the user asks for the traceback
        if os.environ.get("VNCOMPILE_DEBUG"):
            raise
        _fail(f"internal error: {type(exc).__name__}: {exc} (set VNCOMPILE_DEBUG=1 for the traceback)", 3)
    sys.exit(0)


def _print_json(document: Any) -> None:
    from .core.io import json_text

    click.echo(json_text(document), nl=False)


# ---------------------------------------------------------------- parameter types: the command line declares,
# the declarations (core.schema kinds, api parsers) convert and validate


class TextParam(click.ParamType):
    """A click type over a parser: a ``core.schema`` kind's (the same conversion as a config file's value,
    ``ValueError`` -> "must be <expected>") or one of the api's (``InputError`` with its own words)."""

    def __init__(self, parse: Any, name: str, expected: str = "") -> None:
        self.parse, self.name, self.expected = parse, name, expected

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except InputError as exc:
            self.fail(str(exc), param, ctx)
        except ValueError:
            self.fail(f"must be {self.expected}, got '{value}'", param, ctx)


def KindParam(kind: Kind, name: str) -> TextParam:  # noqa: N802 - a click type, like click.Choice
    return TextParam(kind.from_text, name, kind.expected)




POSITIVE = KindParam(PositiveInt(), "integer")
SIZES = KindParam(IntList("comma-separated positive integers, e.g. 256,384,512"), "sizes")
MEMORY_SIZE = KindParam(MemorySize(), "size")
SECONDS = KindParam(PositiveNumber("a positive number of seconds"), "seconds")
SHAPE = TextParam(InputShape.parse, "NxCxHxW")
TOLERANCE = TextParam(parse_tolerance, "PRECISION=rel:X|cosine:X")


def _parse_shard(text: str) -> tuple[int, int]:
    from .ci.matrix import parse_shard

    return parse_shard(text)


SHARD = TextParam(_parse_shard, "i/n")


def _click_type(kind: Kind) -> Any:
    if isinstance(kind, OneOf):
        return click.Choice(kind.choices)
    if isinstance(kind, PathKind):
        return click.Path(path_type=Path)
    return KindParam(kind, kind.__class__.__name__.lower())


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="vncompile")
def cli() -> None:
    """Compile VanillaNet checkpoints into verified device artifacts, and profile them.

    \b
    vncompile build --target openvino ckpt.pth      checkpoint -> verified artifact
    vncompile profile --sizes 256,384,512            memory/latency table (paper Table 1)
    vncompile inspect ckpt.pth                       what a checkpoint holds
    """


# ---------------------------------------------------------------- shared options

MODEL_HELP = "network when no checkpoint is given (random weights), or to disambiguate one"


FEATURES_HELP = ("a headless backbone whose outputs are these stages' maps: 0-based stage indices as in the "
                 "official detection configs' out_indices (e.g. 0,1,8,10), 'stem' for the stem's map, 'all' for both")


def features_option(f):
    return click.option("--features", metavar="INDICES", help=FEATURES_HELP)(f)


def model_options(f):
    """Options naming the network: a checkpoint argument and/or --model/--width/--weights, --features/--prefix."""
    f = click.option("--prefix", metavar="PREFIX",
                     help="where a detector's state_dict keeps the backbone, e.g. model.0. (default: detected)")(f)
    f = features_option(f)
    f = click.option("--weights", type=click.Choice(["auto", "model", "model_ema"]), default="auto",
                     show_default=True, help="which weights of a training checkpoint (auto: model_ema if present)")(f)
    f = click.option("--act-num", type=int, help="series activation n of a --model network (kernel 2n+1; the "
                                                 "official detection backbones use 4)  [default: the variant's, 3]")(f)
    f = click.option("--width", type=float, default=1.0, show_default=True,
                     help="width multiplier of a --model network (narrow models for quick tests)")(f)
    f = click.option("--model", "model_name", metavar="NAME", help=MODEL_HELP)(f)
    f = click.argument("checkpoint", required=False, type=click.Path(path_type=Path))(f)
    return f


def _source(checkpoint: Path | None, model_name: str | None, width: float, act_num: int | None, weights: str,
            act_learn: float | None = None, features: str | None = None, prefix: str | None = None):
    from .api.request import ModelSource

    return ModelSource(checkpoint=checkpoint, model_name=model_name, width=width, act_num=act_num, weights=weights,
                       act_learn=act_learn, features=features, prefix=prefix)


# ---------------------------------------------------------------- inspect / deploy


@cli.command()
@model_options
@click.option("--size", type=POSITIVE, default=224, show_default=True,
              help="input size for the MAC count")
@click.option("--json", "as_json", is_flag=True, help="print the facts as JSON on stdout")
def inspect(checkpoint, model_name, width, act_num, weights, features, prefix, size, as_json) -> None:
    """What a checkpoint (or --model) is: variant, form, act_learn, params and MACs; a detector's backbone.
    An ONNX file: its input, outputs, what it detects, and what the exact deploy fusion does to it."""
    from .console import render_description, render_graph_description
    from .pipeline.inspection import describe
    from .pipeline.stages import load_model

    source = _source(checkpoint, model_name, width, act_num, weights, features=features, prefix=prefix)
    if source.is_onnx:
        from .pipeline.external import describe_graph
        from .pipeline.plan import external_graph

        facts = describe_graph(*external_graph(source))
        render = render_graph_description
    else:
        facts = describe(load_model(source), size)
        render = render_description
    if as_json:
        _print_json(facts)
    else:
        render(facts)


@cli.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="OUT.safetensors or OUT.pth (the official {'model': state_dict} layout)")
@click.option("--model", "model_name", metavar="NAME", help="disambiguate the variant")
@click.option("--weights", type=click.Choice(["auto", "model", "model_ema"]), default="auto", show_default=True)
@click.option("--force", is_flag=True, help="replace an existing output")
def deploy(checkpoint, output, model_name, weights, force) -> None:
    """Write the fused deploy checkpoint (the official --switch_to_deploy)."""
    from .api.request import ModelSource
    from .core.io import atomic_file
    from .pipeline.stages import fuse, load_model
    from .vanillanet.checkpoint import deploy_payload, write_deploy_checkpoint

    formats = {".safetensors": "safetensors", ".pth": "torch", ".pt": "torch"}
    fmt = formats.get(output.suffix)
    if fmt is None:
        raise InputError(f"{output}: the output must end in .safetensors, .pth or .pt")
    loaded = load_model(ModelSource(checkpoint=checkpoint, model_name=model_name, weights=weights))
    fused = fuse(loaded)
    tensors, metadata = deploy_payload(fused.network, fused.spec)
    with atomic_file(output, force=force) as tmp:
        write_deploy_checkpoint(tensors, metadata, tmp, fmt)
    click.echo(f"wrote {output} ({fused.spec.label}, deploy form, {len(tensors)} tensors)", err=True)


# ---------------------------------------------------------------- build / targets


def _option_declarations() -> dict[str, Any]:
    """Every option a build takes by name: the common ones (``TargetOptions``) and each target's own."""
    from .targets import own_option_declarations

    return {**{name: spec for name, (_f, spec) in settings_of(TargetOptions).items()}, **own_option_declarations()}


def target_options(f):
    """The target options, one flag per declared setting (device configs set the same): the common ones, then every
    target's own (``Target.own_options``; a build refuses those of another target)."""
    for name, spec in reversed(_option_declarations().items()):
        if spec.flag is not None:
            f = click.option(spec.flag, name, type=_click_type(spec.kind), help=spec.help)(f)
    return f


def tolerance_option(f):
    return click.option("--tolerance", "tolerance", type=TOLERANCE, multiple=True, metavar="PRECISION=KIND:VALUE",
                        help="verification tolerance, e.g. fp16=rel:3e-2 or int8=cosine:0.98 (repeatable)")(f)


def _target_options(kwargs: dict[str, Any], base: TargetOptions | None = None) -> TargetOptions:
    """Pop the target options out of a command's keyword arguments: the ones typed, on top of ``base``."""
    from .data.calibration import with_data_hashes

    common = settings_of(TargetOptions)
    typed = {name: kwargs.pop(name) for name in list(_option_declarations()) if name in kwargs}
    typed = {name: value for name, value in typed.items() if value is not None}
    options = dataclasses.replace(base or TargetOptions(), **{k: v for k, v in typed.items() if k in common})
    return with_data_hashes(options.with_own({k: v for k, v in typed.items() if k not in common}))


def _device_config(kwargs: dict[str, Any]):
    """The device config named by --device, if it names a file rather than a device (then --device is consumed)."""
    from .devices import is_device_config, load_device_config

    if not is_device_config(kwargs.get("device")):
        return None
    return load_device_config(Path(kwargs.pop("device")))


@cli.command()
@model_options
@click.option("-t", "--target", help="backend (see 'vncompile targets'); or take it from --device CONFIG.yaml")
@click.option("--precision", help="fp32 | fp16 | bf16 | int8 | int16 (qnn: 16-bit activations, 8-bit weights)  "
                                  "[default: fp32; rknn: fp16, or int8 where only that; qnn, ethos-u: int8]")
@click.option("--size", type=POSITIVE, help="square input size  [default: 224]")
@click.option("--input-shape", type=SHAPE, metavar="NxCxHxW", help="explicit input shape, e.g. 1x3x224x224")
@click.option("--batch", type=POSITIVE, default=1, show_default=True)
@click.option("--dynamic", is_flag=True, help="dynamic batch, height and width")
@click.option("--opset", type=int, default=18, show_default=True)
@click.option("--simplifier", default="onnxslim", show_default=True, help="onnxslim | onnxsim | none")
@target_options
@tolerance_option
@click.option("--act-learn", type=float, help="export the unfused network with this leaky-ReLU slope, on purpose")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="output directory")
@click.option("--force", is_flag=True, help="replace an existing, different output")
@click.option("--no-verify", is_flag=True, help="skip verification (a failed one fails the build)")
@click.option("--json", "as_json", is_flag=True, help="print the manifest on stdout and nothing else there")
@click.option("--layers", is_flag=True, help="profile each layer as the target reports it: layer_profile.csv in the "
                                             "output, the top 5 by time and by memory on the console")
def build(checkpoint, model_name, width, act_num, weights, features, prefix, target, precision, size, input_shape,
          batch, dynamic, opset, simplifier, tolerance, act_learn, output, force, no_verify, as_json, layers,
          **kwargs) -> None:
    """Checkpoint (or --model) -> fused -> ONNX -> simplified -> target artifact, verified.

    \b
    --device takes a device name (CPU, GPU, NPU, CUDA) or a device config
    (configs/devices/*.yaml) that sets the target, precision, size and options;
    options given on the command line win over the config's.
    """
    from .api.request import BuildRequest
    from .pipeline.build import build as run_build
    from .pipeline.plan import graph_input_shape

    source = _source(checkpoint, model_name, width, act_num, weights, act_learn, features, prefix)
    if size is not None and input_shape is not None:
        raise InputError("give --size or --input-shape, not both")
    if input_shape is not None and batch != 1:
        raise InputError("--batch goes with --size; --input-shape carries its own batch")
    config = _device_config(kwargs)
    options = _target_options(kwargs, config.options if config else None)
    given = _given()
    typed = {"opset": opset, "simplifier": simplifier, "verify": not no_verify, "options": options}
    if target is not None:
        typed["target"] = target
    if precision is not None:
        typed["precision"] = precision
    if tolerance:
        typed["tolerance"] = tuple(tolerance)
    if config is not None:
        shape = input_shape
        if shape is None and ("size" in given or "batch" in given):
            shape = InputShape.square(size or config.sizes[0], batch if "batch" in given else config.batch)
        if shape is None and source.is_onnx:  # the graph's own size, not the config's
            shape = graph_input_shape(source, config.batch)
        if dynamic:
            typed["dynamic"] = True
        request = config.build_request(source, shape=shape, **typed)
    else:
        if target is None:
            raise InputError("give --target, or --device with a device config")
        shape = input_shape or (InputShape.square(size, batch) if size is not None else
                                graph_input_shape(source, batch) if source.is_onnx else InputShape.square(224, batch))
        request = BuildRequest(source, shape=shape, dynamic=dynamic, **typed)
    outcome = _run_build(run_build, request, output, force, as_json)
    if layers:
        _build_layers(outcome.out_dir, outcome.manifest)


def _given() -> set[str]:
    """The parameters the user typed (not defaults): they win over a device config."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {name for name in ctx.params if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}


def _run_build(run_build, request, output, force, as_json):
    from rich.markup import escape

    from .console import RichStageReporter, render_graph_notes, render_verification, stderr

    outcome = run_build(request, output, force=force, reporter=RichStageReporter())
    manifest = outcome.manifest
    if outcome.up_to_date:
        stderr.print(f"{outcome.out_dir} is up to date")
    elif outcome.cached:
        stderr.print(f"served from the cache -> {outcome.out_dir}")
    else:
        render_verification(manifest["verification"], manifest.get("accuracy"))
        render_graph_notes(manifest["model"])
        if manifest.get("notice"):
            stderr.print(f"[yellow]notice:[/] {escape(manifest['notice'])}")
        stderr.print(f"[bold]{manifest['status']}[/] -> {outcome.out_dir}")
    if as_json:
        _print_json(manifest)
    return outcome


def _build_layers(out_dir: Path, manifest: dict[str, Any]) -> None:
    """``build --layers``: the build's per-layer profile into its directory, and its top layers."""
    from .console import render_top_layers, stderr
    from .profiling.layer_files import LAYER_PROFILE
    from .profiling.profile import build_layer_profile

    target = manifest["target"]
    title = f"{manifest['model']['label']} · {target['name']} · {target['precision']}"
    if manifest["status"] != "ok":
        stderr.print(f"[yellow]no per-layer profile:[/] a {manifest['status']} build runs nothing here")
        return
    records = build_layer_profile(out_dir, manifest)
    if records is None:
        stderr.print(f"{title}: {target['name']} reports no per-layer figures")
        return
    render_top_layers(title, records)
    stderr.print(f"wrote {out_dir / LAYER_PROFILE}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="print the list as JSON")
def targets(as_json) -> None:
    """Every target: whether it runs here, its version, devices, and why not."""
    from .targets import get_target, target_names

    rows = []
    for name in target_names():
        target = get_target(name)
        availability = target.availability()
        rows.append({"name": name, "available": availability.available, "version": availability.version,
                     "devices": list(availability.devices), "precisions": list(target.precisions),
                     "reason": availability.reason, "description": target.description})
    if as_json:
        _print_json(rows)
    else:
        from rich.console import Console

        from .console import render_targets

        render_targets(rows, Console())


# ---------------------------------------------------------------- profile


@cli.command()
@click.argument("checkpoints", nargs=-1, type=click.Path(path_type=Path))
@click.option("--models", help="comma-separated model names  [default: vanillanet_5,resnet50,plain_cnn_50 "
              "when no checkpoint is given]")
@click.option("--width", type=float, default=1.0, show_default=True, help="width multiplier of --models networks")
@click.option("--act-num", type=int, help="series activation n of --models networks  [default: the variant's]")
@click.option("--targets", "target_list", help="comma-separated targets  [default: every available one]")
@click.option("--sizes", type=SIZES, default="256,384,512", show_default=True,
              help="comma-separated square input sizes  [with --features: 640,1280]")
@click.option("--features", metavar="INDICES",
              help=f"profile backbones: {FEATURES_HELP}; the ResNet baselines give their four stages (C2-C5)")
@click.option("--precision", help="[default: each target's own: fp32; rknn fp16; qnn, ethos-u int8]")
@click.option("--batch", type=POSITIVE, default=1, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="untimed runs before timing")
@click.option("--runs", type=POSITIVE, default=20, show_default=True, help="timed runs")
@click.option("--memory-limit", type=MEMORY_SIZE, help="mark rows needing more as oom, e.g. 1.2GB (1 KB = 1024 B)")
@click.option("--timeout", type=SECONDS, default=900, show_default=True,
              help="seconds per cell's build, and again per its measurement")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv", "markdown"]), default="table",
              show_default=True, help="what to print on stdout")
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False),
              help="write profile.json/.csv/.md, memory.png/latency.png and report.html here")
@click.option("--force", is_flag=True, help="replace an existing output directory")
@click.option("--no-verify", is_flag=True, help="measure the cells' builds without verifying them (faster)")
@click.option("--layers", is_flag=True, help="each cell's per-layer profile as its target reports it: "
                                             "layers/*.csv in the output, the top 5 by time and by memory")
@target_options
@tolerance_option
def profile(checkpoints, models, width, act_num, target_list, sizes, features, precision, batch, warmup, runs,
            memory_limit, timeout, fmt, output, force, no_verify, layers, tolerance, **kwargs) -> None:
    """Max memory and latency per model, target and input size (the paper's Table 1, for your models).

    Exits 1 when any cell failed to build or measure (after writing the reports); oom rows are findings.
    """
    from .api.request import ModelSource
    from .core.io import refuse_existing
    from .pipeline.plan import graph_sizes
    from .profiling.profile import (
        BACKBONE_SIZES,
        DEFAULT_MODELS,
        ProfileRequest,
        backbone_features,
        label_of,
        profilable_targets,
    )
    from .profiling.reports import cell_label, is_profile_output
    from .vanillanet.features import parse_features

    names = _names(models) if models else ([] if checkpoints else list(DEFAULT_MODELS))
    features = None if features is None else parse_features(features)
    sources = [ModelSource(checkpoint=c, features=features) for c in checkpoints] + [
        ModelSource(model_name=n, width=width, act_num=act_num if n.startswith("vanillanet") else None,
                    features=features and backbone_features(n, features)) for n in names]
    config = _device_config(kwargs)
    options = _target_options(kwargs, config.options if config else None)
    given = _given()
    if features is not None and "sizes" not in given:
        sizes = BACKBONE_SIZES
    if config is not None:  # the device's target, precision, sizes, batch, dynamic and options; typed flags win
        target_list = target_list or config.target
        precision = precision or config.precision
        sizes = sizes if "sizes" in given else config.sizes
        memory_limit = memory_limit or config.memory_limit
        if "batch" in given:
            config = dataclasses.replace(config, batch=batch)
    # As build does: a fixed-size graph at its own size unless --sizes asks for others (a config's sizes are not
    # the user's words about this graph)
    sizes = graph_sizes(sources, tuple(sizes), "sizes" in given, BACKBONE_SIZES)
    labels = [label_of(source) for source in sources]
    shared = sorted({label for label in labels if labels.count(label) > 1})
    if shared:
        raise InputError(f"two models would share the label {shared[0]} in the tables (the file name's stem): "
                         "copy or link one under another name")
    targets = _names(target_list) if target_list else profilable_targets()
    from .targets import get_target

    for name in targets:
        get_target(name)  # unknown names fail now, not after an hour of building
    if output is not None:
        refuse_existing(output, force, is_profile_output)
    request = ProfileRequest(
        models=tuple(sources), targets=tuple(targets), sizes=tuple(sizes), precision=precision, batch=batch,
        warmup=warmup, runs=runs, timeout_s=timeout, options=options, memory_limit_kb=memory_limit,
        tolerance=tuple(tolerance) or (config.tolerance if config else ()), device=config, verify=not no_verify,
        layers=layers,
    )
    document = _run_profile(request, fmt, output, force)
    failed = [r for r in document["rows"] if r["status"] == "error"]
    if failed:
        first = failed[0]
        raise VncompileError(f"{len(failed)} of {len(document['rows'])} profile cells failed; first: "
                             f"{cell_label(first['model'], first['target'], first['size'])}: {first['reason']}")


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _run_profile(request, fmt: str, output: Path | None, force: bool) -> dict[str, Any]:
    from rich.console import Console

    from .console import CellProgress, render_profile, render_profile_layers, stderr
    from .profiling import reports
    from .profiling.layer_files import ProfileFiles
    from .profiling.profile import run_profile

    with CellProgress("profile", len(request.cells())) as progress:

        def finished(row):
            progress.finished(reports.cell_label(row["model"], row["target"], row["size"]), row["status"])

        files = ProfileFiles()
        document = run_profile(request, on_row=finished, on_start=progress.started, files=files)
    if fmt == "table":
        render_profile(document, Console())
    elif fmt == "json":
        _print_json(document)
    elif fmt == "csv":
        click.echo(reports.to_csv(document), nl=False)
    else:
        click.echo(reports.to_markdown(document), nl=False)
    render_profile_layers(document, files, Console() if fmt == "table" else stderr)
    if output is not None:
        written, notes = reports.write_profile(document, output, force=force, files=files)
        for note in notes:
            stderr.print(f"[yellow]{note}[/]")
        stderr.print(f"wrote {', '.join(f'{output}/{name}' for name in written)}")
    return document


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
def report(directory) -> None:
    """Write report.html for a profile directory (profile -o DIR): the page every profile writes, again.

    Reads DIR/profile.json and the per-layer files beside it; renders nothing new, measures nothing.
    """
    from .console import stderr
    from .profiling.html_report import write_report

    stderr.print(f"wrote {write_report(directory)}")


# ---------------------------------------------------------------- ci


@cli.command()
@click.argument("config", required=False, type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path, file_okay=False), default=Path("dist"),
              show_default=True, help="where the bundles, index.json, SUMMARY.md and junit.xml go")
@click.option("--shard", type=SHARD, help="build shard i of n (e.g. 1/4): each cell is in exactly one shard")
@click.option("--runner", help="only the cells whose devices build on this CI runner label")
@click.option("--cell", help="only this cell (model/device/size, as --emit-matrix lists them)")
@click.option("--jobs", type=POSITIVE, default=1, show_default=True,
              help="cells built in parallel on this machine")
@click.option("--timeout", type=SECONDS, default=3600, show_default=True, help="seconds per cell")
@click.option("--emit-matrix", type=click.Choice(["github"]), help="print the CI job matrix and exit")
@click.option("--cells-per-job", type=POSITIVE, default=8, show_default=True, help="with --emit-matrix")
@click.option("--merge", "merge_dirs", multiple=True, type=click.Path(path_type=Path, file_okay=False),
              help="merge shard outputs into --output instead of building (repeatable)")
@click.option("--force", is_flag=True, help="replace an existing output directory")
def ci(config, output, shard, runner, cell, jobs, timeout, emit_matrix, cells_per_job, merge_dirs, force) -> None:
    """Build a matrix of models x devices x sizes into publishable bundles (configs/ci.yaml)."""
    from .ci import run as ci_run
    from .ci.matrix import github_matrix, load_ci_config, select
    from .console import CellProgress, stderr

    if merge_dirs:
        results = ci_run.merge(list(merge_dirs), output, force=force)
        stderr.print(f"merged {len(merge_dirs)} shards: {len(results)} cells -> {output}")
        _fail_on_failed_cells(results)
        return
    if config is None:
        raise InputError("give the matrix config, e.g. configs/ci.yaml")
    cells = select(load_ci_config(config).cells, runner=runner, cell=cell, shard=shard)
    if emit_matrix:
        click.echo(json.dumps(github_matrix(cells, cells_per_job)))
        return
    stderr.print(f"building {len(cells)} cells with {jobs} job(s) -> {output}")
    with CellProgress("ci", len(cells), parallel=min(jobs, max(1, len(cells)))) as progress:

        def finished(result):
            progress.finished(result.id, result.status, note=result.reason, seconds=result.seconds)

        results = ci_run.run_ci(cells, output, jobs=jobs, force=force, timeout_s=timeout, on_result=finished,
                                on_start=lambda cell: progress.started(cell.id))
    _fail_on_failed_cells(results)


def _fail_on_failed_cells(results) -> None:
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise VncompileError(f"{len(failed)} of {len(results)} cells failed; first: {failed[0].id}: {failed[0].reason}")


# ---------------------------------------------------------------- toolchains (vendor SDKs in their own venvs)


@cli.group()
def toolchain() -> None:
    """Vendor toolchains that pin old packages, each in its own virtual environment."""


@toolchain.command("install")
@click.argument("name")
@click.option("--dir", "root", type=click.Path(path_type=Path, file_okay=False),
              help="where toolchains live  [default: $VNCOMPILE_TOOLCHAIN_DIR or the user data directory]")
@click.option("--force", is_flag=True, help="recreate the environment from scratch")
def toolchain_install(name, root, force) -> None:
    """Create (or verify) the pinned environment for a toolchain, e.g. rknn."""
    from . import toolchains
    from .console import stderr

    installed = toolchains.install(name, root=root, force=force, console=stderr)
    stderr.print(f"[green]ok[/] {installed.name} {installed.version} in {installed.path}")


@toolchain.command("list")
@click.option("--dir", "root", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
def toolchain_list(root, as_json) -> None:
    """What is installed, where, and which version."""
    from rich.console import Console
    from rich.table import Table

    from . import toolchains

    rows = [t.as_dict() for t in toolchains.list_toolchains(root=root)]
    if as_json:
        _print_json(rows)
        return
    table = Table(title="toolchains")
    for column in ("name", "installed", "version", "path"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], "[green]yes[/]" if row["installed"] else "[red]no[/]", row["version"] or "-",
                      row["path"])
    Console().print(table)


# ---------------------------------------------------------------- the build cache


@cli.group()
def cache() -> None:
    """The build cache ($VNCOMPILE_CACHE_DIR, bounded by $VNCOMPILE_CACHE_MAX_SIZE, default 20GB)."""


@cache.command("info")
@click.option("--json", "as_json", is_flag=True)
def cache_info(as_json) -> None:
    """Where the cache is, its size and bound, and its entries by kind."""
    from .core.units import megabytes
    from .pipeline.cache import KINDS, BuildCache

    store = BuildCache()
    entries = store.entries()
    document = {"root": str(store.root), "bytes": sum(e.bytes for e in entries), "max_bytes": store.max_bytes,
                "kinds": {kind: {"entries": sum(e.kind == kind for e in entries),
                                 "bytes": sum(e.bytes for e in entries if e.kind == kind)} for kind in KINDS}}
    if as_json:
        _print_json(document)
        return
    bound = "unbounded" if store.max_bytes is None else f"bound {megabytes(store.max_bytes)}"
    parts = ", ".join(f"{k} {v['entries']} ({megabytes(v['bytes'])})" for k, v in document["kinds"].items())
    click.echo(f"{store.root}: {megabytes(document['bytes'])}, {bound}; {parts}")


@cache.command("clear")
def cache_clear() -> None:
    """Remove every entry (refused while another vncompile process is building)."""
    from .console import stderr
    from .core.units import megabytes
    from .pipeline.cache import BuildCache

    removed = BuildCache(max_bytes=None).clear()  # no bound read: a bad one must not block clearing
    stderr.print(f"removed {len(removed)} entries ({megabytes(sum(e.bytes for e in removed))})")


if __name__ == "__main__":  # pragma: no cover
    main()
