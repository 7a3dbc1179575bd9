"""Weighted k-means over colour vectors: k-means++ seeding and Lloyd iterations on a colour histogram.

An image with N pixels usually has far fewer distinct colours, so k-means runs on the distinct colours
weighted by how often each occurs, which is the same objective as k-means over all pixels.

Determinism: every coordinate is held on a grid of 1/256 channel units (fixed point 8.8) in float64.
Then every product and sum in a distance is an integer below 2**53, so the fast BLAS form
|p|^2 - 2 p.c + |c|^2 is computed *exactly*, whatever order or thread count the BLAS library uses:
the same input gives the same centroids on every machine.
"""

from __future__ import annotations

import numpy as np

__all__ = ["weighted_kmeans", "nearest_centroid", "to_fixed", "group_sums"]

_SCALE = 256.0  # fixed-point steps per channel unit
_BLOCK_ELEMENTS = 1 << 21  # distance-matrix elements per block (16 MiB of float64)


def to_fixed(x: np.ndarray) -> np.ndarray:
    """Coordinates in channel units -> float64 integers in 1/256 units (rounded to the grid)."""
    return np.rint(np.asarray(x, dtype=np.float64) * _SCALE)


def _sq_dist_fixed(p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Exact squared distances, in (1/256)^2 units, between fixed-point rows p (n, d) and c (m, d)."""
    pp = np.einsum("ij,ij->i", p, p)
    cc = np.einsum("ij,ij->i", c, c)
    return (pp[:, None] + cc[None, :]) - 2.0 * (p @ c.T)


def group_sums(
    index: np.ndarray, weights: np.ndarray, points: np.ndarray, groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Total weight (groups,) and weighted coordinate sums (groups, d) of the points in each group."""
    mass = np.bincount(index, weights=weights, minlength=groups)
    sums = np.stack(
        [np.bincount(index, weights=weights * points[:, a], minlength=groups) for a in range(points.shape[1])], 1
    )
    return mass, sums


def _nearest_fixed(p: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = p.shape[0]
    index = np.empty(n, dtype=np.int64)
    dist = np.empty(n, dtype=np.float64)
    rows = max(1, _BLOCK_ELEMENTS // max(1, c.shape[0]))
    for start in range(0, n, rows):
        d = _sq_dist_fixed(p[start : start + rows], c)
        idx = np.argmin(d, axis=1)  # first minimum: ties go to the lower centre index
        index[start : start + rows] = idx
        dist[start : start + rows] = d[np.arange(d.shape[0]), idx]
    return index, dist


def nearest_centroid(points: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest centre for every point, and that squared distance (channel units squared).

    points : (n, d) array; centres : (m, d) array, m >= 1; both in channel units, rounded to 1/256.
    Ties go to the lower centre index. For integer inputs the distances are exact integers.
    Returns (index int64 (n,), squared distance float64 (n,)).
    """
    index, dist = _nearest_fixed(to_fixed(points), to_fixed(centres))
    return index, dist / (_SCALE * _SCALE)


def _kmeans_plus_plus(p: np.ndarray, weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy weighted k-means++ seeding (several candidates per step, keep the best) on fixed-point rows."""
    n = p.shape[0]
    trials = 2 + int(np.log(k))
    first = int(np.searchsorted(np.cumsum(weights), rng.random() * weights.sum(), side="right"))
    chosen = [min(first, n - 1)]
    closest = _sq_dist_fixed(p, p[chosen])[:, 0]
    for _ in range(1, k):
        cum = np.cumsum(weights * closest)
        if cum[-1] <= 0.0:
            break  # every point already sits on a centre
        draws = rng.random(trials) * cum[-1]
        cand = np.minimum(np.searchsorted(cum, draws, side="right"), n - 1)
        cand_d = np.minimum(closest[:, None], _sq_dist_fixed(p, p[cand]))
        cand_pot = (weights[:, None] * cand_d).sum(axis=0)  # numpy's own summation: no BLAS, fixed order
        best = int(np.argmin(cand_pot))
        chosen.append(int(cand[best]))
        closest = cand_d[:, best]
    return p[chosen]


def weighted_kmeans(
    points: np.ndarray,
    weights: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1.0 / 64,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Lloyd's k-means on weighted points; returns float64 centres (m, d), m <= k, in channel units.

    points : (n, d) coordinates in channel units (0..255); weights : (n,) positive (pixel counts).
    Seeding is greedy k-means++ driven by ``seed``, unless ``init`` (m, d) gives the starting centres.
    Stops when no centre moves by more than ``tol`` channel units, or after ``max_iter`` iterations.
    Centres that lose all their points are dropped, so m can be smaller than k.
    """
    p = to_fixed(points)
    w = np.asarray(weights, dtype=np.float64)
    if init is None:
        centres = _kmeans_plus_plus(p, w, k, np.random.default_rng(seed))
    else:
        centres = to_fixed(init)
    for _ in range(max_iter):
        index, _ = _nearest_fixed(p, centres)
        mass, sums = group_sums(index, w, p, centres.shape[0])
        keep = mass > 0
        new = np.rint(sums[keep] / mass[keep, None])
        done = new.shape == centres.shape and float(np.abs(new - centres).max()) <= tol * _SCALE
        centres = new
        if done:
            break
    return centres / _SCALE
