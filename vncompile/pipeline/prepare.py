"""The target-independent half of a build, cached on its own: load -> fuse -> export ->
simplify -> (quantize), plus the float64 reference outputs and the ONNX stages' errors.

Every target built from the same network, shape and ONNX form (a profile's targets,
a CI matrix's devices) shares one entry, so the network is exported and its float64
reference computed once.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..api.request import InputShape, int8_scheme
from ..api.tolerance import QUANTIZED, Tolerance
from ..core.errors import InputError, VerificationError
from ..core.hashing import sha256_file
from ..core.io import link_or_copy, write_json
from ..data.evaluation import EvalSet
from ..onnxtools.detect_head import HEAD_TAIL
from ..onnxtools.layers import LAYERS_CSV, layer_errors, write_layers
from ..onnxtools.order import depth_first_order
from ..onnxtools.run import run_onnx, seeded_inputs
from ..vanillanet.features import features_text
from .accuracy import accuracy
from .cache import BuildCache
from .plan import BuildPlan
from .timing import StageTimings
from .verify import StageError, compare

log = logging.getLogger("vncompile")
VERIFY_IMAGES = 4  # seeded inputs per verified size (top-1 agreement is over these)
INPUT_SEED = 1234
PREPARE_STAGES = ["load", "fuse", "export", "simplify", "quantize"]  # then "reference", "evaluate"
FILES = {"exported.onnx": "onnx-exported", "simplified.onnx": "onnx-simplified", "model.onnx": "onnx"}
REFERENCE = "reference.npz"  # in the reference's own cache entry: "{shape}/{batch}/{output}" -> float64 outputs
EVAL_REFERENCE = "eval_reference.npz"  # the reference's top-1 per evaluation image: the targets' agreement
DEVICE_GRAPH = "device.onnx"  # a detector whose head runs on the host: the graph up to its per-level maps
LAYER_INPUTS = 16  # images the per-layer int8 analysis runs (each a full pass through two graphs)


@dataclass(frozen=True)
class VerifyInputs:
    """The batches every stage of every target sees for one shape: seeded noise first (a check of exactness
    on any input), then real images when the build has some (evaluation images, else real calibration ones)."""

    batches: np.ndarray
    noise: int  # how many of ``batches`` are noise

    def judged(self, precision: str, values: list) -> list:
        """What a stage is judged on: an int8 (int16) graph calibrated on real images is only meant for inputs
        like them (noise falls outside its activation ranges), so with real images it is judged on those alone."""
        return values[self.noise:] if precision in QUANTIZED and len(values) > self.noise else values


def verify_inputs(shape: InputShape, real: np.ndarray | None = None) -> VerifyInputs:
    count = max(1, -(-VERIFY_IMAGES // shape.batch))
    noise = seeded_inputs(shape, count, seed=INPUT_SEED)
    if real is None or len(real) == 0 or real.shape[1:] != shape.as_tuple()[1:]:
        return VerifyInputs(noise, count)
    repeats = -(-count * shape.batch // len(real))
    images = np.concatenate([real] * repeats)[:count * shape.batch].reshape(count, *shape.as_tuple())
    return VerifyInputs(np.concatenate([noise, images]), count)


def load_evaluation(plan: BuildPlan):
    """--eval-data as the model is judged: a detector's set (mAP), else a classifier's labelled images (top-1)."""
    from ..data.detection import is_detection_set
    from ..data.evaluation import load_eval_set

    family = plan.graph_family
    if family is not None and family.detector:
        from .detection_accuracy import load_detection_eval

        return load_detection_eval(plan.options, plan.request.shape, family.classes, family.detector)
    eval_data = plan.options.eval_data
    if family is not None and eval_data is not None and is_detection_set(eval_data):
        raise InputError(f"{eval_data} is a detection set, but {plan.graph.path.name} is not recognised as a detector "
                         "(a YOLO Detect output [1, 4+classes, anchors] or NMS rows [1, N, 6] with Ultralytics' "
                         "metadata task=detect and names): export it with Ultralytics' exporter, or add those "
                         "metadata_props to the ONNX")
    return load_eval_set(plan.options, plan.request.shape)


def real_images(plan: BuildPlan, eval_set: EvalSet | None) -> np.ndarray | None:
    """A few real images for verification: the evaluation set's, else a quantized build's real calibration set's."""
    from ..data.calibration import calibration_samples, preprocessing_of

    if eval_set is not None:
        return eval_set.inputs[:VERIFY_IMAGES]
    if plan.verifies_on_calibration_images:
        options = plan.options
        return calibration_samples(options.calibration, plan.request.shape, VERIFY_IMAGES,
                                   preprocessing=preprocessing_of(options))
    return None


@dataclass(frozen=True)
class PreparedOnnx:
    directory: Path
    record: dict[str, Any]
    cached: bool
    reference_dir: Path  # the float64 reference outputs' cache entry (shared beyond this graph)

    @property
    def onnx_path(self) -> Path:
        """The target-ready ONNX (simplified, or its Q/DQ int8 form)."""
        return self.directory / "model.onnx"

    @property
    def exported_path(self) -> Path:
        """The graph as torch.onnx exported it, with each node's module scopes (``onnxtools.blocks``)."""
        return self.directory / "exported.onnx"

    @property
    def model(self) -> dict[str, Any]:
        return self.record["model"]

    @property
    def classifier(self) -> bool:
        return self.record["classifier"]

    @property
    def accuracy(self) -> dict[str, Any] | None:
        return self.record.get("accuracy")

    def reference_top1(self) -> np.ndarray:
        with np.load(self.directory / EVAL_REFERENCE) as npz:
            return npz["top1"]

    @property
    def host_tail(self) -> Path | None:
        """A detector's head run on the host after the device graph (``onnxtools.detect_head``)."""
        path = self.directory / HEAD_TAIL
        return path if path.is_file() else None

    @property
    def layers_csv(self) -> Path | None:
        path = self.directory / LAYERS_CSV
        return path if path.is_file() else None

    @property
    def output_names(self) -> list[str]:
        return self.record["output_names"]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self.record["outputs"]

    @property
    def stage_errors(self) -> list[StageError]:
        return [StageError.from_dict(e) for e in self.record["verification"]]

    @property
    def timings(self) -> list[dict[str, Any]]:
        return [{**t, "cached": self.cached} for t in self.record["stages"]]

    def reference(self, shape: InputShape) -> list[list[np.ndarray]]:
        with np.load(self.reference_dir / REFERENCE) as npz:
            prefix = f"{shape.label}/"
            batches = sorted({int(k.split("/")[1]) for k in npz.files if k.startswith(prefix)})
            return [[npz[f"{shape.label}/{b}/{o}"] for o in range(len(self.output_names))] for b in batches]


def prepare(plan: BuildPlan, cache: BuildCache, work: Path, timings: StageTimings, eval_set: EvalSet | None = None,
            real: np.ndarray | None = None) -> PreparedOnnx:
    """The target-independent stages of ``plan``, from the cache or run (then stored). The caller holds the ONNX
    entry's and the reference's readers' locks for as long as it reads them."""
    reference_dir = cache.entry(plan.reference_key, "reference")
    with cache.lock(plan.onnx_key):
        record = cache.lookup(plan.onnx_key, kind="onnx")
        if record is not None and (not plan.request.verify or _reference_cached(plan, cache)):
            log.info("onnx stages served from the cache (%s)", plan.onnx_key[:12])
            return PreparedOnnx(cache.entry(plan.onnx_key, "onnx"), record, True, reference_dir)
        directory = work / "prepared"
        directory.mkdir()
        record = _run(plan, directory, cache, work, timings, eval_set, real)
        return PreparedOnnx(cache.store(plan.onnx_key, directory, kind="onnx"), record, False, reference_dir)


def _reference_cached(plan: BuildPlan, cache: BuildCache) -> bool:
    with cache.lock(plan.reference_key):
        return cache.lookup(plan.reference_key, kind="reference") is not None


def load_for(plan: BuildPlan):
    """The plan's network, loaded, its input sizes checked by its family (a checkpoint's architecture is known only
    once it is read)."""
    from ..core.host import total_memory_bytes
    from . import stages

    request = plan.request
    if plan.graph is not None:  # an ONNX file: checked when the plan was made
        from .external import load_external

        return load_external(plan.graph, plan.graph_family, request.shape)
    loaded = stages.load_model(request.source, plan.checkpoint_sha256)
    loaded.family.check_input(loaded.spec, request.shape, request.dynamic, total_memory_bytes(), loaded.features)
    return loaded


def onnx_graph(plan: BuildPlan, loaded, exported_onnx: Path, simplified_onnx: Path, *,
               timings: StageTimings | None = None, check: bool = True) -> dict[str, int]:
    """The graph a build compiles for ``loaded``: exported, simplified (checked against the export), rewritten by the
    plan's graph passes (checked too) and put in depth-first order; returns the passes' counts. ``--fit-memory``
    plans each candidate tiling on exactly this graph (``check=False``: the chosen one is checked when the build
    makes it)."""
    from . import stages

    request = plan.request
    stage = timings.stage if timings is not None else (lambda name: contextlib.nullcontext())
    with stage("export"):
        stages.export_onnx(loaded, request.shape, exported_onnx, opset=request.opset, dynamic=request.dynamic,
                           compute="fp16" if plan.form == "fp16" else "fp32", io_dtype=request.options.io_dtype)
    with stage("simplify"):
        return _simplified(plan, exported_onnx, simplified_onnx, check)


def _simplified(plan: BuildPlan, exported_onnx: Path, simplified_onnx: Path, check: bool) -> dict[str, int]:
    from ..onnxtools.passes import apply_passes_to_file
    from ..onnxtools.simplify import simplify_onnx

    request = plan.request
    if request.simplifier == "none":
        link_or_copy(exported_onnx, simplified_onnx)
    else:
        simplify_onnx(exported_onnx, simplified_onnx, request.simplifier)
        if check:
            _check_simplified(exported_onnx, simplified_onnx, plan)
    rewritten: dict[str, int] = {}
    if plan.graph_passes:
        rewritten = apply_passes_to_file(simplified_onnx, plan.graph_passes)
        if check:
            _check_rewritten(exported_onnx, simplified_onnx, plan, rewritten)
    # Every graph in the order that frees memory soonest (a tiled one: strip after strip), the order
    # the analytic plan assumes and the one rknn's compiler itself chooses.
    depth_first_order(simplified_onnx)
    return rewritten


def _run(plan: BuildPlan, directory: Path, cache: BuildCache, work: Path, timings: StageTimings,
         eval_set: EvalSet | None, real: np.ndarray | None) -> dict[str, Any]:
    from . import stages

    request, form = plan.request, plan.form
    if plan.graph is not None:
        return _run_external(plan, directory, cache, work, timings, eval_set, real)
    with timings.stage("load"):
        loaded = load_for(plan)
    fitted = None
    with timings.stage("fuse"):
        exported = stages.network_for_export(loaded)
        if request.options.fit_memory is not None:  # tiled, so that the planned peak fits (on the same graph)
            from .fit import fit_memory

            exported, fitted = fit_memory(exported, plan)
    exported_onnx, simplified_onnx = directory / "exported.onnx", directory / "simplified.onnx"
    rewritten = onnx_graph(plan, exported, exported_onnx, simplified_onnx, timings=timings)
    _target_form(plan, directory, timings, eval_set)
    names = loaded.output_names
    classifier = loaded.family.classifier
    errors, accuracy_section = _checked(plan, loaded, exported, directory, cache, work, timings, eval_set, real)
    spec = exported.spec
    record = {
        "cache_key": plan.onnx_key,
        "model": {
            "name": spec.name, "label": spec.label, "width": spec.width, "form": spec.form,
            "family": loaded.family.name,
            "act_num": spec.act_num, "num_classes": spec.num_classes, "act_learn": loaded.act_learn.as_dict(),
            "checkpoint_sha256": loaded.checkpoint_sha256, "trained": loaded.trained,
            "features": features_text(loaded.features),
            "detector": loaded.checkpoint.detector.as_dict() if loaded.checkpoint and loaded.checkpoint.detector
            else None,
            "fit_memory": fitted,  # --fit-memory: the tiling chosen, its planned peak and extra MACs
            "graph_passes": rewritten,  # each exact rewrite applied, and how many places it changed
            "int8_scheme": int8_scheme(plan.target.int8_weight_bits) if form == "int8-qdq" else None,
        },
    }
    return _record(record, loaded, directory, names, classifier, accuracy_section, errors, timings)


def _record(record: dict[str, Any], loaded, directory: Path, names: list[str], classifier: bool,
            accuracy_section: dict[str, Any] | None, errors: list[StageError], timings: StageTimings) -> dict[str, Any]:
    """The ONNX entry's manifest: ``record`` (its key and model) and what every graph's stages produce."""
    record.update({
        "classifier": classifier,
        "output_names": names,
        "accuracy": accuracy_section,
        "outputs": _outputs(loaded, directory / "simplified.onnx"),  # the whole graph's (not a device graph's)
        "verification": [e.as_dict() for e in errors],
        "stages": list(timings.records),
        "artifacts": [_artifact(directory, name, role) for name, role in FILES.items()],
    })
    extra = {EVAL_REFERENCE: "eval-reference", LAYERS_CSV: "int8-layers", DEVICE_GRAPH: "onnx-device",
             HEAD_TAIL: "head-tail"}
    record["artifacts"] += [_artifact(directory, name, role) for name, role in extra.items()
                            if (directory / name).is_file()]
    write_json(directory / "manifest.json", record)
    return record


def _target_form(plan: BuildPlan, directory: Path, timings: StageTimings, eval_set: EvalSet | None,
                 source: str = "simplified.onnx") -> None:
    """``model.onnx``, the graph the target compiles, from ``source`` (the simplified graph, or a detector's device
    graph): its Q/DQ int8 form (with its per-layer error table), else ``source`` itself."""
    from ..data.calibration import calibration_set
    from ..onnxtools.quantize import layers_to_keep, quantize_qdq

    request = plan.request
    simplified_onnx, model_onnx = directory / source, directory / "model.onnx"
    if plan.form == "int8-qdq":
        with timings.stage("quantize"):
            calibration = calibration_set(request.options, request.shape)
            quantize_qdq(simplified_onnx, model_onnx, calibration,
                         layers_to_keep(simplified_onnx, request.options.keep_fp32),
                         weight_bits=plan.target.int8_weight_bits)
            # Where int8 departs from fp32, layer by layer, on real images when there are some.
            probe = calibration if eval_set is None else eval_set.inputs
            write_layers(layer_errors(simplified_onnx, model_onnx, probe[:LAYER_INPUTS]), directory / LAYERS_CSV)
    else:  # the same graph: one file under both names (a full-size ONNX is ~100 MB)
        link_or_copy(simplified_onnx, model_onnx)


def _checked(plan: BuildPlan, loaded, exported, directory: Path, cache: BuildCache, work: Path,
             timings: StageTimings, eval_set: EvalSet | None, real: np.ndarray | None):
    """The reference, the ONNX stages' errors against it, and the accuracy per stage on labelled images."""
    errors: list[StageError] = []
    if plan.request.verify:
        with timings.stage("reference"):
            reference_dir = _reference(plan, loaded, cache, work, real)
            errors = _onnx_errors(plan, loaded, exported, directory, reference_dir, loaded.output_names,
                                  loaded.family.classifier, real)
    accuracy_section = None
    if eval_set is not None:
        with timings.stage("evaluate"):
            accuracy_section = _stage_accuracy(plan, loaded, exported, directory, loaded.family.classifier, eval_set)
    return errors, accuracy_section


def _run_external(plan: BuildPlan, directory: Path, cache: BuildCache, work: Path, timings: StageTimings,
                  eval_set: EvalSet | None, real: np.ndarray | None) -> dict[str, Any]:
    """The stages of an ONNX file (``external``): the given graph at the build's shape is the export."""
    import onnx

    from ..onnxtools.deploy_fusion import DEPLOY_FUSION, deploy_fusion_report
    from ..onnxtools.files import save_onnx

    request = plan.request
    with timings.stage("load"):
        loaded = load_for(plan)
    exported_onnx, simplified_onnx = directory / "exported.onnx", directory / "simplified.onnx"
    with timings.stage("export"):
        save_onnx(loaded.at_shape(None if request.dynamic else request.shape), exported_onnx)
    with timings.stage("simplify"):
        rewritten = _simplified(plan, exported_onnx, simplified_onnx, check=True)
        fusion = deploy_fusion_report(loaded.model, onnx.load(str(simplified_onnx), load_external_data=False),
                                      {name: rewritten.get(name, 0) for name in DEPLOY_FUSION})
        log.info("%s", fusion.summary())
        if fusion.finding():
            log.warning("%s", fusion.finding())
        host_tail = None
        if plan.host_head:
            from ..onnxtools.detect_head import cut_host_tail

            host_tail = cut_host_tail(simplified_onnx, directory / DEVICE_GRAPH, directory / HEAD_TAIL)
            if host_tail is None:
                log.warning("the detector's head could not be cut at its feature maps: it stays on the device")
            else:
                log.info("head on the host: the device graph ends at %d maps (%s); %d nodes run on the host",
                         len(host_tail.cuts), ", ".join(host_tail.cuts), host_tail.tail_nodes)
        if plan.form == "fp16":  # after the cut: the tail stays float32, fed float32 (the device graph's I/O)
            _to_fp16(simplified_onnx)
            if host_tail is not None:
                _to_fp16(directory / DEVICE_GRAPH)
    _target_form(plan, directory, timings, eval_set, DEVICE_GRAPH if host_tail else "simplified.onnx")
    errors, accuracy_section = _checked(plan, loaded, loaded, directory, cache, work, timings, eval_set, real)
    graph = plan.graph
    assert graph is not None
    record = {
        "cache_key": plan.onnx_key,
        "model": {
            "name": graph.path.stem, "label": graph.path.name, "width": None, "form": "onnx",
            "family": loaded.family.name, "act_num": None, "num_classes": loaded.family.classes, "act_learn": None,
            "checkpoint_sha256": plan.checkpoint_sha256, "trained": True, "features": None,
            "detector": loaded.detector(), "fit_memory": None, "graph_passes": rewritten,
            "int8_scheme": int8_scheme(plan.target.int8_weight_bits) if plan.form == "int8-qdq" else None,
            "onnx": loaded.description(), "reference": loaded.reference, "deploy_fusion": fusion.as_dict(),
            "host_tail": None if host_tail is None else host_tail.as_dict(),
        },
    }
    return _record(record, loaded, directory, loaded.output_names, loaded.family.classifier, accuracy_section,
                   errors, timings)


def _to_fp16(path: Path) -> None:
    """A float graph in fp16 (weights and compute), its input and outputs kept float32 as an export's are."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from ..onnxtools.files import save_onnx

    save_onnx(convert_float_to_float16(onnx.load(str(path)), keep_io_types=True), path)


def with_host_tail(directory: Path, outputs: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """The whole graph's outputs from the device graph's: through the head's host tail when the build has one."""
    tail = directory / HEAD_TAIL
    if not tail.is_file():
        return outputs
    from ..onnxtools.detect_head import run_with_tail

    run = run_with_tail(tail)
    return [run(batch) for batch in outputs]


def run_target_graph(directory: Path, batches: np.ndarray) -> list[list[np.ndarray]]:
    """``model.onnx`` (and the host tail after it) on ONNX Runtime: the whole graph's outputs."""
    return with_host_tail(directory, run_onnx(directory / "model.onnx", batches))


def _artifact(directory: Path, name: str, role: str) -> dict[str, Any]:
    path = directory / name
    return {"path": name, "role": role, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def _reference(plan: BuildPlan, loaded, cache: BuildCache, work: Path, real: np.ndarray | None) -> Path:
    """The float64 reference outputs of the plan's network on the verification inputs, at every verified shape:
    from the cache, or computed once and stored for every build of the same weights, shape and inputs."""
    key = plan.reference_key
    with cache.lock(key):
        if cache.lookup(key, kind="reference") is not None:
            log.info("float64 reference served from the cache (%s)", key[:12])
            return cache.entry(key, "reference")
        directory = work / "reference"
        directory.mkdir()
        arrays = {}
        for shape in plan.verify_shapes:
            outputs = loaded.float64_outputs(shape, verify_inputs(shape, real).batches)
            for b, batch in enumerate(outputs):
                for o, output in enumerate(batch):
                    arrays[f"{shape.label}/{b}/{o}"] = output
        np.savez(directory / REFERENCE, **arrays)
        write_json(directory / "manifest.json", {"cache_key": key, "artifacts": [
            _artifact(directory, REFERENCE, "reference")]})
        return cache.store(key, directory, kind="reference")


def _stage_accuracy(plan: BuildPlan, loaded, exported, directory: Path, classifier: bool,
                    eval_set: EvalSet) -> dict[str, Any]:
    """Top-1/top-5 (a detector: mAP50-95/mAP50) of the reference and every torch and ONNX stage on the labelled
    images."""
    from . import stages
    from .detection_accuracy import DetectionEval, detection_section

    detector = isinstance(eval_set, DetectionEval)
    if not detector and not classifier:
        raise InputError("--eval-data measures a classifier's accuracy; this network has no classifier head")
    batches = np.stack(eval_set.batches(plan.request.shape.batch))
    reference_outputs = loaded.float64_outputs(plan.request.shape, batches)
    if not detector:
        reference = eval_set.logits(reference_outputs)
        if reference.shape[1] <= int(eval_set.labels.max()):
            raise InputError(f"{eval_set.images.root}: labels go up to {int(eval_set.labels.max())} but the network "
                             f"has {reference.shape[1]} classes")
    runs = {}
    if exported is not loaded:
        runs["torch fused"] = stages.run_torch(exported.network, batches)
    runs["onnx exported"] = run_onnx(directory / "exported.onnx", batches)
    runs["onnx simplified"] = run_onnx(directory / "simplified.onnx", batches)
    if plan.quantizes_graph:
        runs["onnx int8 qdq"] = run_target_graph(directory, batches)
    if detector:
        return detection_section(eval_set, {"reference": reference_outputs, **runs}, loaded.output_names)
    top1 = np.argmax(reference, axis=1)
    np.savez(directory / EVAL_REFERENCE, top1=top1)
    section: dict[str, Any] = {"images": len(eval_set.labels), "classes": len(eval_set.images.classes),
                               "layout": eval_set.images.layout,
                               "preprocessing": plan.options.preprocessing() or "imagenet defaults",
                               "reference": accuracy(reference, eval_set.labels)}
    for stage, outputs in runs.items():
        section[stage] = accuracy(eval_set.logits(outputs), eval_set.labels, top1)
    return section


def _outputs(loaded, onnx_path: Path) -> list[dict[str, Any]]:
    """Each output's name, shape (as the ONNX declares it: symbolic where dynamic) and, for a backbone,
    channels and stride."""
    import onnx

    from ..onnxtools.graph_file import declared_dims

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    maps = {m.name: m for m in loaded.features}
    outputs = []
    for output in graph.output:
        record: dict[str, Any] = {"name": output.name, "shape": list(declared_dims(output))}
        if output.name in maps:
            record.update(channels=maps[output.name].channels, stride=maps[output.name].stride)
        outputs.append(record)
    return outputs


def _onnx_errors(plan: BuildPlan, loaded, exported, directory: Path, reference_dir: Path, names: list[str],
                 classifier: bool, real: np.ndarray | None) -> list[StageError]:
    """The errors of the torch and ONNX stages against the float64 reference."""
    from . import stages

    onnx_precision = "fp16" if plan.form == "fp16" else "fp32"
    tolerances = plan.request.tolerances()
    errors = []
    with np.load(reference_dir / REFERENCE) as npz:
        for shape in plan.verify_shapes:
            at = f" @{shape.size_label}" if plan.request.dynamic else ""
            inputs = verify_inputs(shape, real)
            reference = [[npz[f"{shape.label}/{b}/{o}"] for o in range(len(names))] for b in range(len(inputs.batches))]

            def check(stage: str, precision: str, outputs, inputs=inputs, reference=reference) -> None:
                errors.append(compare(stage, precision, inputs.judged(precision, reference),
                                      inputs.judged(precision, outputs), names, tolerances[precision], classifier))

            if exported is not loaded:
                check(f"torch fused{at}", "fp32", stages.run_torch(exported.network, inputs.batches))
            for name, stage in (("exported.onnx", "onnx exported"), ("simplified.onnx", "onnx simplified")):
                check(f"{stage}{at}", onnx_precision, run_onnx(directory / name, inputs.batches))
            if plan.quantizes_graph:
                check(f"onnx int8 qdq{at}", "int8", run_target_graph(directory, inputs.batches))
    return errors


def _rel_error(exported: Path, rewritten: Path, plan: BuildPlan, what: str) -> float | None:
    """The relative error of ``rewritten`` against the exported graph (one seeded input, output by output),
    or None where it is within the form's tolerance."""
    inputs = seeded_inputs(plan.request.shape, 1, seed=99)
    tolerance = Tolerance(rel=1e-3 if plan.form == "fp16" else 1e-5)
    reference = run_onnx(exported, inputs)
    names = [f"output {i}" for i in range(len(reference[0]))]
    error = compare(f"{what} vs exported", "fp32", reference, run_onnx(rewritten, inputs), names, tolerance,
                    classifier=False)
    log.info("%s vs exported: max abs %.3g, rel %.3g", what, error.worst.max_abs, error.worst.rel)
    return None if error.passed else error.worst.rel


def _check_simplified(exported: Path, simplified: Path, plan: BuildPlan) -> None:
    """The simplified graph must compute what the exported one does."""
    rel = _rel_error(exported, simplified, plan, "simplified")
    if rel is not None:
        raise VerificationError(f"{plan.request.simplifier} changed the graph's outputs (rel error {rel:.3g}); "
                                f"try --simplifier none")


def _check_rewritten(exported: Path, simplified: Path, plan: BuildPlan, counts: dict[str, int]) -> None:
    """The graph passes must leave the outputs as they were."""
    rel = _rel_error(exported, simplified, plan, "graph passes")
    if rel is not None:
        raise VerificationError(f"graph passes {', '.join(plan.graph_passes)} changed the graph's outputs (rel error "
                                f"{rel:.3g}); try --graph-passes none")
    log.info("graph passes: %s", ", ".join(f"{name} x{n}" for name, n in counts.items()))
