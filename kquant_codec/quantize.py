"""Quantize Pillow images: the learner applied to an image's colour bands, alpha handled per option.

With ``palette=`` the colours are not learned: every pixel is mapped to its exact nearest colour of the
given (m, 3) RGB palette (least squared distance, ties to the lower index). Per image mode:

- "RGB": every pixel mapped; "RGBA": colour mapped, alpha kept exact;
- "P": its colours (RGBA when it has transparency) mapped, alpha kept; the result is a "P" image;
- "L", "LA": only when every palette colour is a grey (r == g == b), mapped among those greys, alpha kept;
  a palette with colours raises ``ValueError`` (convert the image to "RGB"/"RGBA" first);
- anything else ("1", "CMYK", "YCbCr", "LAB", "HSV", 16-bit, float): ``ValueError`` (convert to "RGB").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .pixels import SplitImage, few_colours, join_image, rgb_strips, split_image
from .quantizer import KMeansQuantizer, check_k, check_mode, check_palette, value_histogram

__all__ = ["QuantizedImage", "fit_image", "quantize_image", "ALPHA_OPTIONS", "PALETTE_IMAGE_MODES"]

ALPHA_OPTIONS = ("keep", "quantize")
PALETTE_IMAGE_MODES = ("RGB", "RGBA", "P", "L", "LA")  # modes a given palette applies to (see module doc)


class _DefaultK(int):
    """The default k (8), told apart from an explicit ``k=8``: with ``palette=`` only an explicit k is checked."""


DEFAULT_K = _DefaultK(8)


def given_k(k: Any) -> Any:
    """``k`` as the caller gave it: None when it was left at its default."""
    return None if isinstance(k, _DefaultK) else k


def check_alpha(alpha: str) -> str:
    if not isinstance(alpha, str) or alpha not in ALPHA_OPTIONS:
        raise ValueError(f"alpha must be one of {', '.join(map(repr, ALPHA_OPTIONS))}, got {alpha!r}")
    return alpha


def check_palette_options(palette: Any, k: Any = None, mode: Any = "rgb", alpha: Any = "keep") -> np.ndarray:
    """Validate ``palette=`` and the options given with it; return the palette as (m, 3) uint8.

    Rules: ``mode`` must be "rgb" (a palette is a table of colour vectors); ``k`` is ignored and may be
    left out (None), but an explicit ``k`` below m (the palette's colour count) contradicts it and raises;
    ``alpha`` must be "keep" (an RGB palette has no alpha to quantize to). ``ValueError`` otherwise.
    """
    table = check_palette(palette)
    k = given_k(k)
    if mode != "rgb":
        raise ValueError(f'a palette is a table of RGB colours: palette= needs mode="rgb", got mode={mode!r}')
    if k is not None and check_k(k) < table.shape[0]:
        raise ValueError(
            f"k={k} is fewer than the palette's {table.shape[0]} colours: leave k out when giving a palette "
            "(it is ignored), or pass a smaller palette"
        )
    if alpha != "keep":
        raise ValueError(f'an RGB palette has no alpha: palette= needs alpha="keep", got alpha={alpha!r}')
    return table


def palette_table_for(image_mode: str, table: np.ndarray) -> np.ndarray:
    """The table to label an image's colour bands with: ``table`` (m, 3) itself for RGB colours, its grey
    column (m, 1) for "L"/"LA" when every entry is grey. ``ValueError`` saying what to do otherwise."""
    if image_mode in ("RGB", "RGBA", "P"):
        return table
    if image_mode in ("L", "LA"):
        if not ((table[:, 0] == table[:, 1]) & (table[:, 1] == table[:, 2])).all():
            raise ValueError(
                f"image mode {image_mode!r} holds only greys and the palette has colours: convert the image "
                f"first, e.g. img.convert({'RGB' if image_mode == 'L' else 'RGBA'!r})"
            )
        return table[:, :1]
    raise ValueError(
        f"a palette cannot be applied to image mode {image_mode!r}; convert the image to 'RGB' (or 'RGBA' to "
        f"keep alpha) first, e.g. img.convert('RGB'). Modes taken: {', '.join(PALETTE_IMAGE_MODES)}"
    )


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


def fit_image(
    img: Image.Image,
    k: int = DEFAULT_K,
    mode: str = "rgb",
    *,
    seed: int = 0,
    alpha: str = "keep",
    palette: Any = None,
) -> QuantizedImage:
    """Fit a ``KMeansQuantizer`` to a Pillow image and label its pixels.

    k : 1..256 centroids (default 8; ignored with ``palette``, where it may also be None).
    alpha="keep" (default) leaves an alpha band exact and quantizes only the colour bands;
    alpha="quantize" treats alpha as one more channel of the centroids.
    palette : optional (m, 3) uint8 RGB palette (1 <= m <= 256) used instead of learning: the quantizer is
        ``KMeansQuantizer.from_palette`` and every pixel gets its exact nearest palette colour. ``k`` and
        ``seed`` are then ignored (see ``check_palette_options`` for the rules and the module doc for the
        image modes taken).
    """
    if palette is not None:
        table = palette_table_for(img.mode, check_palette_options(palette, k, mode, alpha))
        img.load()
        parts: SplitImage = split_image(img, alpha="keep")  # "P" -> RGB colour (+ exact alpha if any)
        quantizer = KMeansQuantizer.from_palette(table)
        return QuantizedImage(quantizer, quantizer.predict(parts.colour), parts.alpha, parts.mode)
    k = check_k(k)
    check_mode(mode)
    check_alpha(alpha)
    img.load()
    quantizer = KMeansQuantizer(k=k, mode=mode, seed=seed)
    if mode == "rgb" and img.mode == "RGB":
        # Large images are read out of Pillow in strips, twice, rather than copied whole (72 MB at 24 MP);
        # the result is the same.
        labels = quantizer._fit_strips(rgb_strips(img), img.height, img.width)
        if labels is not None:
            return QuantizedImage(quantizer, labels, None, img.mode)
    parts = split_image(img, alpha=alpha)
    quantizer.fit(_to_learn(parts, k, mode))
    return QuantizedImage(quantizer, quantizer.predict(parts.colour), parts.alpha, parts.mode)


def _to_learn(parts: SplitImage, k: int, mode: str) -> np.ndarray:
    """The colour samples to learn from. With alpha kept exact, only the pixels that show (alpha above 0), as
    one (1, N, C) row: the colour under a fully transparent pixel is invisible, and would otherwise take
    centroids from the visible ones (china cut to a 5% visible disc, k=8: MSE over the visible pixels 315 when
    all were counted, 204 without the hidden ones). Every pixel when none or all show, and when k holds every
    colour (or level) of the image: that stays lossless, hidden colours included."""
    if parts.alpha is None:
        return parts.colour
    shown = parts.alpha != 0
    if shown.all() or not shown.any() or _fits_exactly(parts.colour, k, mode):
        return parts.colour
    return parts.colour[shown][None]


def _fits_exactly(colour: np.ndarray, k: int, mode: str) -> bool:
    """Whether k centroids can hold every colour ("rgb") or level ("global": over all channels; "channel":
    each channel's) of the (H, W, C) samples."""
    if mode == "global":
        return int(np.count_nonzero(value_histogram(colour))) <= k
    if mode == "channel":
        return all(np.count_nonzero(value_histogram(colour, c)) <= k for c in range(colour.shape[2]))
    flat = colour.reshape(-1, colour.shape[2])
    if np.unique(flat[:: max(1, flat.shape[0] // 65536)], axis=0).shape[0] > k:  # (most photos stop here)
        return False
    return few_colours(colour, k) is not None


def quantize_image(
    img: Image.Image,
    k: int = DEFAULT_K,
    mode: str = "rgb",
    *,
    seed: int = 0,
    alpha: str = "keep",
    palette: Any = None,
) -> Image.Image:
    """Return ``img`` redrawn from at most ``k`` learned centroids, in its own mode and size.

    With ``palette`` ((m, 3) uint8 RGB, 1 <= m <= 256): every pixel mapped to its exact nearest palette
    colour instead (``k`` and ``seed`` ignored; rules in ``fit_image`` and the module doc).
    """
    if mode == "rgb" or palette is not None:
        return fit_image(img, k, mode, seed=seed, alpha=alpha, palette=palette).to_image()
    k = check_k(k)
    check_mode(mode)
    check_alpha(alpha)
    img.load()
    parts = split_image(img, alpha=alpha)  # 1-D modes: no labels needed, transform maps values directly
    quantizer = KMeansQuantizer(k=k, mode=mode, seed=seed).fit(_to_learn(parts, k, mode))
    return join_image(quantizer.transform(parts.colour), parts.alpha, parts.mode)
