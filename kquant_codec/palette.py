"""One palette for many images: a streamed colour histogram, then weighted k-means on it.

    learner = PaletteLearner(k=64)
    for frame in frames:                      # one image in memory at a time
        learner.partial_fit(frame)
    pal = learner.palette_                    # (m, 3) uint8, m <= 64
    out = [f.filter(KMeansQuantize(palette=pal)) for f in frames]

The k-means objective over all pixels of all images equals the objective over their distinct colours
weighted by how many pixels have each, so the learner keeps only that histogram: the distinct 24-bit RGB
colours seen so far (ascending uint32 keys ``r << 16 | g << 8 | b``) and their int64 pixel counts. Each
image (in strips of rows) adds the ``np.unique`` of its keys to a pending list, and the pending lists are
merged into the histogram whenever they outgrow it, so memory stays within a small multiple of the number
of distinct colours seen plus one strip; above ``_DENSE_AT`` (2**21) distinct colours the histogram becomes
a dense table of 2**24 int64 counts (128 MB, fixed), which needs no merges. The palette is then learned by
``kmeans_colour.fit_palette`` on the (1, M, 3) colours with the counts as weights, the same learner (and
result) as for one image holding all those pixels: streaming N images gives exactly the palette of their
concatenation. Deterministic for a given ``seed``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image

from .kmeans_colour import fit_palette
from .pixels import colour_key
from .quantizer import check_k, check_seed

__all__ = ["PaletteLearner", "learn_palette", "colour_histogram", "image_for_palette"]

_STRIP_PIXELS = 1 << 20  # pixels counted per np.unique call: bounds the sort's temporaries (about 15 MB)
_MIN_MERGE = 1 << 20  # pending distinct colours held before a merge, at least (12 MB)
# Above this many distinct colours the sorted histogram (12 bytes a colour, and merges needing several times
# that) gives way to a dense int64 count per 24-bit colour: 128 MB, fixed, no merges.
_DENSE_AT = 1 << 21


def _pixels(image: Any) -> np.ndarray:
    """The counted pixels of one image as (H, W, 3) uint8 RGB, or (N, 3) when transparent pixels are dropped.

    Pillow images: RGB as is; modes with alpha (RGBA, LA, PA, La, RGBa, P with transparency or an RGBA
    palette, and L or RGB with a colour key) go through RGBA and their fully transparent pixels (alpha 0) are
    left out; 16-bit, 32-bit and float modes ("I;16", "I", "F") raise ``ValueError``; every other mode is
    converted to RGB.
    Arrays: (H, W, 3) uint8 RGB, or (H, W, 4) uint8 RGBA (alpha 0 left out).
    """
    if isinstance(image, Image.Image):
        if image.mode.startswith(("I", "F")):  # Pillow's conversion to RGB would clip them to 0 or 255
            raise ValueError(
                f"image mode {image.mode!r} has more than 256 levels per channel (16-bit, 32-bit or float): "
                "convert it to 'L' or 'RGB' first"
            )
        has_alpha = "A" in image.getbands() or "a" in image.getbands()
        if image.mode == "P":  # transparency by index, or per entry in an RGBA palette (Image.quantize of RGBA)
            has_alpha = "transparency" in image.info or (image.palette is not None and image.palette.mode == "RGBA")
        if colour_key(image) is not None:  # an L or RGB image's transparent colour: its pixels are not shown
            has_alpha = True
        if image.mode == "RGB" and not has_alpha:
            arr = np.asarray(image)
        else:
            arr = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(
                "image must be a Pillow image or an (H, W, 3) / (H, W, 4) uint8 array, "
                f"got {type(image).__name__} of shape {getattr(arr, 'shape', None)} and dtype {arr.dtype}"
            )
    if arr.shape[2] == 4:
        flat = arr.reshape(-1, 4)
        return flat[flat[:, 3] != 0, :3]
    return arr


def colour_histogram(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct colours of (..., 3) uint8 RGB pixels: (keys (M,) uint32 ascending, counts (M,) int64).

    Keys are ``r << 16 | g << 8 | b`` (ascending keys = colours sorted as tuples).
    """
    flat = np.ascontiguousarray(pixels).reshape(-1, 3)
    keys = flat[:, 0].astype(np.uint32) << np.uint32(16)
    keys |= flat[:, 1].astype(np.uint32) << np.uint32(8)
    keys |= flat[:, 2]
    distinct, counts = np.unique(keys, return_counts=True)
    return distinct, counts.astype(np.int64)


def _merge(keys: list[np.ndarray], counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Merge histograms: ascending distinct keys and exact int64 sums of their counts."""
    if len(keys) == 1:
        return keys[0], counts[0]
    all_keys = np.concatenate(keys)
    all_counts = np.concatenate(counts)
    order = np.argsort(all_keys, kind="stable")
    all_keys = all_keys[order]
    if not all_keys.size:
        return all_keys, all_counts
    starts = np.flatnonzero(np.r_[True, all_keys[1:] != all_keys[:-1]])
    return all_keys[starts], np.add.reduceat(all_counts[order], starts)  # int64 sums: exact


def _colours(keys: np.ndarray) -> np.ndarray:
    """Keys (M,) -> (M, 3) uint8 colours."""
    out = np.empty((keys.size, 3), dtype=np.uint8)
    out[:, 0] = keys >> np.uint32(16)
    out[:, 1] = (keys >> np.uint32(8)) & np.uint32(255)
    out[:, 2] = keys & np.uint32(255)
    return out


class PaletteLearner:
    """Learn one palette of at most ``k`` RGB colours from many images, streamed one at a time.

    Parameters
    ----------
    k : int, 1..256
        Largest number of palette colours.
    seed : int
        Seed of the k-means++ initialisation and swap search (``kmeans_colour.fit_palette``).

    Attributes
    ----------
    palette_ : (m, 3) uint8, m <= k, rows sorted as tuples: the learned palette (learned on first access
        after new images, then kept). Images with at most k distinct colours in all get exactly those.
    n_colours_seen_ : int, distinct RGB colours counted so far (at most 2**24).
    n_pixels_seen_ : int, pixels counted so far (fully transparent pixels are not counted).
    n_images_seen_ : int, images given so far.
    inertia_ : int, total squared error (channel units^2) of the counted pixels against ``palette_``.

    ``partial_fit(image)`` counts one image: a Pillow image (RGB; modes with alpha drop their fully
    transparent pixels; L, P and other 8-bit modes are converted to RGB, 16-bit/32-bit/float modes raise
    ``ValueError``), an (H, W, 3) uint8 RGB array or an (H, W, 4) uint8 RGBA array; not a path (the
    caller opens files and picks their frames). ``fit(images)`` forgets what was counted and counts an
    iterable of them.
    """

    def __init__(self, k: int = 64, seed: int = 0) -> None:
        self.k = k
        self.seed = seed

    def _check_params(self) -> None:
        check_k(self.k)
        check_seed(self.seed)

    def _reset(self) -> None:
        self._keys = np.zeros(0, dtype=np.uint32)
        self._counts = np.zeros(0, dtype=np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_size = 0
        self._dense: np.ndarray | None = None  # (2**24,) int64 counts, once there are many colours
        self._fitted: tuple[np.ndarray, int] | None = None
        self.n_pixels_seen_ = 0
        self.n_images_seen_ = 0

    def partial_fit(self, image: Any) -> PaletteLearner:
        """Count the colours of one image (see the class doc for what is taken); returns self."""
        self._check_params()
        if not hasattr(self, "_keys"):
            self._reset()
        if isinstance(image, (str, bytes, os.PathLike)):
            # The learner knows pixels, not files: opening (and which frames of a file) is the caller's choice.
            raise TypeError(f"partial_fit takes a Pillow image or a uint8 array, not a path ({image!r}): open it first")
        pixels = _pixels(image)
        flat = pixels.reshape(-1, 3)
        for start in range(0, flat.shape[0], _STRIP_PIXELS):
            keys, counts = colour_histogram(flat[start : start + _STRIP_PIXELS])
            self._pending.append((keys, counts))
            self._pending_size += keys.size
            if self._dense is not None or self._pending_size >= max(_MIN_MERGE, self._keys.size):
                self._flush()
        self.n_pixels_seen_ += int(flat.shape[0])
        self.n_images_seen_ += 1
        self._fitted = None
        return self

    def fit(self, images: Iterable[Any]) -> PaletteLearner:
        """Forget what was counted, count every image of ``images`` (any iterable), learn the palette."""
        self._check_params()
        self._reset()
        for image in images:
            self.partial_fit(image)
        self._learn()
        return self

    def _flush(self) -> None:
        """Fold the pending per-strip histograms into the merged one (sorted, or dense once large)."""
        if self._dense is not None:
            for keys, counts in self._pending:
                self._dense[keys] += counts  # keys of one strip are distinct: no lost updates
        elif self._pending:
            keys, counts = _merge(
                [self._keys, *(p[0] for p in self._pending)], [self._counts, *(p[1] for p in self._pending)]
            )
            self._keys, self._counts = keys, counts
            if keys.size > _DENSE_AT:
                self._dense = np.zeros(1 << 24, dtype=np.int64)
                self._dense[keys] = counts
                self._keys, self._counts = np.zeros(0, dtype=np.uint32), np.zeros(0, dtype=np.int64)
        self._pending, self._pending_size = [], 0

    def _merged(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys (M,) uint32 ascending, counts (M,) int64) of everything counted."""
        self._flush()
        if self._dense is not None:
            keys = np.flatnonzero(self._dense)
            return keys.astype(np.uint32), self._dense[keys]
        return self._keys, self._counts

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """The merged histogram so far: (colours (M, 3) uint8 sorted as tuples, counts (M,) int64)."""
        if not hasattr(self, "_keys"):
            return np.zeros((0, 3), np.uint8), np.zeros(0, np.int64)
        keys, counts = self._merged()
        return _colours(keys), counts.copy()

    def _learn(self) -> tuple[np.ndarray, int]:
        if getattr(self, "_fitted", None) is None:
            if not hasattr(self, "_keys"):
                raise AttributeError("this PaletteLearner has seen no images yet: call partial_fit() or fit() first")
            self._check_params()
            keys, counts = self._merged()
            if not keys.size:
                raise ValueError("no pixels to learn a palette from (no images, or every pixel fully transparent)")
            colours = _colours(keys)[None]  # (1, M, 3): one "image" of the distinct colours
            fitted = fit_palette(colours, int(self.k), seed=int(self.seed), sample_weight=counts[None])
            self._fitted = (fitted.palette, int(fitted.sse))
        return self._fitted

    @property
    def palette_(self) -> np.ndarray:
        return self._learn()[0].copy()

    @property
    def inertia_(self) -> int:
        return self._learn()[1]

    @property
    def n_colours_seen_(self) -> int:
        if not hasattr(self, "_keys"):
            raise AttributeError("this PaletteLearner has seen no images yet")
        self._flush()
        return int(np.count_nonzero(self._dense)) if self._dense is not None else int(self._keys.size)

    def __repr__(self) -> str:
        return f"PaletteLearner(k={self.k!r}, seed={self.seed!r})"


def learn_palette(images: Iterable[Any], k: int = 64, seed: int = 0) -> np.ndarray:
    """One palette of at most ``k`` colours for all ``images`` (streamed): (m, 3) uint8, rows sorted as tuples.

    ``images``: any iterable of Pillow images or (H, W, 3) / (H, W, 4) uint8 arrays, e.g. a generator
    that opens one file at a time (``PaletteLearner.partial_fit`` says what is counted). Raises
    ``ValueError`` when nothing is counted.
    """
    return PaletteLearner(k=k, seed=seed).fit(images).palette_


# Modes converted for a colour palette by ``image_for_palette``, and what they become (alpha kept where there is one).
_CONVERT_FOR_PALETTE = {"L": "RGB", "LA": "RGBA", "1": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def image_for_palette(img: Image.Image, palette: Any) -> Image.Image:
    """``img`` in a mode that ``palette`` ((m, 3) uint8 RGB) applies to, converting only when needed.

    RGB, RGBA and P images, and L/LA images when every palette entry is grey, are returned as they are; other
    8-bit modes ("1", L/LA with a colour palette, CMYK, YCbCr, LAB, HSV) are converted to RGB (RGBA from LA),
    since their pixels can only take the palette's colours as RGB. For command-line tools, where the user
    cannot convert first; the library's own ``palette=`` options refuse instead of changing a mode silently.
    16-bit and float images raise ``ValueError`` (Pillow's conversion clips them).
    """
    table = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    grey = bool(((table[:, 0] == table[:, 1]) & (table[:, 1] == table[:, 2])).all())
    if img.mode in ("RGB", "RGBA", "P") or (img.mode in ("L", "LA") and grey):
        return img
    target = _CONVERT_FOR_PALETTE.get(img.mode)
    if target is None:
        raise ValueError(f"a palette cannot be applied to image mode {img.mode!r} (16-bit or float samples)")
    return img.convert(target)
