"""Calibration inputs for int8: real images (any layout below a directory: a YOLO set's images/ too) or .npy
arrays, preprocessed like evaluation images (a detector's letterboxed as its mAP is measured); or a seeded
synthetic set, for random weights or when asked for on purpose."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from ..api.options import SYNTHETIC, TargetOptions
from ..api.request import InputShape
from ..core.errors import InputError
from .detection import is_detection_set, load_detection_set
from .images import content_sha256, find_images, labelled_images
from .preprocess import ImageTransform, preprocessing_from

SAMPLE_SEED = 4321  # which images of a large set calibrate, reproducibly
SYNTHETIC_COUNT = 16


def preprocessing_of(options: TargetOptions) -> ImageTransform:
    """The transform the options name (--preprocess, --mean, ...): evaluation and calibration both use it."""
    return preprocessing_from(options.preprocessing())


def with_data_hashes(options: TargetOptions) -> TargetOptions:
    """The options with the calibration and evaluation sets' content hashes filled in: part of what a build
    depends on (a changed image is a different build)."""
    # Recomputed every time, cleared where there is no set: options layered on a config's never keep the
    # hash of a set they replaced.
    changes: dict[str, str | None] = {"calibration_sha256": None, "eval_sha256": None}
    if options.calibration is not None and options.calibration != SYNTHETIC:
        root = Path(options.calibration)
        changes["calibration_sha256"] = content_sha256(root, find_images(root, arrays=True))
    if options.eval_data is not None and is_detection_set(options.eval_data):
        boxes = load_detection_set(options.eval_data)
        changes["eval_sha256"] = content_sha256(boxes.root, boxes.paths, boxes.label_bytes())
    elif options.eval_data is not None:
        images = labelled_images(options.eval_data)
        changes["eval_sha256"] = content_sha256(images.root, images.paths, json.dumps(images.labels).encode())
    return dataclasses.replace(options, **changes)


def sample(files: list[Path], count: int) -> list[Path]:
    """``count`` of ``files``, the same ones every time (all of them when there are fewer)."""
    if len(files) <= count:
        return files
    chosen = np.random.default_rng(SAMPLE_SEED).choice(len(files), size=count, replace=False)
    return [files[i] for i in sorted(chosen)]


def calibration_samples(source: Path | str | None, shape: InputShape, count: int = SYNTHETIC_COUNT, *,
                        preprocessing: ImageTransform | None = None) -> np.ndarray:
    """(N, C, H, W) float32 calibration inputs: up to ``count`` images or .npy arrays from a directory, or
    the seeded synthetic set (``None`` or ``synthetic``)."""
    if source is None or source == SYNTHETIC:
        rng = np.random.default_rng(SAMPLE_SEED)
        return rng.standard_normal((min(count, SYNTHETIC_COUNT), *shape.as_tuple()[1:]), dtype=np.float32)
    files = sample(find_images(Path(source), arrays=True), count)
    preprocessing = preprocessing or preprocessing_from({})
    return np.stack([_sample(p, shape, preprocessing) for p in files]).astype(np.float32)


def calibration_set(options: TargetOptions, shape: InputShape) -> np.ndarray:
    """The build's calibration inputs: every int8 target (Q/DQ graphs, the rknn dataset) uses this set."""
    return calibration_samples(options.calibration, shape, options.calibration_size,
                               preprocessing=preprocessing_of(options))


def _sample(path: Path, shape: InputShape, preprocessing: ImageTransform) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        return read_calibration_array(path, shape.as_tuple()[1:])
    return preprocessing.load(path, shape.height, shape.width)


def read_calibration_array(path: Path, expected: tuple[int, ...]) -> np.ndarray:
    """One preprocessed input (C, H, W) from a .npy file: its header (shape, dtype) is checked before any data is
    read; no pickles; every value finite."""
    try:
        with open(path, "rb") as f:
            header = np.lib.format.read_array_header_1_0 if np.lib.format.read_magic(f) == (1, 0) \
                else np.lib.format.read_array_header_2_0
            shape, _, dtype = header(f)  # the header alone, never the data
            if dtype.hasobject or dtype.kind not in "fiu":
                raise InputError(f"{path}: a calibration array holds numbers, not {dtype} values")
            if shape != expected:
                raise InputError(f"{path}: calibration array has shape {shape}, expected {expected}")
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:  # not a .npy file, a truncated one
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(f"{path}: calibration array has {bad:,} NaN or infinite value(s)")
    return array.astype(np.float32)
