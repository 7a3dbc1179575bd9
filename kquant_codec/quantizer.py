"""The palette learner: a scikit-learn-style estimator that knows pixels, not files or Pillow plugins.

``KMeansQuantizer`` learns uint8 centroids from an image's samples in one of three modes and maps
samples to uint8 label indices:

- ``"global"``: one ascending table of intensities shared by every channel (exact 1-D optimum);
- ``"channel"``: one ascending table per channel (exact 1-D optimum each);
- ``"rgb"``: one table of colour vectors, one label per pixel (weighted k-means on distinct colours,
  ``kquant_codec.kmeans_colour``; large 3-channel images use numba kernels, imported on first need).

It works on sample arrays of shape (H, W, C) uint8; ``kquant_codec.pixels`` turns Pillow images into
such arrays and back.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from .kmeans1d import nearest_level_lut, optimal_levels
from .kmeans_colour import MAX_CHANNELS, fit_palette, fit_palette_strips, label_pixels

__all__ = ["KMeansQuantizer", "MODES", "check_k", "check_mode", "check_palette"]

MODES = ("rgb", "global", "channel")


def check_k(k: Any) -> int:
    """Validate the number of centroids: an integer from 1 to 256 (labels are uint8)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise ValueError(f"k must be an integer from 1 to 256, got {k!r}")
    if not 1 <= int(k) <= 256:
        raise ValueError(f"k must be an integer from 1 to 256, got {k}")
    return int(k)


def check_seed(seed: Any) -> int:
    """Validate a k-means++ seed: an integer >= 0 (numpy's generators take no negative seeds)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_mode(mode: Any, name: str = "mode") -> str:
    """Validate the quantization mode: one of ``MODES`` (``name``: the parameter, for the message)."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    return str(mode)


def check_palette(palette: Any, channels: int | None = 3) -> np.ndarray:
    """Validate a given colour table and return it as a C-contiguous (m, C) uint8 array.

    ``palette``: array-like of shape (m, C) with 1 <= m <= 256 rows of integers 0..255 (C = ``channels``,
    3 for RGB; any C from 1 to ``MAX_CHANNELS`` when ``channels`` is None). Row order is kept: it decides
    ties (the lower index wins). Raises ``ValueError`` naming ``palette``.
    """
    try:
        arr = np.asarray(palette)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"palette must be an (m, 3) array of integers 0..255: {exc}") from None
    want = "3" if channels == 3 else "C" if channels is None else str(channels)
    if arr.ndim != 2 or (channels is not None and arr.shape[1] != channels):
        raise ValueError(f"palette must have shape (m, {want}), got {arr.shape}")
    if not 1 <= arr.shape[1] <= MAX_CHANNELS:
        raise ValueError(f"palette rows must have 1 to {MAX_CHANNELS} channels, got {arr.shape[1]}")
    if not 1 <= arr.shape[0] <= 256:
        raise ValueError(f"palette must have 1 to 256 colours, got {arr.shape[0]}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"palette must hold integers 0..255, got dtype {arr.dtype}")
    if not np.isfinite(arr).all() or (arr != np.round(arr)).any() or arr.min() < 0 or arr.max() > 255:
        raise ValueError("palette must hold integers 0..255 (found a value outside that range or not whole)")
    return np.ascontiguousarray(arr.astype(np.uint8))


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


def _fingerprint(arr: np.ndarray) -> tuple:
    """Identity and content of a sample array: where it lives, its layout and a digest of its bytes.

    Tells ``predict`` whether it is given the very array ``fit`` labelled, unchanged since. The digest
    (SHA-1, about 2.5 ms per megapixel of RGB) guards against the array being modified in place between
    the two calls; it is not a security boundary.
    """
    data = np.ascontiguousarray(arr).reshape(-1)  # 1-D: a buffer even when a dimension is 0
    digest = hashlib.sha1(memoryview(data), usedforsecurity=False).digest()
    return arr.__array_interface__["data"][0], arr.shape, arr.strides, digest


def value_histogram(arr: np.ndarray, channel: int | slice = slice(None)) -> np.ndarray:
    """Counts (256,) int64 of the values of ``arr[:, :, channel]`` ((H, W, C) uint8 samples).

    Counted in blocks of rows: ``np.bincount`` widens its input to 8-byte integers, so one call on a
    whole large image would allocate 8 bytes per sample and work out of cache (about 2x slower).
    """
    height, width, channels = arr.shape
    rows = max(1, (1 << 18) // max(1, width * channels))
    hist = np.zeros(256, dtype=np.int64)
    for top in range(0, height, rows):
        hist += np.bincount(arr[top : top + rows, :, channel].reshape(-1), minlength=256)
    return hist


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
        Most Lloyd iterations of each learning and polishing run in ``"rgb"`` mode (the runs also stop at
        convergence, and after 40 and 20 iterations).

    Attributes
    ----------
    centroids_ : the learned table, uint8. ``"rgb"``: shape (m, C), rows sorted as tuples.
        ``"global"``: shape (m,), ascending. ``"channel"``: tuple of C arrays of shape (m_c,), ascending.
    mode_ : str, the quantization mode that was fitted.
    n_channels_ : int, C, the number of channels seen in ``fit``.
    inertia_ : int, total squared error of the fitted samples against their nearest centroid.

    The sample arrays taken by ``fit``/``predict``/``transform`` have shape (H, W, C) or (H, W), dtype
    uint8 (C <= 8 in ``"rgb"`` mode). Labels from ``predict`` are uint8: shape (H, W) in ``"rgb"`` mode,
    (H, W, C) otherwise. In ``"rgb"`` mode every pixel gets its nearest centroid exactly (least squared
    distance, ties to the lower index), and an image with at most k distinct colours is reproduced exactly.
    Results are identical in every run, process and thread count.

    ``fit`` in ``"rgb"`` mode labels every pixel anyway; those labels are kept for the next ``predict`` of
    the same unchanged array (``fit(a).predict(a)``, ``fit_transform``), which then costs no second pass.
    """

    _engine = "auto"  # kmeans_colour engine for "rgb" mode; tests force "numpy" or "numba" per instance

    def __init__(self, k: int = 8, mode: str = "rgb", seed: int = 0, max_iter: int = 100) -> None:
        self.k = k
        self.mode = mode
        self.seed = seed
        self.max_iter = max_iter

    # scikit-learn's estimator protocol (``sklearn.base.clone``, grid searches), without importing scikit-learn
    _PARAMS = ("k", "mode", "seed", "max_iter")

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor parameters, by name."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def set_params(self, **params: Any) -> KMeansQuantizer:
        """Set constructor parameters (checked at the next ``fit``); returns self."""
        for name, value in params.items():
            if name not in self._PARAMS:
                raise ValueError(f"invalid parameter {name!r} for KMeansQuantizer; valid: {', '.join(self._PARAMS)}")
            setattr(self, name, value)
        return self

    def _check_params(self) -> tuple[int, str]:
        k = check_k(self.k)
        mode = check_mode(self.mode)
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, numbers.Integral) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        check_seed(self.seed)
        return k, mode

    @classmethod
    def from_palette(cls, palette: Any) -> KMeansQuantizer:
        """A fitted ``"rgb"``-mode quantizer whose centroids are a given palette, not learned ones.

        ``palette``: (m, C) integers 0..255, 1 <= m <= 256 (usually (m, 3) RGB; anything
        ``kquant_codec.read_palette`` returns). ``centroids_`` is the palette as uint8 rows in the given
        order (not sorted; duplicates kept), ``n_channels_`` is C and ``k`` is m. ``predict`` labels every
        pixel with its exact nearest row (least squared distance, ties to the lower index). There is no
        ``inertia_``: nothing was fitted. Calling ``fit`` afterwards learns a new table of at most m colours.
        """
        table = check_palette(palette, channels=None)
        quantizer = cls(k=table.shape[0], mode="rgb")
        quantizer.centroids_ = table
        quantizer.mode_ = "rgb"
        quantizer.n_channels_ = table.shape[1]
        quantizer._fitted_labels = None
        return quantizer

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
        self._fitted_labels = None
        if mode == "rgb" and channels == 1:
            # One channel: a colour vector is a level, and the 1-D optimum ("global" mode's exact solver) is
            # the best any k-means can reach (china as L, k=32: MSE 4.69 against 4.88 from the colour learner).
            hist = self._histogram(arr, slice(None), weights, False)
            table = optimal_levels(hist, k)
            self.centroids_ = table[:, None]
            self.inertia_ = self._level_inertia(hist, table)
            if table.size:
                self._fitted_labels = (_fingerprint(arr), nearest_level_lut(table)[arr[:, :, 0]])
        elif mode == "rgb":
            if channels > MAX_CHANNELS:
                raise ValueError(f'"rgb" mode takes at most {MAX_CHANNELS} channels, got {channels}')
            fitted = fit_palette(
                arr,
                k,
                seed=int(self.seed),
                max_iter=int(self.max_iter),
                sample_weight=weights,
                engine=self._engine,
            )
            self.centroids_, self.inertia_ = fitted.palette, fitted.sse
            if fitted.labels is not None:
                # Kept for one predict() of the same, unchanged array: labelling every pixel again would
                # count the colours a second time (the biggest single cost on large images).
                self._fitted_labels = (_fingerprint(arr), fitted.labels)
        else:
            per_channel = mode == "channel"
            groups = range(channels) if per_channel else [slice(None)]
            tables, inertia = [], 0
            for g in groups:
                hist = self._histogram(arr, g, weights, not per_channel)
                table = optimal_levels(hist, k)
                inertia += self._level_inertia(hist, table)
                tables.append(table)
            self.centroids_ = tuple(tables) if per_channel else tables[0]
            self.inertia_ = inertia
        self.mode_ = mode
        self.n_channels_ = channels
        return self

    @staticmethod
    def _histogram(arr: np.ndarray, group: int | slice, weights: np.ndarray | None, all_channels: bool) -> np.ndarray:
        """Counts of the values 0..255 of channel ``group`` (or of every channel), each pixel ``weights`` times."""
        if weights is None:
            return value_histogram(arr, group)
        w = np.repeat(weights, arr.shape[2]) if all_channels else weights
        return np.bincount(arr[:, :, group].reshape(-1), weights=w, minlength=256).astype(np.int64)

    @staticmethod
    def _level_inertia(hist: np.ndarray, table: np.ndarray) -> int:
        """Sum of squared distances of the histogram's values to their nearest level."""
        if not table.size:
            return 0
        err = (np.arange(256) - table[nearest_level_lut(table)].astype(np.int64)) ** 2
        return int((hist * err).sum())

    def _fit_strips(self, strips: Callable[[], Iterable[np.ndarray]], height: int, width: int) -> np.ndarray | None:
        """``fit`` in "rgb" mode of a large 3-channel image read in strips (``fit_palette_strips``), returning
        its (H, W) labels; the same centroids and labels as ``fit`` and ``predict`` on the joined array.
        None (nothing fitted) when the strip path does not apply: the caller then joins the strips."""
        k, mode = self._check_params()
        if mode != "rgb" or self._engine != "auto":
            return None
        fitted = fit_palette_strips(strips, height, width, k, seed=int(self.seed), max_iter=int(self.max_iter))
        if fitted is None:
            return None
        self._fitted_labels = None
        self.centroids_, self.inertia_ = fitted.palette, fitted.sse
        self.mode_ = mode
        self.n_channels_ = 3
        return fitted.labels

    # -- applying -------------------------------------------------------------------------------

    def _check_fitted(self, arr: np.ndarray) -> None:
        if not hasattr(self, "centroids_"):
            raise _not_fitted()
        if arr.shape[2] != self.n_channels_:
            raise ValueError(f"fitted on {self.n_channels_} channel(s), got {arr.shape[2]}")

    def predict(self, samples: Any) -> np.ndarray:
        """Label every pixel (``"rgb"``) or sample (1-D modes) with its nearest centroid's index (uint8)."""
        arr = _as_samples(samples)
        self._check_fitted(arr)
        h, w, channels = arr.shape
        if self.mode_ == "rgb":
            cached, self._fitted_labels = getattr(self, "_fitted_labels", None), None  # one use only
            if cached is not None and cached[0] == _fingerprint(arr):
                return cached[1]
            return label_pixels(arr, self.centroids_, engine=self._engine)
        if not arr.size:
            return np.zeros_like(arr)
        # Fancy indexing, not np.take: take's first call in a process ran 5-15x slower (0.7-1.6 s for 72 M samples
        # against 0.11-0.15 s; numpy 2.4), and it is most runs' only call.
        if self.mode_ == "global":  # one table: one gather over all samples
            return nearest_level_lut(self.centroids_)[arr]
        labels = np.empty_like(arr)
        for c in range(channels):
            labels[:, :, c] = nearest_level_lut(self.centroids_[c])[arr[:, :, c]]
        return labels

    def reconstruct(self, labels: np.ndarray) -> np.ndarray:
        """Rebuild samples from labels through the centroid lookup: (H, W[, C]) uint8 -> (H, W, C) uint8."""
        if not hasattr(self, "centroids_"):
            raise _not_fitted()
        return lookup(self.mode_, self.centroids_, labels)

    def transform(self, samples: Any) -> np.ndarray:
        """Quantize: the samples replaced by their nearest centroids, same shape, uint8."""
        arr = _as_samples(samples)
        self._check_fitted(arr)
        if self.mode_ != "rgb" and arr.size:
            # 1-D modes: the centroid of each value through one table (centroid of the nearest level), so
            # one gather per channel instead of predict's and reconstruct's two.
            tables = self.centroids_ if self.mode_ == "channel" else (self.centroids_,) * arr.shape[2]
            value_maps = [np.asarray(t, dtype=np.uint8)[nearest_level_lut(t)] for t in tables]
            if self.mode_ == "global":
                out = value_maps[0][arr]
            else:
                out = np.empty_like(arr)
                for c, value_map in enumerate(value_maps):
                    out[:, :, c] = value_map[arr[:, :, c]]
        else:
            out = self.reconstruct(self.predict(arr))
        return out.reshape(np.shape(samples))

    def fit_transform(self, samples: Any) -> np.ndarray:
        return self.fit(samples).transform(samples)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_fitted_labels", None)  # a per-process shortcut, not part of the fitted model
        return state

    def __repr__(self) -> str:
        return f"KMeansQuantizer(k={self.k!r}, mode={self.mode!r}, seed={self.seed!r}, max_iter={self.max_iter!r})"


def _not_fitted() -> Exception:
    """scikit-learn's ``NotFittedError`` (a ``ValueError`` and an ``AttributeError``), as its estimators raise."""
    from sklearn.exceptions import NotFittedError

    return NotFittedError("this KMeansQuantizer is not fitted yet: call fit() first")


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
    if mode == "global":  # one table: one check and one gather over all samples
        table = np.asarray(centroids, dtype=np.uint8)
        if labels.size and int(labels.max()) >= table.shape[0]:
            raise ValueError(f"label {int(labels.max())} points past the {table.shape[0]}-entry table")
        return table[labels]
    channels = labels.shape[2]
    out = np.empty(labels.shape, dtype=np.uint8)
    for c in range(channels):
        table = np.asarray(centroids[c], dtype=np.uint8)
        plane = labels[:, :, c]
        if plane.size and int(plane.max()) >= table.shape[0]:
            raise ValueError(f"label {int(plane.max())} points past the {table.shape[0]}-entry table of channel {c}")
        out[:, :, c] = table[plane]
    return out
