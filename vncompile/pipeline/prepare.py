"""The target-independent half of a build, cached on its own: load -> fuse -> export ->
simplify -> (quantize), plus the float64 reference outputs and the ONNX stages' errors.

Every target built from the same network, shape and ONNX form (a profile's targets,
a CI matrix's devices) shares one entry, so the network is exported and its float64
reference computed once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..api.request import BuildRequest, InputShape, int8_scheme
from ..api.target import Target
from ..api.tolerance import QUANTIZED, Tolerance
from ..core.errors import InputError, VerificationError
from ..core.hashing import sha256_file
from ..core.io import link_or_copy, write_json
from ..data.evaluation import EvalSet
from ..onnxtools.layers import LAYERS_CSV, layer_errors, write_layers
from ..onnxtools.order import depth_first_order
from ..onnxtools.run import run_onnx, seeded_inputs
from ..targets import get_target
from ..vanillanet.features import features_text
from .accuracy import accuracy
from .cache import BuildCache
from .timing import StageTimings
from .verify import StageError, compare

log = logging.getLogger("vncompile")
VERIFY_IMAGES = 4  # seeded inputs per verified size (top-1 agreement is over these)
INPUT_SEED = 1234
PREPARE_STAGES = ["load", "fuse", "export", "simplify", "quantize"]  # then "reference", "evaluate"
FILES = {"exported.onnx": "onnx-exported", "simplified.onnx": "onnx-simplified", "model.onnx": "onnx"}
EVAL_REFERENCE = "eval_reference.npz"  # the reference's top-1 per evaluation image: the targets' agreement
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


def real_images(request: BuildRequest, eval_set: EvalSet | None) -> np.ndarray | None:
    """A few real images for verification: the evaluation set's, else a real calibration set's."""
    from ..api.options import SYNTHETIC
    from ..data.calibration import calibration_samples, preprocessing_of

    if eval_set is not None:
        return eval_set.inputs[:VERIFY_IMAGES]
    options = request.options
    if request.precision in QUANTIZED and options.calibration is not None and options.calibration != SYNTHETIC:
        return calibration_samples(options.calibration, request.shape, VERIFY_IMAGES,
                                   preprocessing=preprocessing_of(options))
    return None


@dataclass(frozen=True)
class PreparedOnnx:
    directory: Path
    record: dict[str, Any]
    cached: bool

    @property
    def onnx_path(self) -> Path:
        """The target-ready ONNX (simplified, or its Q/DQ int8 form)."""
        return self.directory / "model.onnx"

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
        with np.load(self.directory / "reference.npz") as npz:
            prefix = f"{shape.label}/"
            batches = sorted({int(k.split("/")[1]) for k in npz.files if k.startswith(prefix)})
            return [[npz[f"{shape.label}/{b}/{o}"] for o in range(len(self.output_names))] for b in batches]


def prepare(request: BuildRequest, form: str, key: str, cache: BuildCache, work: Path,
            timings: StageTimings, checkpoint_sha256: str | None = None,
            eval_set: EvalSet | None = None, real: np.ndarray | None = None) -> PreparedOnnx:
    with cache.lock(key):
        record = cache.lookup(key, kind="onnx")
        if record is not None:
            log.info("onnx stages served from the cache (%s)", key[:12])
            return PreparedOnnx(cache.entry(key, "onnx"), record, cached=True)
        directory = work / "prepared"
        directory.mkdir()
        record = _run(request, form, key, directory, timings, checkpoint_sha256, eval_set, real)
        return PreparedOnnx(cache.store(key, directory, kind="onnx"), record, cached=False)


def _run(request: BuildRequest, form: str, key: str, directory: Path, timings: StageTimings,
         checkpoint_sha256: str | None, eval_set: EvalSet | None, real: np.ndarray | None) -> dict[str, Any]:
    from ..api.request import check_input_shape
    from ..core.host import total_memory_bytes
    from ..data.calibration import calibration_set
    from ..onnxtools.quantize import layers_to_keep, quantize_qdq
    from ..onnxtools.simplify import simplify_onnx
    from . import stages

    with timings.stage("load"):
        loaded = stages.load_model(request.source, checkpoint_sha256)
        check_input_shape(loaded.spec, request.shape, request.dynamic, total_memory_bytes(),
                          feature_strides=tuple(m.stride for m in loaded.features))
    fitted, rewritten = None, {}
    with timings.stage("fuse"):
        exported = stages.network_for_export(loaded)
        if request.options.fit_memory is not None:  # tiled, so that the planned peak fits (exactly the same function)
            from .fit import fit_memory

            target = get_target(request.target)
            exported, fitted = fit_memory(exported, request, judge=target if target.plans_memory else None,
                                          passes=graph_passes_for(request, target))
    exported_onnx, simplified_onnx, model_onnx = (directory / name for name in FILES)
    with timings.stage("export"):
        stages.export_onnx(exported, request.shape, exported_onnx, opset=request.opset, dynamic=request.dynamic,
                           compute="fp16" if form == "fp16" else "fp32", io_dtype=request.options.io_dtype)
    with timings.stage("simplify"):
        if request.simplifier == "none":
            link_or_copy(exported_onnx, simplified_onnx)
        else:
            simplify_onnx(exported_onnx, simplified_onnx, request.simplifier)
            _check_simplified(exported_onnx, simplified_onnx, request, form)
        passes = graph_passes_for(request, get_target(request.target))
        if passes:
            rewritten = _apply_graph_passes(exported_onnx, simplified_onnx, request, form, passes)
        # Every graph in the order that frees memory soonest (a tiled one: strip after strip), the order
        # the analytic plan assumes and the one rknn's compiler itself chooses.
        depth_first_order(simplified_onnx)
    weight_bits = get_target(request.target).int8_weight_bits
    if form == "int8-qdq":
        with timings.stage("quantize"):
            calibration = calibration_set(request.options, request.shape)
            quantize_qdq(simplified_onnx, model_onnx, calibration,
                         layers_to_keep(simplified_onnx, request.options.keep_fp32), weight_bits=weight_bits)
            # Where int8 departs from fp32, layer by layer, on real images when there are some.
            probe = calibration if eval_set is None else eval_set.inputs
            write_layers(layer_errors(simplified_onnx, model_onnx, probe[:LAYER_INPUTS]), directory / LAYERS_CSV)
    else:  # the same graph: one file under both names (a full-size ONNX is ~100 MB)
        link_or_copy(simplified_onnx, model_onnx)
    names = stages.output_names(loaded)
    classifier = names == ["logits"]
    errors: list[StageError] = []
    if request.verify:
        with timings.stage("reference"):
            errors = _reference_and_onnx_errors(request, form, loaded, exported, directory, names, classifier, real)
    accuracy_section = None
    if eval_set is not None:
        with timings.stage("evaluate"):
            accuracy_section = _stage_accuracy(request, form, loaded, exported, directory, classifier, eval_set)
    spec = exported.spec
    record = {
        "cache_key": key,
        "model": {
            "name": spec.name, "label": spec.label, "width": spec.width, "form": spec.form,
            "act_num": spec.act_num, "num_classes": spec.num_classes, "act_learn": loaded.act_learn.as_dict(),
            "checkpoint_sha256": loaded.checkpoint_sha256, "trained": loaded.trained,
            "features": features_text(loaded.features),
            "detector": loaded.checkpoint.detector.as_dict() if loaded.checkpoint and loaded.checkpoint.detector
            else None,
            "fit_memory": fitted,  # --fit-memory: the tiling chosen, its planned peak and extra MACs
            "graph_passes": rewritten,  # each exact rewrite applied, and how many places it changed
            "int8_scheme": int8_scheme(weight_bits) if form == "int8-qdq" else None,
        },
        "classifier": classifier,
        "output_names": names,
        "accuracy": accuracy_section,
        "outputs": _outputs(loaded, model_onnx),
        "verification": [e.as_dict() for e in errors],
        "stages": list(timings.records),
        "artifacts": [{"path": name, "role": role, "sha256": sha256_file(directory / name),
                       "bytes": (directory / name).stat().st_size} for name, role in FILES.items()],
    }
    extra = {"reference.npz": "reference", EVAL_REFERENCE: "eval-reference", LAYERS_CSV: "int8-layers"}
    for name, role in extra.items():
        if (directory / name).is_file():
            record["artifacts"].append({"path": name, "role": role, "sha256": sha256_file(directory / name),
                                        "bytes": (directory / name).stat().st_size})
    write_json(directory / "manifest.json", record)
    return record


def _stage_accuracy(request, form, loaded, exported, directory: Path, classifier: bool,
                    eval_set: EvalSet) -> dict[str, Any]:
    """Top-1/top-5 of the reference and every torch and ONNX stage on the labelled images."""
    import torch

    from ..core.errors import InputError
    from . import stages

    if not classifier:
        raise InputError("--eval-data measures a classifier's accuracy; this network has no classifier head")
    batches = np.stack(eval_set.batches(request.shape.batch))
    reference = eval_set.logits(stages.run_torch(loaded.network, batches, dtype=torch.float64))
    if reference.shape[1] <= int(eval_set.labels.max()):
        raise InputError(f"{eval_set.images.root}: labels go up to {int(eval_set.labels.max())} but the network has "
                         f"{reference.shape[1]} classes")
    top1 = np.argmax(reference, axis=1)
    np.savez(directory / EVAL_REFERENCE, top1=top1)
    section: dict[str, Any] = {"images": len(eval_set.labels), "classes": len(eval_set.images.classes),
                               "layout": eval_set.images.layout,
                               "preprocessing": request.options.preprocessing() or "imagenet defaults",
                               "reference": accuracy(reference, eval_set.labels)}
    runs = {}
    if exported is not loaded:
        runs["torch fused"] = stages.run_torch(exported.network, batches)
    runs["onnx exported"] = run_onnx(directory / "exported.onnx", batches)
    runs["onnx simplified"] = run_onnx(directory / "simplified.onnx", batches)
    if form == "int8-qdq":
        runs["onnx int8 qdq"] = run_onnx(directory / "model.onnx", batches)
    for stage, outputs in runs.items():
        section[stage] = accuracy(eval_set.logits(outputs), eval_set.labels, top1)
    return section


def _outputs(loaded, onnx_path: Path) -> list[dict[str, Any]]:
    """Each output's name, shape (as the ONNX declares it: symbolic where dynamic) and, for a backbone,
    channels and stride."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    maps = {m.name: m for m in loaded.features}
    outputs = []
    for output in graph.output:
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in output.type.tensor_type.shape.dim]
        record: dict[str, Any] = {"name": output.name, "shape": dims}
        if output.name in maps:
            record.update(channels=maps[output.name].channels, stride=maps[output.name].stride)
        outputs.append(record)
    return outputs


def _reference_and_onnx_errors(request, form, loaded, exported, directory: Path, names: list[str],
                               classifier: bool, real: np.ndarray | None) -> list[StageError]:
    """The float64 reference (saved for the targets) and the errors of the torch and ONNX stages."""
    import torch

    from . import stages

    onnx_precision = "fp16" if form == "fp16" else "fp32"
    tolerances = request.tolerances()
    errors, arrays = [], {}

    def check(stage: str, precision: str, reference, outputs) -> None:
        errors.append(compare(stage, precision, inputs.judged(precision, reference), inputs.judged(precision, outputs),
                              names, tolerances[precision], classifier))

    for shape in request.verify_shapes():
        at = f" @{shape.size_label}" if request.dynamic else ""
        inputs = verify_inputs(shape, real)
        reference = stages.run_torch(loaded.network, inputs.batches, dtype=torch.float64)
        for b, batch in enumerate(reference):
            for o, output in enumerate(batch):
                arrays[f"{shape.label}/{b}/{o}"] = output
        if exported is not loaded:
            check(f"torch fused{at}", "fp32", reference, stages.run_torch(exported.network, inputs.batches))
        for name, stage in (("exported.onnx", "onnx exported"), ("simplified.onnx", "onnx simplified")):
            check(f"{stage}{at}", onnx_precision, reference, run_onnx(directory / name, inputs.batches))
        if form == "int8-qdq":
            check(f"onnx int8 qdq{at}", "int8", reference, run_onnx(directory / "model.onnx", inputs.batches))
    np.savez(directory / "reference.npz", **arrays)
    return errors


def _rel_error(exported: Path, rewritten: Path, request: BuildRequest, form: str, what: str) -> float | None:
    """The relative error of ``rewritten`` against the exported graph (one seeded input, output by output),
    or None where it is within the form's tolerance."""
    inputs = seeded_inputs(request.shape, 1, seed=99)
    tolerance = Tolerance(rel=1e-3 if form == "fp16" else 1e-5)
    reference = run_onnx(exported, inputs)
    names = [f"output {i}" for i in range(len(reference[0]))]
    error = compare(f"{what} vs exported", "fp32", reference, run_onnx(rewritten, inputs), names, tolerance,
                    classifier=False)
    log.info("%s vs exported: max abs %.3g, rel %.3g", what, error.worst.max_abs, error.worst.rel)
    return None if error.passed else error.worst.rel


def _check_simplified(exported: Path, simplified: Path, request: BuildRequest, form: str) -> None:
    """The simplified graph must compute what the exported one does."""
    rel = _rel_error(exported, simplified, request, form, "simplified")
    if rel is not None:
        raise VerificationError(f"{request.simplifier} changed the graph's outputs (rel error {rel:.3g}); "
                                f"try --simplifier none")


def graph_passes_for(request: BuildRequest, target: Target) -> tuple[str, ...]:
    """The graph passes a build applies: --graph-passes (``none``: none), else the target's own."""
    from ..onnxtools.passes import check_pass_names

    chosen = request.options.graph_passes
    if chosen is None:
        return target.graph_passes
    if chosen == ("none",):
        return ()
    if "none" in chosen:
        raise InputError(f"--graph-passes none stands alone, not with {', '.join(n for n in chosen if n != 'none')}")
    check_pass_names(chosen)
    return chosen


def _apply_graph_passes(exported: Path, simplified: Path, request: BuildRequest, form: str,
                        passes: tuple[str, ...]) -> dict[str, int]:
    """Rewrite the simplified graph with ``passes``; each must leave its outputs as they were."""
    from ..onnxtools.passes import apply_passes_to_file

    counts = apply_passes_to_file(simplified, passes)
    rel = _rel_error(exported, simplified, request, form, "graph passes")
    if rel is not None:
        raise VerificationError(f"graph passes {', '.join(passes)} changed the graph's outputs (rel error {rel:.3g}); "
                                f"try --graph-passes none")
    log.info("graph passes: %s", ", ".join(f"{name} x{n}" for name, n in counts.items()))
    return counts
