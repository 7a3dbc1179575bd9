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
        q = self.quantizer
        if q.mode_ == "rgb" and q.n_channels_ == 3 and self.mode in ("RGB", "RGBA") and self.labels.size:
            # Through a palette image that shares the labels' memory: Pillow expands it straight into the
            # result, without the (H, W, 3) array and its bytes copy that join_image needs (at 24 MP, 144 MB
            # less at peak, and faster).
            height, width = self.labels.shape
            index = Image.frombuffer("P", (width, height), np.ascontiguousarray(self.labels), "raw", "P", 0, 1)
            index.putpalette(np.ascontiguousarray(q.centroids_).tobytes(), "RGB")
            out = index.convert("RGB")
            if self.alpha is not None:
                alpha = np.ascontiguousarray(self.alpha)
                out.putalpha(Image.frombuffer("L", (width, height), alpha, "raw", "L", 0, 1))
            return out
        return join_image(q.reconstruct(self.labels), self.alpha, self.mode)


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
    if mode == "rgb":
        return fit_image(img, k, mode, seed=seed, alpha=alpha).to_image()
    check_k(k)
    check_mode(mode)
    check_alpha(alpha)
    img.load()
    parts = split_image(img, alpha=alpha)  # 1-D modes: no labels needed, transform maps values directly
    quantizer = KMeansQuantizer(k=k, mode=mode, seed=seed).fit(parts.colour)
    return join_image(quantizer.transform(parts.colour), parts.alpha, parts.mode)
