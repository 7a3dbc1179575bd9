"""``KMeansQuantize``: the learner as a Pillow filter, for ``img.filter(KMeansQuantize(8))``."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .pixels import check_image_mode
from .quantize import DEFAULT_K, check_alpha, check_palette_options, palette_table_for, quantize_image
from .quantizer import KMeansQuantizer, check_k, check_mode, check_seed

__all__ = ["KMeansQuantize"]


def image_from_core(core) -> Image.Image:
    """Wrap a Pillow core image (what ``Image.filter`` hands a filter) in an ``Image``.

    Pillow has no public way to do this; ``Image._new`` is what it uses itself. Kept in this one helper
    (and tested) so that a change in Pillow breaks exactly one place.
    """
    return Image.Image()._new(core)


class KMeansQuantize(ImageFilter.MultibandFilter):
    """Pillow filter: redraw the image from at most ``k`` centroids learned by k-means.

    ``img.filter(KMeansQuantize(8, mode="rgb"))`` returns an image of the same mode and size.
    Parameters are those of ``KMeansQuantizer`` (``k``, ``mode``, ``seed``) plus ``alpha``:
    "keep" (default) keeps an alpha band exact, "quantize" makes it part of the centroids.

    A palette ("P") image keeps its index band and gets its palette entries replaced by their
    centroids, so transparency by palette index keeps working.

    ``palette`` (optional): a given (m, 3) RGB palette, 1 <= m <= 256 (an array-like of integers 0..255,
    or what ``kquant_codec.read_palette`` returns). Nothing is learned then: every pixel is mapped to its
    exact nearest palette colour (least squared distance, ties to the lower index). ``k`` is ignored and
    may be left out or None (it becomes m); an explicit ``k`` below m raises ``ValueError``, as do a ``mode`` other
    than "rgb" and ``alpha="quantize"``; ``seed`` is ignored. Image modes: "RGB"; "RGBA" (alpha
    kept exact); "P" (palette entries mapped, indices and transparency kept); "L"/"LA" only when every
    palette colour is grey; any other mode raises ``ValueError`` (convert to "RGB" first).
    """

    name = "KMeansQuantize"

    def __init__(self, k: int = DEFAULT_K, mode: str = "rgb", seed: int = 0, alpha: str = "keep", palette=None) -> None:
        self.mode = check_mode(mode)
        self.alpha = check_alpha(alpha)
        self.seed = check_seed(seed)
        self.palette = None
        if palette is not None:
            self.palette = check_palette_options(palette, k, mode, alpha)
            k = self.palette.shape[0]
        self.k = check_k(k)

    def filter(self, image):  # noqa: A003 - the name Pillow calls
        img = image_from_core(image)
        if self.palette is not None:
            palette_table_for(img.mode, self.palette)  # the per-mode rule, before any work
        check_image_mode(img.mode)
        if img.mode == "P":
            return self._filter_palette(img).im
        return quantize_image(img, self.k, self.mode, seed=self.seed, alpha=self.alpha, palette=self.palette).im

    def _filter_palette(self, img: Image.Image) -> Image.Image:
        if img.width == 0 or img.height == 0:  # no pixel gives its palette entries any weight: nothing to learn
            return img.copy()
        indices = np.asarray(img)
        pal_mode = img.im.getpalettemode()  # "RGBA" when the entries carry their own alpha (kept as it is)
        table = np.frombuffer(img.im.getpalette(pal_mode, pal_mode), dtype=np.uint8).reshape(-1, len(pal_mode))
        top = int(indices.max())
        if top >= table.shape[0]:  # indices past the palette show as opaque black (Pillow): entries like any other
            pad = np.zeros((top + 1 - table.shape[0], table.shape[1]), np.uint8)
            pad[:, 3:] = 255
            table = np.vstack([table, pad])
        palette = table[:, :3]
        entries = palette[None, :, :]
        if self.palette is not None:
            quantizer = KMeansQuantizer.from_palette(self.palette)
        else:
            counts = np.bincount(indices.reshape(-1), minlength=palette.shape[0])[: palette.shape[0]]
            if table.shape[1] == 4:  # learned from the entries that show, as for RGBA (quantize.py), unless
                shown = counts * (table[:, 3] > 0)  # k holds every colour used: that stays lossless
                if shown.any() and np.unique(palette[counts > 0], axis=0).shape[0] > self.k:
                    counts = shown
            quantizer = KMeansQuantizer(self.k, self.mode, seed=self.seed).fit(entries, sample_weight=counts[None, :])
        new_palette = np.hstack([quantizer.transform(entries)[0], table[:, 3:]])
        out = Image.frombytes("P", img.size, np.ascontiguousarray(indices).tobytes())
        out.putpalette(new_palette.tobytes(), pal_mode)
        out.load()
        return out

    def __repr__(self) -> str:
        if self.palette is not None:
            return f"KMeansQuantize(palette=<{self.palette.shape[0]} colours>)"
        return f"KMeansQuantize(k={self.k!r}, mode={self.mode!r}, seed={self.seed!r}, alpha={self.alpha!r})"
