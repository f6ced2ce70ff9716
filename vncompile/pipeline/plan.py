"""A build resolved once, before any work: ``resolve(request) -> BuildPlan``.

The plan holds everything the stages would otherwise look up again: the target object, its own
options as typed values, the defaulted precision, the ONNX form, the graph passes, the target that
judges ``--fit-memory``'s tiling, the sizes verification runs at, and the three cache keys. Every check
of the request runs here (the target's own, the options another target owns, calibration, runtime
profile, input sizes where the architecture is known without reading weights), so a bad request
fails in one line before anything is loaded. ``prepare``, ``fit``, ``verify``, ``profile`` and ``ci``
take the plan and never look a target up by name.

The keys derive from the declarations: each option says what it affects (``core.schema.setting``):
``reference`` (the float64 reference's inputs) lies within ``onnx`` (the target-independent graph),
which lies within ``build`` (the target's artifact). The reference is shared by every build of the
same weights, shape and inputs (every target, precision and graph form); the ONNX entry by every
target that asks for the same graph.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..api.options import DEFAULT_RUNTIME_PROFILE, SYNTHETIC, TargetOptions, flag_of, plain_value, scoped_settings
from ..api.request import BuildRequest, InputShape, ModelSource, int8_scheme
from ..api.target import OnnxForm, Target
from ..api.tolerance import QUANTIZED
from ..core.errors import InputError
from ..core.hashing import sha256_file
from ..core.host import toolchain_versions, total_memory_bytes
from ..core.schema import convert, settings_of
from ..onnxtools.graph_file import GraphFile, read_graph_file
from ..onnxtools.simplify import SIMPLIFIER_PACKAGES
from ..targets import get_target, own_option_declarations, require_available
from .families import ExternalGraphFamily, family_of, graph_family


@dataclass(frozen=True)
class BuildPlan:
    request: BuildRequest  # its precision filled in: the one built
    target: Target
    own: Any  # the target's own options, an instance of ``target.own_options``
    form: OnnxForm  # the ONNX the target compiles
    graph_passes: tuple[str, ...]  # the exact rewrites its ONNX gets (--graph-passes, else the target's own)
    fit_judge: Target | None  # --fit-memory: the target whose compiler judges the tiling (``plans_memory``)
    verify_shapes: tuple[InputShape, ...]
    checkpoint_sha256: str | None  # hashed once, for the keys, and handed to the loader
    toolchain: dict[str, str | None]  # what the build depends on: the simplifier's and the target's versions
    reference_key: str
    onnx_key: str
    build_key: str
    graph: GraphFile | None = None  # an ONNX file given as the model: its structure, read once
    graph_family: ExternalGraphFamily | None = None  # and what it is (classifier, detector, other graph)
    host_head: bool = False  # a detector whose head runs on the host after the device graph (--detect-head)

    @property
    def precision(self) -> str:
        assert self.request.precision is not None
        return self.request.precision

    @property
    def options(self) -> TargetOptions:
        return self.request.options

    @property
    def quantizes_graph(self) -> bool:
        """vncompile quantizes the graph itself (the Q/DQ int8 ONNX) before the target compiles it."""
        return self.form == "int8-qdq"

    @property
    def needs_calibration_inputs(self) -> bool:
        """The target quantizes itself from the float graph and gets the calibration inputs (rknn, qnn, ethos-u)."""
        return self.precision in QUANTIZED and not self.quantizes_graph and self.target.quantizes

    @property
    def verifies_on_calibration_images(self) -> bool:
        """Verification's real images: the evaluation set's, else a quantized build's real calibration images."""
        options = self.options
        return (self.precision in QUANTIZED and options.eval_data is None and options.calibration is not None
                and options.calibration != SYNTHETIC)

    def available_target(self) -> Target:
        """The target, or a one-line error saying why it cannot run here (only a build that runs needs it)."""
        return require_available(self.target)


def resolve(request: BuildRequest) -> BuildPlan:
    """``request`` checked and resolved (one line on the first problem)."""
    target = get_target(request.target)
    own = own_options(target, request.options)
    precision = request.precision or target.default_precision(own)
    request = dataclasses.replace(request, precision=precision)
    graph = family = None
    if request.source.is_onnx:
        graph, family = external_graph(request.source)
        request = _with_graph_opset(request, graph)
    # Real images' preprocessing, resolved once: what the keys, calibration and evaluation all see.
    options = request.options.with_default_preprocess(family.preprocess if family else "center-crop")
    request = dataclasses.replace(request, options=options)
    _check(request, target, own, graph, family)
    form = target.onnx_form(precision)
    passes = graph_passes(request.options, target, external=graph is not None)
    judge = target if target.plans_memory and request.options.fit_memory is not None else None
    verify_shapes = tuple(request.verify_shapes(target.dynamic_sizes(own)))
    checkpoint = request.source.checkpoint
    checkpoint_sha256 = graph.sha256() if graph is not None else \
        sha256_file(Path(checkpoint)) if checkpoint is not None else None
    core = toolchain_versions(*SIMPLIFIER_PACKAGES[request.simplifier])
    toolchain = {**core, **toolchain_versions(*target.packages), **target.cache_identity()}
    plan = BuildPlan(request, target, own, form, passes, judge, verify_shapes, checkpoint_sha256, toolchain, "", "",
                     "", graph, family, _host_head(request, target, family))
    reference = _reference_key(plan)
    onnx = _onnx_key(plan, reference, core)
    return dataclasses.replace(plan, reference_key=reference, onnx_key=onnx, build_key=_build_key(plan, onnx))


def external_graph(source: ModelSource) -> tuple[GraphFile, ExternalGraphFamily]:
    """An ONNX file given as the model, read and checked, and what it is."""
    graph = read_graph_file(source.checkpoint)  # type: ignore[arg-type]
    return graph, graph_family(graph)


def graph_input_shape(source: ModelSource, batch: int = 1) -> InputShape:
    """An ONNX file's size when none is given: its own (fixed), else the size its exporter recorded (Ultralytics'
    ``imgsz``), else a detector's 640 or a classifier's 224."""
    graph, family = external_graph(source)
    height, width = graph.fixed_size or family.metadata.imgsz or ((640, 640) if family.detector else (224, 224))
    return InputShape(batch, graph.channels or 3, height, width)


def graph_sizes(sources: list[ModelSource], sizes: tuple[int, ...], given: bool,
                detection_sizes: tuple[int, ...] = (640, 1280)) -> tuple[int, ...]:
    """The sizes to build ONNX files at (profile, ci): a fixed-size graph at its own size (other sizes, given, are
    refused in one line); graphs that take any size at the sizes given, else a detector's ``detection_sizes``."""
    graphs = [external_graph(s) for s in sources if s.is_onnx]
    if not graphs:
        return sizes
    for graph, _ in graphs:
        fixed = graph.fixed_size
        if fixed is not None and fixed[0] != fixed[1]:
            raise InputError(f"{graph.path.name} is fixed at {fixed[0]}x{fixed[1]}; these sizes are square: "
                             "re-export it square or with dynamic height and width")
    own = sorted({g.fixed_size[0] for g, _ in graphs if g.fixed_size})
    if given or len(own) > 1 or (own and len(graphs) < len(sources)):
        for graph, family in graphs:
            for size in sizes:
                family.check_graph_input(graph, InputShape.square(size), dynamic=False)
        return sizes
    if own:
        return (own[0],)
    return detection_sizes if all(family.detector for _, family in graphs) else sizes


# ---------------------------------------------------------------------------- options and checks


def own_options(target: Target, options: TargetOptions) -> Any:
    """The target's own options as its declared, typed instance; an option another target owns is refused (the
    user meant a build they would not get)."""
    declared = settings_of(target.own_options)
    given = options.own_values()
    foreign = sorted(name for name in given if name not in declared)
    if foreign:
        flags = [_flag(name) for name in foreign]
        own = ", ".join(spec.flag or name for name, (_f, spec) in declared.items())
        raise InputError(f"{', '.join(flags)} {'does' if len(flags) == 1 else 'do'} not apply to --target "
                         f"{target.name}{f' (its own: {own})' if own else ''}")
    # Values come typed from the command line and plain from JSON (a worker's request): converted alike.
    values = {name: convert(name, declared[name][1], plain_value(value), _flag(name)) for name, value in given.items()}
    return target.own_options(**values)


def _flag(name: str) -> str:
    declarations = own_option_declarations()
    return declarations[name].flag or name if name in declarations else name


def _host_head(request: BuildRequest, target: Target, family: ExternalGraphFamily | None) -> bool:
    """Whether an ONNX detector's head runs on the host: --detect-head, else the target's choice at the precision."""
    chosen = request.options.detect_head
    if chosen is None:
        return bool(family and family.detector and target.runs_host_head
                    and request.precision in target.host_head_precisions)
    if family is None or family.detector is None:
        raise InputError("--detect-head applies to ONNX detectors (a YOLO Detect output or NMS rows); "
                         "this model is not one")
    if chosen == "host" and not target.runs_host_head:
        raise InputError(f"--detect-head host does not apply to --target {target.name}: its verification runs the "
                         "whole graph on the device")
    return chosen == "host"


def _with_graph_opset(request: BuildRequest, graph: GraphFile) -> BuildRequest:
    """An ONNX file builds at its own opset: what the targets' checks see."""
    from ..api.request import DEFAULT_OPSET

    if request.opset not in (DEFAULT_OPSET, graph.opset):
        raise InputError(f"--opset does not apply to an ONNX file: {graph.path.name} is opset {graph.opset} "
                         "(re-export it to change that)")
    return dataclasses.replace(request, opset=graph.opset)


def _check(request: BuildRequest, target: Target, own: Any, graph: GraphFile | None = None,
           family: ExternalGraphFamily | None = None) -> None:
    options = request.options
    if options.keep_fp32 is not None and not any(target.onnx_form(p) == "int8-qdq" for p in target.precisions):
        raise InputError(f"{flag_of(TargetOptions, 'keep_fp32')} does not apply to --target {target.name}: it "
                         "quantizes the float graph itself")
    if target.quantizes:
        request.check_calibration()
    profile = options.runtime_profile
    if profile != DEFAULT_RUNTIME_PROFILE and profile not in target.runtime_profiles:
        raise InputError(f"{target.name} has no runtime profiles: {target.why_no_runtime_profiles}; "
                         f"drop --runtime-profile {profile}")
    target.check_request(request, own)
    if graph is not None and family is not None:
        family.check_graph_input(graph, request.shape, request.dynamic)
        if options.fit_memory is not None:
            raise InputError("--fit-memory tiles VanillaNet networks vncompile defines; an ONNX file builds as "
                             "exported")
        if options.io_dtype != "fp32":
            raise InputError("--io-dtype applies to networks vncompile exports; an ONNX file keeps its float32 "
                             "input")
    elif request.source.checkpoint is None:  # the architecture is known without reading weights: check sizes now
        from ..vanillanet.features import selection

        spec = request.source.spec_without_checkpoint()
        features = tuple(selection(spec, request.source.features)) if request.source.features else ()
        family_of(spec, features).check_input(spec, request.shape, request.dynamic, total_memory_bytes(), features)


def graph_passes(options: TargetOptions, target: Target, external: bool = False) -> tuple[str, ...]:
    """The graph passes a build applies: --graph-passes (``none``: none), else the target's own, after the exact
    deploy fusion for an ONNX file (an exporter's training-form VanillaNet blocks fused as switch_to_deploy
    would)."""
    from ..onnxtools.deploy_fusion import DEPLOY_FUSION_GROUP
    from ..onnxtools.passes import check_pass_names

    chosen = options.graph_passes
    if chosen is None:
        return ((DEPLOY_FUSION_GROUP,) if external else ()) + target.graph_passes
    if chosen == ("none",):
        return ()
    if "none" in chosen:
        raise InputError(f"--graph-passes none stands alone, not with {', '.join(n for n in chosen if n != 'none')}")
    check_pass_names(chosen)
    return chosen


# ---------------------------------------------------------------------------- keys


def _digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def _declared(plan: BuildPlan, scope: str) -> dict[str, Any]:
    """The values of the options declared to affect ``scope`` (or a scope within it), the common ones and the
    target's own."""
    values = {name: plan.options.key_value(name) for name in scoped_settings(TargetOptions, scope)}
    if "graph_passes" in values:  # as resolved: the target's own choice when none is given
        values["graph_passes"] = list(plan.graph_passes)
    # A target's own options as given (not given: its default): so that targets share what they may share.
    own = {name: value for name in scoped_settings(type(plan.own), scope)
           if (value := getattr(plan.own, name)) != _default(type(plan.own), name)}
    return {"options": values, "own": own}


def _default(options_class: type, name: str) -> Any:
    return next(f.default for f in dataclasses.fields(options_class) if f.name == name)


def _model_identity(plan: BuildPlan) -> dict[str, Any]:
    request = plan.request
    identity = {"vncompile": __version__, "source": request.source.identity(plan.checkpoint_sha256),
                "shape": request.shape.as_tuple(), "dynamic": request.dynamic}
    if plan.graph is not None:  # ONNX Runtime is an ONNX file's reference where the float64 rebuild lacks an op
        identity["onnxruntime"] = toolchain_versions("onnxruntime")
    return identity


def _reference_key(plan: BuildPlan) -> str:
    """What the float64 reference outputs depend on: the weights, the shapes verified and the inputs (seeded noise,
    and the real images: evaluation set, else a quantized build's real calibration images)."""
    return _digest({"kind": "reference", "model": _model_identity(plan),
                    "shapes": [s.as_tuple() for s in plan.verify_shapes], **_declared(plan, "reference"),
                    "calibration_images": plan.verifies_on_calibration_images})


def _onnx_key(plan: BuildPlan, reference_key: str, core: dict[str, str | None]) -> str:
    """What the target-independent stages depend on: no target, only the ONNX form it asked for, the graph
    passes it gets, and, for --fit-memory, the precision whose element size plans the tiling and the target whose
    compiler judges it (with its options and toolchain)."""
    request = plan.request
    fit = None
    if request.options.fit_memory is not None:
        judge = plan.fit_judge
        fit = {"precision": plan.precision, "judge": None if judge is None else judge.name,
               "judge_options": None if judge is None else _declared(plan, "build")["own"],
               "judge_toolchain": None if judge is None else plan.toolchain}
    return _digest({"kind": "onnx", "model": _model_identity(plan), "reference": reference_key, "form": plan.form,
                    "opset": request.opset, "simplifier": request.simplifier, "verify": request.verify,
                    "tolerance": [[p, t.as_dict()] for p, t in request.tolerance],
                    "int8_scheme": int8_scheme(plan.target.int8_weight_bits) if plan.quantizes_graph else None,
                    "fit": fit, "host_head": plan.host_head,
                    **_declared(plan, "onnx"), "toolchain": core})


def _build_key(plan: BuildPlan, onnx_key: str) -> str:
    """Everything a finished build depends on: its ONNX, the target, the precision, the options that affect it and
    the toolchain (what the target applies unasked, such as its default graph passes, is in the ONNX's key)."""
    return _digest({"kind": "build", "onnx": onnx_key, "target": plan.target.name, "precision": plan.precision,
                    "cross": plan.request.cross, **_declared(plan, "build"), "toolchain": plan.toolchain})
