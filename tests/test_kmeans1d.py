"""The 1-D modes are exact: check them against brute force and against scikit-learn."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from kquant_codec.kmeans1d import nearest_level_lut, optimal_levels


def sse(counts: np.ndarray, centroids: np.ndarray) -> int:
    values = np.arange(256)
    c = np.asarray(centroids, dtype=np.int64)
    d = np.min((values[:, None] - c[None, :]) ** 2, axis=1)
    return int((counts * d).sum())


def brute_force_best(counts: np.ndarray, k: int) -> int:
    """Least SSE over every set of k integer centroids within the data's range (small ranges only)."""
    lo, hi = np.flatnonzero(counts)[[0, -1]]
    best = None
    for combo in itertools.combinations(range(lo, hi + 1), k):
        e = sse(counts, np.array(combo))
        best = e if best is None or e < best else best
    return best


@pytest.mark.parametrize("trial", range(25))
def test_matches_brute_force_on_small_histograms(trial):
    rng = np.random.default_rng(trial)
    counts = np.zeros(256, dtype=np.int64)
    lo = int(rng.integers(0, 240))
    width = int(rng.integers(3, 14))
    counts[lo : lo + width] = rng.integers(0, 20, width)
    counts[lo] += 1  # at least one sample
    k = int(rng.integers(1, 4))
    table = optimal_levels(counts, k)
    assert table.size == min(k, np.count_nonzero(counts))
    assert np.all(np.diff(table.astype(int)) > 0)
    assert sse(counts, table) == brute_force_best(counts, min(k, np.count_nonzero(counts)))


def test_fewer_levels_than_k_is_lossless():
    counts = np.zeros(256, dtype=np.int64)
    counts[[3, 77, 250]] = [5, 1, 9]
    assert optimal_levels(counts, 8).tolist() == [3, 77, 250]
    assert optimal_levels(np.zeros(256, dtype=np.int64), 4).size == 0


@pytest.mark.parametrize("channel", [None, 0, 2])
def test_never_worse_than_minibatch_kmeans(china, channel):
    """Global mode's values (all channels) and one channel's, of a 4x-subsampled photo."""
    from sklearn.cluster import MiniBatchKMeans

    arr = np.asarray(china)[::4, ::4]
    values = (arr if channel is None else arr[:, :, channel]).reshape(-1)
    counts = np.bincount(values, minlength=256)
    for k in (2, 5, 8, 32):
        ours = sse(counts, optimal_levels(counts, k))
        mb = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=3).fit(values.reshape(-1, 1).astype(float))
        theirs = sse(counts, np.unique(np.clip(np.rint(mb.cluster_centers_[:, 0]), 0, 255)))
        assert ours <= theirs


def test_nearest_lut_is_nearest_with_low_ties():
    table = np.array([10, 20, 200], dtype=np.uint8)
    lut = nearest_level_lut(table)
    assert lut[15] == 0  # tie between 10 and 20 goes to the lower index
    assert lut[16] == 1 and lut[0] == 0 and lut[255] == 2 and lut[110] == 1 and lut[111] == 2
