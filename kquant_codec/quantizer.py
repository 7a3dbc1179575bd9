"""The palette learner: a scikit-learn-style estimator that knows pixels, not files or Pillow plugins.

``KMeansQuantizer`` learns uint8 centroids from an image's samples in one of three modes and maps
samples to uint8 label indices:

- ``"global"``: one ascending table of intensities shared by every channel (exact 1-D optimum);
- ``"channel"``: one ascending table per channel (exact 1-D optimum each);
- ``"rgb"``: one table of colour vectors, one label per pixel (weighted k-means on distinct colours).

It works on sample arrays of shape (H, W, C) uint8; ``kquant_codec.pixels`` turns Pillow images into
such arrays and back.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .kmeans1d import nearest_level_lut, optimal_levels
from .kmeans_colour import group_sums, nearest_centroid, weighted_kmeans

__all__ = ["KMeansQuantizer", "MODES", "check_k", "check_mode"]

MODES = ("rgb", "global", "channel")


def check_k(k: Any) -> int:
    """Validate the number of centroids: an integer from 1 to 256 (labels are uint8)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be an integer from 1 to 256, got {k!r}")
    if not 1 <= int(k) <= 256:
        raise ValueError(f"k must be an integer from 1 to 256, got {k}")
    return int(k)


def check_mode(mode: Any) -> str:
    """Validate the quantization mode: one of ``MODES``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return str(mode)


def _as_samples(samples: Any) -> np.ndarray:
    """Return a (H, W, C) uint8 view of the input; (H, W) arrays get C = 1."""
    arr = np.asarray(samples)
    if arr.dtype != np.uint8:
        raise ValueError(f"samples must be uint8, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] < 1:
        raise ValueError(f"samples must have shape (H, W) or (H, W, C), got {arr.shape}")
    return arr


def _pack_keys(colours: np.ndarray) -> np.ndarray:
    """Pack (N, C) uint8 colours (C <= 8) into one uint64 key each, ordered like the tuples."""
    keys = np.zeros(colours.shape[0], dtype=np.uint64)
    for c in range(colours.shape[1]):
        keys = (keys << np.uint64(8)) | colours[:, c].astype(np.uint64)
    return keys


def _unpack_keys(keys: np.ndarray, channels: int) -> np.ndarray:
    out = np.empty((keys.shape[0], channels), dtype=np.uint8)
    for c in range(channels - 1, -1, -1):
        out[:, c] = (keys & np.uint64(0xFF)).astype(np.uint8)
        keys = keys >> np.uint64(8)
    return out


def distinct_colours(
    colours: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of a (N, C) uint8 array, sorted as tuples.

    Returns (distinct (M, C) uint8, count (M,) int64 — the summed weights, inverse (N,) int64 such that
    ``distinct[inverse] == colours``).
    """
    keys = _pack_keys(colours)
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if weights is not None:
        counts = np.bincount(inverse, weights=weights, minlength=uniq.size).astype(np.int64)
    return _unpack_keys(uniq, colours.shape[1]), counts, inverse.reshape(-1)


_LEARN_POINTS = 16384  # most histogram points k-means learns on before polishing on all colours
_POLISH_ITER = 8  # Lloyd iterations on all distinct colours after learning on the coarse histogram


def _coarse_histogram(distinct: np.ndarray, counts: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge distinct colours into bins of 2**s levels per channel until at most ``limit`` bins remain.

    Each bin is represented by the weighted mean of its colours and their total count, which keeps the
    histogram's first moments. Returns the inputs unchanged when they are already small enough.
    """
    if distinct.shape[0] <= limit:
        return distinct, counts
    for shift in range(1, 8):
        keys = _pack_keys(distinct >> shift)
        uniq, inverse = np.unique(keys, return_inverse=True)
        if uniq.size <= limit:
            break
    mass, sums = group_sums(inverse, counts.astype(np.float64), distinct, uniq.size)
    return sums / mass[:, None], mass


def _refine_integer(colours: np.ndarray, counts: np.ndarray, centres: np.ndarray, rounds: int = 8) -> np.ndarray:
    """Round float centres to uint8 and polish them with Lloyd steps in integer space.

    Each pixel goes to its nearest *rounded* centre (exact integer distances), each centre moves to the
    rounded mean of its pixels; stop as soon as the total squared error stops falling.
    """
    best = np.unique(np.clip(np.rint(centres), 0, 255).astype(np.uint8), axis=0)
    index, dist = nearest_centroid(colours, best)
    best_err = int((dist * counts).sum())
    for _ in range(rounds):
        mass, sums = group_sums(index, counts.astype(np.float64), colours, best.shape[0])
        used = mass > 0
        trial = np.unique(np.clip(np.rint(sums[used] / mass[used, None]), 0, 255).astype(np.uint8), axis=0)
        t_index, t_dist = nearest_centroid(colours, trial)
        t_err = int((t_dist * counts).sum())
        if t_err >= best_err:
            break
        best, index, best_err = trial, t_index, t_err
    # Drop centres no colour is nearest to: they would never be used.
    return best[np.unique(index)]


class KMeansQuantizer:
    """Learn at most ``k`` uint8 centroids from an image's samples and map samples to label indices.

    Parameters
    ----------
    k : int, 1..256
        Largest number of centroids (per channel in ``"channel"`` mode).
    mode : {"rgb", "global", "channel"}
        ``"rgb"``: k colour vectors, one label per pixel. ``"global"``: k intensities shared by all
        channels, one label per sample. ``"channel"``: k intensities per channel, one label per sample.
    seed : int
        Seed of the k-means++ initialisation (``"rgb"`` only; the 1-D modes are exact and need none).
    max_iter : int
        Most Lloyd iterations in ``"rgb"`` mode.

    Attributes
    ----------
    centroids_ : the learned table, uint8. ``"rgb"``: shape (m, C), rows sorted as tuples.
        ``"global"``: shape (m,), ascending. ``"channel"``: tuple of C arrays of shape (m_c,), ascending.
    mode_ : str, the quantization mode that was fitted.
    n_channels_ : int, C, the number of channels seen in ``fit``.
    inertia_ : int, total squared error of the fitted samples against their nearest centroid.

    The sample arrays taken by ``fit``/``predict``/``transform`` have shape (H, W, C) or (H, W), dtype
    uint8. Labels from ``predict`` are uint8: shape (H, W) in ``"rgb"`` mode, (H, W, C) otherwise.
    """

    def __init__(self, k: int = 8, mode: str = "rgb", seed: int = 0, max_iter: int = 100) -> None:
        self.k = k
        self.mode = mode
        self.seed = seed
        self.max_iter = max_iter

    def _check_params(self) -> tuple[int, str]:
        k = check_k(self.k)
        mode = check_mode(self.mode)
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        return k, mode

    # -- learning -------------------------------------------------------------------------------

    def fit(self, samples: Any, sample_weight: np.ndarray | None = None) -> KMeansQuantizer:
        """Learn the centroids from a (H, W, C) or (H, W) uint8 array.

        ``sample_weight`` (optional, shape (H, W), non-negative integers) counts each pixel that many
        times; it lets a palette image be fitted on its palette weighted by how often each entry is used.
        """
        k, mode = self._check_params()
        arr = _as_samples(samples)
        channels = arr.shape[2]
        weights = None
        if sample_weight is not None:
            weights = np.asarray(sample_weight, dtype=np.int64).reshape(-1)
            if weights.size != arr.shape[0] * arr.shape[1] or (weights < 0).any():
                raise ValueError("sample_weight must be non-negative, one per pixel")
        if mode == "rgb":
            self.centroids_, self.inertia_ = self._fit_vectors(arr.reshape(-1, channels), weights, k)
        else:
            per_channel = mode == "channel"
            groups = range(channels) if per_channel else [slice(None)]
            tables, inertia = [], 0
            for g in groups:
                values = arr[:, :, g].reshape(-1)
                w = weights if (per_channel or weights is None) else np.repeat(weights, channels)
                hist = np.bincount(values, weights=w, minlength=256).astype(np.int64)
                table = optimal_levels(hist, k)
                if table.size:
                    err = (np.arange(256) - table[nearest_level_lut(table)].astype(np.int64)) ** 2
                    inertia += int((hist * err).sum())
                tables.append(table)
            self.centroids_ = tuple(tables) if per_channel else tables[0]
            self.inertia_ = inertia
        self.mode_ = mode
        self.n_channels_ = channels
        return self

    def _fit_vectors(self, colours: np.ndarray, weights: np.ndarray | None, k: int) -> tuple[np.ndarray, int]:
        if colours.shape[0] == 0:
            return np.zeros((0, colours.shape[1]), dtype=np.uint8), 0
        distinct, counts, _ = distinct_colours(colours, weights)
        present = counts > 0
        distinct, counts = distinct[present], counts[present]
        if distinct.shape[0] <= k:
            return distinct, 0  # every colour gets its own centroid: lossless
        seed, max_iter = int(self.seed), int(self.max_iter)
        # Learn on a coarser histogram when there are many distinct colours, then polish on all of them.
        points, mass = _coarse_histogram(distinct, counts, _LEARN_POINTS)
        centres = weighted_kmeans(points, mass, k, seed=seed, max_iter=max_iter)
        if points is not distinct:
            centres = weighted_kmeans(distinct, counts, k, init=centres, max_iter=min(max_iter, _POLISH_ITER))
        table = _refine_integer(distinct, counts, centres)
        _, dist = nearest_centroid(distinct, table)
        return table, int((dist * counts).sum())

    # -- applying -------------------------------------------------------------------------------

    def _check_fitted(self, arr: np.ndarray) -> None:
        if not hasattr(self, "centroids_"):
            raise RuntimeError("this KMeansQuantizer is not fitted yet: call fit() first")
        if arr.shape[2] != self.n_channels_:
            raise ValueError(f"fitted on {self.n_channels_} channel(s), got {arr.shape[2]}")

    def predict(self, samples: Any) -> np.ndarray:
        """Label every pixel (``"rgb"``) or sample (1-D modes) with its nearest centroid's index (uint8)."""
        arr = _as_samples(samples)
        self._check_fitted(arr)
        h, w, channels = arr.shape
        if self.mode_ == "rgb":
            if h * w == 0:
                return np.zeros((h, w), dtype=np.uint8)
            distinct, _, inverse = distinct_colours(arr.reshape(-1, channels))
            index, _ = nearest_centroid(distinct, self.centroids_)
            return index.astype(np.uint8)[inverse].reshape(h, w)
        tables = self.centroids_ if self.mode_ == "channel" else (self.centroids_,) * channels
        labels = np.empty_like(arr)
        for c in range(channels):
            labels[:, :, c] = nearest_level_lut(tables[c])[arr[:, :, c]] if arr.size else 0
        return labels

    def reconstruct(self, labels: np.ndarray) -> np.ndarray:
        """Rebuild samples from labels through the centroid lookup: (H, W[, C]) uint8 -> (H, W, C) uint8."""
        if not hasattr(self, "centroids_"):
            raise RuntimeError("this KMeansQuantizer is not fitted yet: call fit() first")
        return lookup(self.mode_, self.centroids_, labels)

    def transform(self, samples: Any) -> np.ndarray:
        """Quantize: the samples replaced by their nearest centroids, same shape, uint8."""
        arr = _as_samples(samples)
        out = self.reconstruct(self.predict(arr))
        return out.reshape(np.shape(samples))

    def fit_transform(self, samples: Any) -> np.ndarray:
        return self.fit(samples).transform(samples)

    def __repr__(self) -> str:
        return f"KMeansQuantizer(k={self.k!r}, mode={self.mode!r}, seed={self.seed!r}, max_iter={self.max_iter!r})"


def lookup(mode: str, centroids: Any, labels: np.ndarray) -> np.ndarray:
    """Centroid lookup shared by the learner and the decoder.

    ``"rgb"``: labels (H, W) index rows of ``centroids`` (m, C). ``"global"``: labels (H, W, C) index the
    table (m,). ``"channel"``: labels[..., c] index ``centroids[c]``. Returns (H, W, C) uint8.
    Raises ``ValueError`` when a label points past its table.
    """
    labels = np.asarray(labels)
    if mode == "rgb":
        table = np.asarray(centroids, dtype=np.uint8)
        if labels.size and int(labels.max()) >= table.shape[0]:
            raise ValueError(f"label {int(labels.max())} points past the {table.shape[0]}-entry centroid table")
        return table[labels]
    channels = labels.shape[2]
    tables = centroids if mode == "channel" else (centroids,) * channels
    out = np.empty(labels.shape, dtype=np.uint8)
    for c in range(channels):
        table = np.asarray(tables[c], dtype=np.uint8)
        plane = labels[:, :, c]
        if plane.size and int(plane.max()) >= table.shape[0]:
            raise ValueError(f"label {int(plane.max())} points past the {table.shape[0]}-entry table of channel {c}")
        out[:, :, c] = table[plane]
    return out
