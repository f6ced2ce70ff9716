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

from ..errors import VerificationError
from ..hashing import sha256_file
from .artifacts import write_json
from .cache import BuildCache
from .request import BuildRequest, InputShape
from .timing import StageTimings
from .verify import StageError, Tolerance, compare

log = logging.getLogger("vncompile")
VERIFY_IMAGES = 4  # seeded inputs per verified size (top-1 agreement is over these)
INPUT_SEED = 1234
PREPARE_STAGES = ["load", "fuse", "export", "simplify", "quantize"]
FILES = {"exported.onnx": "onnx-exported", "simplified.onnx": "onnx-simplified", "model.onnx": "onnx"}


def verify_shapes(request: BuildRequest) -> list[InputShape]:
    """The request's shape and, with --dynamic, a second one: the far end of the profile when
    one is given (a dynamic engine only takes sizes inside it), else 32 pixels larger."""
    shape = request.shape
    if not request.dynamic:
        return [shape]
    profile = request.options.profile_sizes
    if profile:
        other = max(profile) if max(profile) != shape.height else min(profile)
        return [shape] if other == shape.height else [shape, shape.resized(other, other)]
    return [shape, shape.resized(shape.height + 32, shape.width + 32)]


def verify_inputs(shape: InputShape) -> np.ndarray:
    """The seeded batches every stage of every target sees for ``shape``."""
    from .stages import seeded_inputs

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
    def stage_errors(self) -> list[StageError]:
        return [StageError(**e) for e in self.record["verification"]]

    @property
    def timings(self) -> list[dict[str, Any]]:
        return [{**t, "cached": self.cached} for t in self.record["stages"]]

    def reference(self, shape: InputShape) -> list[list[np.ndarray]]:
        with np.load(self.directory / "reference.npz") as npz:
            prefix = f"{shape.label}/"
            batches = sorted({int(k.split("/")[1]) for k in npz.files if k.startswith(prefix)})
            return [[npz[f"{shape.label}/{b}/{o}"] for o in range(self.record["outputs"])] for b in batches]


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
    from . import stages
    from .calibration import calibration_samples
    from .environment import total_memory_bytes
    from .request import check_input_shape

    with timings.stage("load"):
        loaded = stages.load_model(request.source, checkpoint_sha256)
        check_input_shape(loaded.spec, request.shape, request.dynamic, total_memory_bytes())
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
            stages.simplify_onnx(exported_onnx, simplified_onnx, request.simplifier)
            _check_simplified(exported_onnx, simplified_onnx, request, form)
    if form == "int8-qdq":
        with timings.stage("quantize"):
            calibration = calibration_samples(request.options.calibration, request.shape)
            stages.quantize_qdq(simplified_onnx, model_onnx, calibration)
    else:
        shutil.copyfile(simplified_onnx, model_onnx)
    classifier = stages.output_names(loaded.network) == ["logits"]
    errors: list[StageError] = []
    outputs = 0
    if request.verify:
        with timings.stage("reference"):
            errors, outputs = _reference_and_onnx_errors(request, form, loaded, exported, directory, classifier)
    spec = exported.spec
    record = {
        "cache_key": key,
        "model": {
            "name": spec.name, "label": spec.label, "width": spec.width, "form": spec.form,
            "act_num": spec.act_num, "num_classes": spec.num_classes, "act_learn": loaded.act_learn.as_dict(),
            "checkpoint_sha256": loaded.checkpoint_sha256, "trained": loaded.trained,
        },
        "classifier": classifier,
        "outputs": outputs,
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


def _reference_and_onnx_errors(request, form, loaded, exported, directory: Path, classifier: bool):
    """The float64 reference (saved for the targets) and the errors of the torch and ONNX stages."""
    import torch

    from . import stages

    onnx_precision = "fp16" if form == "fp16" else "fp32"
    errors, arrays = [], {}
    for shape in verify_shapes(request):
        at = f" @{shape.size_label}" if request.dynamic else ""
        inputs = verify_inputs(shape)
        reference = stages.run_torch(loaded.network, inputs, dtype=torch.float64)
        for b, batch in enumerate(reference):
            for o, output in enumerate(batch):
                arrays[f"{shape.label}/{b}/{o}"] = output
        if exported is not loaded:
            errors.append(compare(f"torch fused{at}", "fp32", reference, stages.run_torch(exported.network, inputs),
                                  classifier))
        for name, stage in (("exported.onnx", "onnx exported"), ("simplified.onnx", "onnx simplified")):
            errors.append(compare(f"{stage}{at}", onnx_precision, reference,
                                  stages.run_onnx(directory / name, inputs), classifier))
        if form == "int8-qdq":
            errors.append(compare(f"onnx int8 qdq{at}", "int8", reference,
                                  stages.run_onnx(directory / "model.onnx", inputs), classifier))
    np.savez(directory / "reference.npz", **arrays)
    return errors, len(reference[0])


def _check_simplified(exported: Path, simplified: Path, request: BuildRequest, form: str) -> None:
    """The simplified graph must compute what the exported one does (one seeded input)."""
    from .stages import run_onnx, seeded_inputs

    inputs = seeded_inputs(request.shape, 1, seed=99)
    tolerance = Tolerance(rel=1e-3 if form == "fp16" else 1e-5)
    error = compare("simplified vs exported", "fp32", run_onnx(exported, inputs), run_onnx(simplified, inputs),
                    classifier=False)
    log.info("simplified vs exported: max abs %.3g, rel %.3g", error.max_abs, error.rel)
    if not tolerance.accepts(error.rel, error.cosine):
        raise VerificationError(f"{request.simplifier} changed the graph's outputs (rel error {error.rel:.3g}); "
                                "try --simplifier none")
