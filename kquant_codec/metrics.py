"""Error between two images: absolute (L1), squared and L2-norm error, MSE and PSNR.

Inputs are Pillow images or numpy arrays of equal shape. Differences are taken in int64, so uint8
inputs cannot wrap around (0 - 255 is -255, not 1). Two Pillow images are compared by what they show: a
palette ("P", "PA") image by its colours (in the other image's RGB or RGBA; else RGBA when either has
transparency), not its palette indices, and a bilevel ("1") image as 0 and 255, so that errors are on the
0..255 scale of any other 8-bit image. An image compared with an array is taken as ``np.asarray`` gives it
(indices, 0/1), as the array is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["absolute_error", "squared_error", "l2_error", "mse", "psnr", "error_report"]


def _palette_target(img: Image.Image, other: Image.Image) -> str:
    """The mode a palette image is compared in: the other image's RGB/RGBA; else RGBA only with transparency."""
    if other.mode in ("RGB", "RGBA"):
        return other.mode
    palettes = [im for im in (img, other) if im.mode in ("P", "PA")]
    see_through = any(im.mode == "PA" or "transparency" in im.info or im.palette.mode == "RGBA" for im in palettes)
    return "RGBA" if see_through else "RGB"


def _shown(img: Image.Image, other: Image.Image) -> Image.Image:
    """``img`` as what it shows, for comparing with ``other``: a palette image as colours, "1" as 0/255."""
    if img.mode in ("P", "PA"):
        return img.convert(_palette_target(img, other))
    if img.mode == "1":
        return img.convert("L")
    return img


def _diff(a: Any, b: Any) -> np.ndarray:
    if isinstance(a, Image.Image) and isinstance(b, Image.Image):
        a, b = _shown(a, b), _shown(b, a)
    x = np.asarray(a)
    y = np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    return x.astype(np.int64) - y.astype(np.int64)


def absolute_error(a: Any, b: Any) -> int:
    """L1 error: the sum over all samples of |a - b|, in sample units."""
    return int(np.abs(_diff(a, b)).sum())


def squared_error(a: Any, b: Any) -> int:
    """Sum over all samples of (a - b)**2, in squared sample units."""
    d = _diff(a, b)
    return int((d * d).sum())


def l2_error(a: Any, b: Any) -> float:
    """L2 norm of the difference: sqrt of ``squared_error``."""
    return math.sqrt(squared_error(a, b))


def mse(a: Any, b: Any) -> float:
    """Mean squared error per sample (0.0 for empty images)."""
    d = _diff(a, b)
    return float((d * d).sum() / d.size) if d.size else 0.0


def psnr(a: Any, b: Any, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB; ``math.inf`` when the images are identical."""
    m = mse(a, b)
    return math.inf if m == 0 else 10.0 * math.log10(peak * peak / m)


def error_report(a: Any, b: Any) -> dict[str, float]:
    """All four figures at once: {"l1", "l2", "mse", "psnr"}."""
    return {"l1": absolute_error(a, b), "l2": l2_error(a, b), "mse": mse(a, b), "psnr": psnr(a, b)}
