"""The target-independent half of a build, cached on its own: load -> fuse -> export ->
simplify -> (quantize), plus the float64 reference outputs and the ONNX stages' errors.

Every target built from the same network, shape and ONNX form (a profile's targets,
a CI matrix's devices) shares one entry, so the network is exported and its float64
reference computed once.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..api.request import BuildRequest, InputShape
from ..api.tolerance import Tolerance
from ..core.errors import VerificationError
from ..core.hashing import sha256_file
from ..core.io import write_json
from ..onnxtools.run import run_onnx, seeded_inputs
from ..vanillanet.features import features_text
from .cache import BuildCache
from .timing import StageTimings
from .verify import StageError, compare

log = logging.getLogger("vncompile")
VERIFY_IMAGES = 4  # seeded inputs per verified size (top-1 agreement is over these)
INPUT_SEED = 1234
PREPARE_STAGES = ["load", "fuse", "export", "simplify", "quantize"]
FILES = {"exported.onnx": "onnx-exported", "simplified.onnx": "onnx-simplified", "model.onnx": "onnx"}


def verify_inputs(shape: InputShape) -> np.ndarray:
    """The seeded batches every stage of every target sees for ``shape``."""
    return seeded_inputs(shape, max(1, -(-VERIFY_IMAGES // shape.batch)), seed=INPUT_SEED)


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
            timings: StageTimings, checkpoint_sha256: str | None = None) -> PreparedOnnx:
    with cache.lock(key):
        record = cache.lookup(key, kind="onnx")
        if record is not None:
            log.info("onnx stages served from the cache (%s)", key[:12])
            return PreparedOnnx(cache.entry(key, "onnx"), record, cached=True)
        directory = work / "prepared"
        directory.mkdir()
        record = _run(request, form, key, directory, timings, checkpoint_sha256)
        return PreparedOnnx(cache.store(key, directory, kind="onnx"), record, cached=False)


def _run(request: BuildRequest, form: str, key: str, directory: Path, timings: StageTimings,
         checkpoint_sha256: str | None) -> dict[str, Any]:
    from ..api.request import check_input_shape
    from ..core.host import total_memory_bytes
    from ..data.calibration import calibration_samples
    from ..onnxtools.quantize import quantize_qdq
    from ..onnxtools.simplify import simplify_onnx
    from . import stages

    with timings.stage("load"):
        loaded = stages.load_model(request.source, checkpoint_sha256)
        check_input_shape(loaded.spec, request.shape, request.dynamic, total_memory_bytes(),
                          feature_strides=tuple(m.stride for m in loaded.features))
    with timings.stage("fuse"):
        exported = stages.network_for_export(loaded)
    exported_onnx, simplified_onnx, model_onnx = (directory / name for name in FILES)
    with timings.stage("export"):
        stages.export_onnx(exported, request.shape, exported_onnx, opset=request.opset, dynamic=request.dynamic,
                           compute="fp16" if form == "fp16" else "fp32", io_dtype=request.options.io_dtype)
    with timings.stage("simplify"):
        if request.simplifier == "none":
            shutil.copyfile(exported_onnx, simplified_onnx)
        else:
            simplify_onnx(exported_onnx, simplified_onnx, request.simplifier)
            _check_simplified(exported_onnx, simplified_onnx, request, form)
    if form == "int8-qdq":
        with timings.stage("quantize"):
            calibration = calibration_samples(request.options.calibration, request.shape)
            quantize_qdq(simplified_onnx, model_onnx, calibration)
    else:
        shutil.copyfile(simplified_onnx, model_onnx)
    names = stages.output_names(loaded)
    classifier = names == ["logits"]
    errors: list[StageError] = []
    if request.verify:
        with timings.stage("reference"):
            errors = _reference_and_onnx_errors(request, form, loaded, exported, directory, names, classifier)
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
        },
        "classifier": classifier,
        "output_names": names,
        "outputs": _outputs(loaded, model_onnx),
        "verification": [e.as_dict() for e in errors],
        "stages": list(timings.records),
        "artifacts": [{"path": name, "role": role, "sha256": sha256_file(directory / name),
                       "bytes": (directory / name).stat().st_size} for name, role in FILES.items()],
    }
    if request.verify:
        record["artifacts"].append({"path": "reference.npz", "role": "reference",
                                    "sha256": sha256_file(directory / "reference.npz"),
                                    "bytes": (directory / "reference.npz").stat().st_size})
    write_json(directory / "manifest.json", record)
    return record


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
                               classifier: bool) -> list[StageError]:
    """The float64 reference (saved for the targets) and the errors of the torch and ONNX stages."""
    import torch

    from . import stages

    onnx_precision = "fp16" if form == "fp16" else "fp32"
    tolerances = request.tolerances()
    errors, arrays = [], {}

    def check(stage: str, precision: str, reference, outputs) -> None:
        errors.append(compare(stage, precision, reference, outputs, names, tolerances[precision], classifier))

    for shape in request.verify_shapes():
        at = f" @{shape.size_label}" if request.dynamic else ""
        inputs = verify_inputs(shape)
        reference = stages.run_torch(loaded.network, inputs, dtype=torch.float64)
        for b, batch in enumerate(reference):
            for o, output in enumerate(batch):
                arrays[f"{shape.label}/{b}/{o}"] = output
        if exported is not loaded:
            check(f"torch fused{at}", "fp32", reference, stages.run_torch(exported.network, inputs))
        for name, stage in (("exported.onnx", "onnx exported"), ("simplified.onnx", "onnx simplified")):
            check(f"{stage}{at}", onnx_precision, reference, run_onnx(directory / name, inputs))
        if form == "int8-qdq":
            check(f"onnx int8 qdq{at}", "int8", reference, run_onnx(directory / "model.onnx", inputs))
    np.savez(directory / "reference.npz", **arrays)
    return errors


def _check_simplified(exported: Path, simplified: Path, request: BuildRequest, form: str) -> None:
    """The simplified graph must compute what the exported one does (one seeded input), output by output."""
    inputs = seeded_inputs(request.shape, 1, seed=99)
    tolerance = Tolerance(rel=1e-3 if form == "fp16" else 1e-5)
    reference = run_onnx(exported, inputs)
    names = [f"output {i}" for i in range(len(reference[0]))]
    error = compare("simplified vs exported", "fp32", reference, run_onnx(simplified, inputs), names, tolerance,
                    classifier=False)
    log.info("simplified vs exported: max abs %.3g, rel %.3g", error.worst.max_abs, error.worst.rel)
    if not error.passed:
        raise VerificationError(f"{request.simplifier} changed the graph's outputs (rel error "
                                f"{error.worst.rel:.3g}); try --simplifier none")
