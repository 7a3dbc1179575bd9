"""Exact 1-D k-means over 8-bit values, solved on their histogram.

Pixel samples take at most 256 levels, so the optimal partition into k groups can be found exactly by
dynamic programming over the sorted distinct levels (Wang & Song's Ckmeans.1d.dp idea, here on a
weighted histogram). We go one step further than the textbook version: every centroid is restricted to
an integer in 0..255, because that is what gets stored and shown. For a contiguous segment, the best
integer centroid is the rounded weighted mean (the cost is a parabola in the centroid), so the DP over
segment costs *with integer centroids* yields the exact least-squares optimum among all uint8 palettes.
All arithmetic is in int64, which is exact and identical on every machine.
"""

from __future__ import annotations

import numpy as np

__all__ = ["optimal_levels", "nearest_level_lut"]


def optimal_levels(counts: np.ndarray, k: int) -> np.ndarray:
    """Return the optimal uint8 centroids for a 256-bin histogram.

    Parameters
    ----------
    counts : int array, shape (256,)
        How many samples take each value 0..255.
    k : int
        Largest number of centroids wanted (1..256).

    Returns
    -------
    uint8 array, shape (m,), ascending, with m = min(k, number of non-empty bins) (m = 0 for an empty
    histogram). Assigning every sample to its nearest centroid gives the least possible total squared
    error among all sets of at most k integer centroids.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (256,):
        raise ValueError(f"counts must have shape (256,), got {counts.shape}")
    levels = np.flatnonzero(counts)
    n = levels.size
    if n <= k:
        return levels.astype(np.uint8)
    w = counts[levels]
    v = levels.astype(np.int64)

    # Prefix sums with a leading zero: segment [i, j] (inclusive) has sums P[j + 1] - P[i].
    pw = np.concatenate(([0], np.cumsum(w)))
    p1 = np.concatenate(([0], np.cumsum(w * v)))
    p2 = np.concatenate(([0], np.cumsum(w * v * v)))
    i_idx, j_idx = np.triu_indices(n)
    sw = pw[j_idx + 1] - pw[i_idx]
    s1 = p1[j_idx + 1] - p1[i_idx]
    s2 = p2[j_idx + 1] - p2[i_idx]
    centre = (2 * s1 + sw) // (2 * sw)  # round(s1 / sw), halves upward, in exact integers
    seg_cost = s2 - 2 * centre * s1 + centre * centre * sw

    big = np.iinfo(np.int64).max // 4
    cost = np.full((n, n), big, dtype=np.int64)  # cost[i, j]: one centroid for levels i..j
    cost[i_idx, j_idx] = seg_cost

    # best[j]: least cost of levels 0..j with the current number of segments.
    best = cost[0].copy()
    starts = np.zeros((k, n), dtype=np.int16)  # starts[m, j]: first level of the last segment
    for m in range(1, k):
        # Last segment is i..j (i >= m so earlier segments are non-empty); the rest costs best[i - 1].
        cand = best[:-1, None] + cost[1:, :]
        cand[: m - 1, :] = big
        arg = np.argmin(cand, axis=0)  # first minimum: ties resolve the same way everywhere
        new_best = cand[arg, np.arange(n)]
        starts[m] = arg + 1
        best = np.minimum(new_best, big)

    # Walk back from the last level to recover the k segments.
    centroids = []
    j = n - 1
    for m in range(k - 1, -1, -1):
        i = int(starts[m, j]) if m > 0 else 0
        seg_w = pw[j + 1] - pw[i]
        seg_s1 = p1[j + 1] - p1[i]
        centroids.append((2 * seg_s1 + seg_w) // (2 * seg_w))
        j = i - 1
    return np.array(centroids[::-1], dtype=np.uint8)


def nearest_level_lut(centroids: np.ndarray) -> np.ndarray:
    """Map every value 0..255 to the index of its nearest centroid (ties go to the lower index).

    Parameters
    ----------
    centroids : uint8 array, shape (m,), m >= 1, strictly ascending.

    Returns
    -------
    uint8 array, shape (256,).
    """
    c = np.asarray(centroids, dtype=np.int32)
    if c.ndim != 1 or c.size == 0:
        raise ValueError("need at least one centroid")
    values = np.arange(256, dtype=np.int32)
    dist = np.abs(values[:, None] - c[None, :])
    return np.argmin(dist, axis=1).astype(np.uint8)
