"""Image preprocessing, stated and settable: the ImageNet evaluation transform by default.

The transform timm and the official VanillaNet evaluation use: resize the shorter side to
``int(size / crop_pct)`` with bilinear interpolation (a non-square input: each side to
``int(side / crop_pct)``), center crop to the input size, scale to [0, 1], normalize with
the mean and std. Evaluation and calibration go through the same one.
"""

from __future__ import annotations

import math
import struct
import warnings
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875
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
