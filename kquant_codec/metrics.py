"""Error between two images: absolute (L1), squared and L2-norm error, MSE and PSNR.

Inputs are Pillow images or numpy arrays of equal shape, compared sample by sample over all bands (alpha
included: it is a band like the others). Integer and boolean samples are compared exactly in int64, so uint8
inputs cannot wrap around (0 - 255 is -255, not 1); float samples in float64, fractions kept. Two Pillow images
are compared by what they show: a palette ("P", "PA") image by its colours (in the other image's RGB or RGBA;
else RGBA when either has transparency), not its palette indices, and a bilevel ("1") image as 0 and 255, so
that errors are on the 0..255 scale of any other 8-bit image. An image compared with an array is taken as
``np.asarray`` gives it (indices, 0/1), as the array is. Other modes (CMYK, YCbCr, LAB, HSV) are compared in
their own samples, not converted to RGB.

PSNR needs the largest possible sample value (``peak``). Unless given, it follows from the samples: 255 for
8-bit data (uint8 arrays, 8-bit images, "1" images compared as 0/255), 65535 for 16-bit data (uint16, "I;16"
images), 1 for booleans. For anything else (float, int32, int64: "F" and "I" images, arrays built from Python
lists) the scale is unknown and ``peak=`` must be given.
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


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(a, Image.Image) and isinstance(b, Image.Image):
        a, b = _shown(a, b), _shown(b, a)
    x = np.asarray(a)
    y = np.asarray(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {x.shape} vs {y.shape}")
    for arr in (x, y):
        if arr.dtype.kind not in "biuf":  # booleans, integers, floats
            raise ValueError(f"cannot compare samples of dtype {arr.dtype}: expected integers, booleans or floats")
    return x, y


def _diff_of(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """x - y, exact: int64 for integer and boolean samples (no wrap-around), float64 when either is float."""
    exact = not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(y.dtype, np.floating))
    kind = np.int64 if exact else np.float64
    return x.astype(kind) - y.astype(kind)


def _diff(a: Any, b: Any) -> np.ndarray:
    return _diff_of(*_pair(a, b))


def _number(v: Any) -> int | float:
    return int(v) if isinstance(v, np.integer) else float(v)


def absolute_error(a: Any, b: Any) -> int | float:
    """L1 error: the sum over all samples of |a - b|, in sample units (an int for integer samples)."""
    return _number(np.abs(_diff(a, b)).sum())


def squared_error(a: Any, b: Any) -> int | float:
    """Sum over all samples of (a - b)**2, in squared sample units (an int for integer samples)."""
    d = _diff(a, b)
    return _number((d * d).sum())


def l2_error(a: Any, b: Any) -> float:
    """L2 norm of the difference: sqrt of ``squared_error``."""
    return math.sqrt(squared_error(a, b))


def _mse_of(d: np.ndarray) -> float:
    return float((d * d).sum() / d.size) if d.size else 0.0


def mse(a: Any, b: Any) -> float:
    """Mean squared error per sample (0.0 for empty images)."""
    return _mse_of(_diff(a, b))


_PEAKS = {("u", 1): 255.0, ("u", 2): 65535.0, ("b", 1): 1.0}  # (dtype kind, bytes): either byte order


def _peak(x: np.ndarray, y: np.ndarray, peak: float | None) -> float:
    """``peak`` checked, or the largest sample value of the data compared, from its sample type."""
    if peak is not None:
        if isinstance(peak, (bool, np.bool_)) or not isinstance(peak, (int, float, np.integer, np.floating)):
            raise ValueError(f"peak must be a positive finite number, got {peak!r}")
        if not (math.isfinite(peak) and peak > 0):
            raise ValueError(f"peak must be a positive finite number, got {peak!r}")
        return float(peak)
    px, py = _PEAKS.get((x.dtype.kind, x.dtype.itemsize)), _PEAKS.get((y.dtype.kind, y.dtype.itemsize))
    if px is not None and px == py:
        return px
    raise ValueError(
        f"psnr of {x.dtype} against {y.dtype} samples needs peak=: the largest possible sample value "
        "(e.g. 1.0 or 255.0 for float data) does not follow from the data"
    )


def _psnr_of(m: float, peak: float) -> float:
    return math.inf if m == 0 else 10.0 * math.log10(peak * peak / m)


def psnr(a: Any, b: Any, peak: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / mse)``; ``math.inf`` when the images are identical.

    ``peak``: the largest possible sample value; by default 255 for 8-bit data, 65535 for 16-bit, 1 for
    booleans, and required for other sample types (float, int32, int64)."""
    x, y = _pair(a, b)
    return _psnr_of(_mse_of(_diff_of(x, y)), _peak(x, y, peak))


def error_report(a: Any, b: Any, peak: float | None = None) -> dict[str, float]:
    """All four figures at once: {"l1", "l2", "mse", "psnr"} (``peak`` as for ``psnr``)."""
    x, y = _pair(a, b)
    p = _peak(x, y, peak)
    d = _diff_of(x, y)
    se = _number((d * d).sum())
    return {"l1": _number(np.abs(d).sum()), "l2": math.sqrt(se), "mse": _mse_of(d), "psnr": _psnr_of(_mse_of(d), p)}
