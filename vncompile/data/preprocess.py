"""Image preprocessing, stated and settable: the ImageNet evaluation transform, or Ultralytics' letterbox.

- center-crop (``Preprocessing``, classifiers' default): the transform timm and the official VanillaNet
  evaluation use: resize the shorter side to ``int(size / crop_pct)`` with bilinear interpolation (a
  non-square input: each side to ``int(side / crop_pct)``), center crop to the input size, scale to [0, 1],
  normalize with the mean and std.
- letterbox (``Letterbox``, detectors' default), as Ultralytics validates an exported model: the image
  resized keeping its aspect ratio so that it fits the input (long side to the input's), bilinear when
  enlarging and area-averaging when shrinking, centred, padded with 114, RGB, scaled to [0, 1], no mean or
  std. Its ``Geometry`` maps boxes back to the original image.

Evaluation and calibration go through the same one (``preprocessing_from`` the options' description).
"""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875
PAD_VALUE = 114  # Ultralytics' letterbox grey
# The largest image read (8192 x 8192), checked against the size its header declares before anything is decoded: a
# few bytes can declare gigapixels (a decompression bomb).
MAX_IMAGE_PIXELS = 8192 * 8192


def read_rgb(path: Path) -> Any:
    """An image file of any mode and bit depth as an 8-bit RGB ``PIL.Image``: samples wider than 8 bits (a 16-bit
    grayscale PNG opens as I;16) are scaled to 8 bits, where ``convert("RGB")`` would clip them at 255."""
    try:
        from PIL import Image
    except ImportError:
        raise InputError("images need Pillow: pip install pillow (or give .npy arrays)") from None
    try:
        with warnings.catch_warnings():
            # Pillow warns past its own limit and refuses past twice that: both end as the refusal below.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError
                if opened.mode.startswith("I"):  # 16-bit samples (32-bit ones do not come in these formats)
                    wide = np.asarray(opened, dtype=np.float64) * (255 / 65535)
                    return Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8)).convert("RGB")
                return opened.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{path}: declares more than {MAX_IMAGE_PIXELS:,} pixels, the limit for an input image "
                         "(8192 x 8192); refused before decoding") from None
    except (OSError, ValueError, EOFError, SyntaxError, struct.error, zlib.error) as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from None


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = DEFAULT_CROP_PCT
    interpolation: str = "bilinear"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load(self, path: Path, height: int, width: int) -> np.ndarray:
        """One image file -> (3, height, width) float32, normalized."""
        from PIL import Image

        image = read_rgb(path)
        if height == width:  # the shorter side to size / crop_pct, keeping the aspect ratio
            scale = math.floor(height / self.crop_pct) / min(image.size)
            size = (max(width, round(image.size[0] * scale)), max(height, round(image.size[1] * scale)))
        else:
            size = (math.floor(width / self.crop_pct), math.floor(height / self.crop_pct))
        image = image.resize(size, Image.BILINEAR)
        left, top = (size[0] - width) // 2, (size[1] - height) // 2
        image = image.crop((left, top, left + width, top + height))
        array = np.asarray(image, dtype=np.float32) / 255.0
        mean, std = np.array(self.mean, dtype=np.float32), np.array(self.std, dtype=np.float32)
        return ((array - mean) / std).transpose(2, 0, 1)

    def load_many(self, paths: list[Path], height: int, width: int) -> np.ndarray:
        return np.stack([self.load(p, height, width) for p in paths]).astype(np.float32)


@dataclass(frozen=True)
class Geometry:
    """Where the original image lies in the letterboxed input."""

    size: tuple[int, int]  # original width, height
    scale: tuple[float, float]  # resized / original, along x and y
    pad: tuple[int, int]  # left, top: padding before the image

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """x1, y1, x2, y2 boxes in input pixels -> in the original image's, clipped to it."""
        boxes = np.array(boxes, np.float64).reshape(-1, 4)
        boxes[:, [0, 2]] = np.clip((boxes[:, [0, 2]] - self.pad[0]) / self.scale[0], 0, self.size[0])
        boxes[:, [1, 3]] = np.clip((boxes[:, [1, 3]] - self.pad[1]) / self.scale[1], 0, self.size[1])
        return boxes


@dataclass(frozen=True)
class Letterbox:
    """Ultralytics' validation preprocessing for an exported detector (see the module)."""

    pad_value: int = PAD_VALUE

    def as_dict(self) -> dict[str, Any]:
        return {"kind": "letterbox", **asdict(self), "scale": "[0, 1]", "channels": "RGB"}

    def load_with_geometry(self, path: Path, height: int, width: int) -> tuple[np.ndarray, Geometry]:
        """One image file -> ((3, height, width) float32 in [0, 1], where the image lies in it)."""
        from PIL import Image

        image = read_rgb(path)
        w0, h0 = image.size
        ratio = min(width / w0, height / h0)
        w, h = min(math.ceil(w0 * ratio), width), min(math.ceil(h0 * ratio), height)
        if (w, h) != (w0, h0):
            image = image.resize((w, h), Image.BILINEAR if ratio > 1 else Image.BOX)
        left, top = (width - w) // 2, (height - h) // 2
        canvas = Image.new("RGB", (width, height), (self.pad_value,) * 3)
        canvas.paste(image, (left, top))
        array = np.asarray(canvas, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
        return np.ascontiguousarray(array), Geometry((w0, h0), (w / w0, h / h0), (left, top))

    def load(self, path: Path, height: int, width: int) -> np.ndarray:
        return self.load_with_geometry(path, height, width)[0]

    def load_many(self, paths: list[Path], height: int, width: int) -> np.ndarray:
        return np.stack([self.load(p, height, width) for p in paths]).astype(np.float32)


ImageTransform = Preprocessing | Letterbox


def preprocessing_from(description: Mapping[str, Any]) -> ImageTransform:
    """The transform a description names (``TargetOptions.preprocessing()``, or a bundle's record of it): its
    ``kind`` (center-crop when absent, as records written before letterbox existed) and its non-default fields."""
    fields = dict(description)
    kind = fields.pop("kind", "center-crop")
    return Letterbox(**fields) if kind == "letterbox" else Preprocessing(**fields)
