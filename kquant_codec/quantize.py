"""Quantize Pillow images: the learner applied to an image's colour bands, alpha handled per option."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .pixels import SplitImage, join_image, split_image
from .quantizer import KMeansQuantizer, check_k, check_mode

__all__ = ["QuantizedImage", "fit_image", "quantize_image", "ALPHA_OPTIONS"]

ALPHA_OPTIONS = ("keep", "quantize")


def check_alpha(alpha: str) -> str:
    if alpha not in ALPHA_OPTIONS:
        raise ValueError(f"alpha must be one of {', '.join(map(repr, ALPHA_OPTIONS))}, got {alpha!r}")
    return alpha


@dataclass
class QuantizedImage:
    """An image after fitting: the fitted learner, its labels and the parts needed to rebuild the image.

    quantizer : the fitted ``KMeansQuantizer``.
    labels : uint8, (H, W) in "rgb" mode, (H, W, C) in the 1-D modes.
    alpha : (H, W) uint8 alpha kept exact, or None.
    mode : the Pillow mode of the source image (and of the rebuilt one).
    """

    quantizer: KMeansQuantizer
    labels: np.ndarray
    alpha: np.ndarray | None
    mode: str

    def to_image(self) -> Image.Image:
        """The quantized image, in the source's mode and size."""
        return join_image(self.quantizer.reconstruct(self.labels), self.alpha, self.mode)


def fit_image(img: Image.Image, k: int = 8, mode: str = "rgb", *, seed: int = 0, alpha: str = "keep") -> QuantizedImage:
    """Fit a ``KMeansQuantizer`` to a Pillow image and label its pixels.

    alpha="keep" (default) leaves an alpha band exact and quantizes only the colour bands;
    alpha="quantize" treats alpha as one more channel of the centroids.
    """
    check_k(k)
    check_mode(mode)
    check_alpha(alpha)
    img.load()
    parts: SplitImage = split_image(img, alpha=alpha)
    quantizer = KMeansQuantizer(k=k, mode=mode, seed=seed).fit(parts.colour)
    return QuantizedImage(quantizer, quantizer.predict(parts.colour), parts.alpha, parts.mode)


def quantize_image(
    img: Image.Image, k: int = 8, mode: str = "rgb", *, seed: int = 0, alpha: str = "keep"
) -> Image.Image:
    """Return ``img`` redrawn from at most ``k`` learned centroids, in its own mode and size."""
    return fit_image(img, k, mode, seed=seed, alpha=alpha).to_image()
