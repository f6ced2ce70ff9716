"""Calibration inputs for int8: a directory of images or .npy arrays, or a seeded synthetic set."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from ..api.options import TargetOptions
from ..api.request import InputShape
from ..core.errors import InputError


def _calibration_files(directory: Path) -> list[Path]:
    if not Path(directory).is_dir():
        raise InputError(f"{directory}: no such calibration directory")
    files = sorted(p for p in Path(directory).iterdir() if p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy"))
    if not files:
        raise InputError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) or .npy files for calibration")
    return files


def with_calibration_hash(options: TargetOptions) -> TargetOptions:
    """The options with the calibration set's content hash filled in: part of what a build depends on."""
    if options.calibration is None:
        return options
    return dataclasses.replace(options, calibration_sha256=directory_sha256(options.calibration))


def directory_sha256(directory: Path) -> str:
    """Content hash of a calibration set (names and bytes), for the build cache key."""
    digest = hashlib.sha256()
    for path in _calibration_files(directory):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def calibration_samples(directory: Path | None, shape: InputShape, count: int = 16) -> np.ndarray:
    """(N, C, H, W) float32 calibration inputs: images (ImageNet preprocessing) or .npy arrays
    from ``directory``, or a seeded synthetic set when none is given."""
    if directory is None:
        rng = np.random.default_rng(4321)
        return rng.standard_normal((count, *shape.as_tuple()[1:]), dtype=np.float32)
    files = _calibration_files(directory)
    samples = [_calibration_sample(p, shape) for p in files]
    return np.stack(samples).astype(np.float32)


def _calibration_sample(path: Path, shape: InputShape) -> np.ndarray:
    if path.suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        expected = shape.as_tuple()[1:]
        if array.shape != expected:
            raise InputError(f"{path}: calibration array has shape {array.shape}, expected {expected}")
        return array
    try:
        from PIL import Image
    except ImportError:
        raise InputError("calibration images need Pillow: pip install pillow (or give .npy arrays)") from None
    with Image.open(path) as image:
        image = image.convert("RGB").resize((shape.width, shape.height), Image.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
    return ((array - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)
