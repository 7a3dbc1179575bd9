"""numba kernels for 3-channel images in "rgb" mode; imported lazily by ``kmeans_colour``.

Large images take a whole numba path (count tables, bins, Lloyd on all distinct colours); smaller ones use
``assign``, ``group_sums`` and ``kpp_step`` to run the numpy path's steps compiled, with the same results.

The kernels run ahead-of-time compiled when the install built them, else numba compiles them on first use
(``_native``: importing numba costs about 0.2-0.3 s and 70 MB of resident memory, and a cold cache compiles
them once, in 10-15 s).

Threads: the kernels are ``nogil``, and the wrappers below run them over ranges of points on several threads
(``_ranges``). numba's own ``parallel=True`` is deliberately not used: its OpenMP threading layer
kills a forked child process that calls a parallel kernel ("fork() called from a process already using GNU
OpenMP"), and its workqueue layer aborts when two Python threads call parallel kernels at once; both would
make the codec unsafe inside multiprocessing or thread pools.

Exactness: points and centres are integers in fixed point (a colour value v is stored as ``fix * v``) and
every distance and sum is exact int64 arithmetic, so results do not depend on thread count or order.
Shapes: ``flat`` (N, 3) uint8 pixels; points ``P`` (M, 3) int32; weights ``W`` (M,) int32; centres (m, 3)
int64 (m <= 256); labels ``idx`` (M,) uint8.
"""

from __future__ import annotations

import numpy as np

from ._native import kernel
from ._ranges import run_ranges as _run_ranges

__all__ = [
    "distinct_colours",
    "distinct_colours_of_strips",
    "label_strips",
    "points_from_keys",
    "learning_shift",
    "coarse_bins",
    "group_sums",
    "assign",
    "label_pixels",
    "kpp_step",
    "guess_labels",
    "centre_order",
]

_OPTS = {"nogil": True, "boundscheck": False}


# -- colour histogram --------------------------------------------------------------------------------


@kernel("(uint8[:, ::1], uint32[::1], int64)", inputs=(0,), **_OPTS)
def _count_half(flat, counts, half):
    """Count the pixels whose red value has top bit ``half`` into ``counts`` ((2**23,) uint32).

    Two half-size tables (32 MB) instead of one 2**24 table (64 MB) cost one more pass over the pixels
    (about 0.1 s at 24 MP) and keep 32 MB off the peak memory of a large encode.
    """
    for i in range(flat.shape[0]):
        r = np.int64(flat[i, 0])
        if (r >> 7) == half:
            counts[((r & 127) << 16) | (np.int64(flat[i, 1]) << 8) | np.int64(flat[i, 2])] += 1


@kernel("(uint32[::1], int64)", **_OPTS)
def _extract(counts, offset):
    """Occupied entries of a count table: keys (offset + entry, ascending) int32 and their counts int32."""
    m = 0
    for i in range(counts.shape[0]):
        if counts[i] != 0:
            m += 1
    keys = np.empty(m, np.int32)
    w = np.empty(m, np.int32)
    j = 0
    for i in range(counts.shape[0]):
        if counts[i] != 0:
            keys[j] = offset + i
            w[j] = counts[i]
            j += 1
    return keys, w


def distinct_colours(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct colours of (N, 3) uint8 pixels (N < 2**31) as 24-bit keys (M,) int32, ascending (= tuple
    order), and how many pixels have each, (M,) int32."""
    return distinct_colours_of_strips(lambda: (flat,))


def distinct_colours_of_strips(strips) -> tuple[np.ndarray, np.ndarray]:
    """``distinct_colours`` of an image given as strips: ``strips()`` yields (rows, W, 3) uint8 arrays.

    The same two half tables (32 MB), so the strips are read twice; reading a strip out of Pillow costs far
    less than the 32 MB a whole table would add to the peak.
    """
    counts = np.zeros(1 << 23, np.uint32)
    parts = []
    for half in (0, 1):
        if half:
            counts[:] = 0
        for strip in strips():
            _count_half(np.ascontiguousarray(strip).reshape(-1, 3), counts, half)
            del strip  # before the next strip is read, not after
        parts.append(_extract(counts, half << 23))
    del counts
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@kernel("(int32[::1], int64)", **_OPTS)
def points_from_keys(keys, fix):
    """24-bit colour keys (M,) -> fixed-point points (M, 3) int32: ``fix`` times (r, g, b)."""
    pts = np.empty((keys.shape[0], 3), np.int32)
    for j in range(keys.shape[0]):
        key = keys[j]
        pts[j, 0] = (key >> 16) * fix
        pts[j, 1] = ((key >> 8) & 255) * fix
        pts[j, 2] = (key & 255) * fix
    return pts


# -- learning bins -----------------------------------------------------------------------------------


@kernel(inline="always", **_OPTS)
def _box_key(P, i, fix, shift):
    """Index of the (2**shift)^3 colour box holding point i."""
    b = 8 - shift
    r = (np.int64(P[i, 0]) // fix) >> shift
    g = (np.int64(P[i, 1]) // fix) >> shift
    bl = (np.int64(P[i, 2]) // fix) >> shift
    return (r << (2 * b)) | (g << b) | bl


@kernel("(int32[:, ::1], int64, int64)", **_OPTS)
def _occupied(P, fix, shift):
    """Number of occupied (2**shift)^3 boxes."""
    seen = np.zeros(1 << (3 * (8 - shift)), np.uint8)
    m = 0
    for i in range(P.shape[0]):
        key = _box_key(P, i, fix, shift)
        if seen[key] == 0:
            seen[key] = 1
            m += 1
    return m


def learning_shift(P: np.ndarray, fix: int, limit: int) -> int:
    """The finest box size 2**s (s = 1..7) whose occupied boxes number at most ``limit`` (7 if none)."""
    return next((s for s in range(1, 8) if _occupied(P, fix, s) <= limit), 7)


@kernel("(int32[:, ::1], int32[::1], int64, int64)", **_OPTS)
def coarse_bins(P, W, fix, shift):
    """Merge points into (2**shift)^3 boxes.

    Returns (box means (b, 3) int64 fixed point, box masses (b,) int64, box of each point (M,) int32).
    A mean is round(sum / mass) in exact integers; boxes are numbered in key order.
    """
    nbox = 1 << (3 * (8 - shift))
    slot = np.full(nbox, -1, np.int32)
    n = P.shape[0]
    for i in range(n):
        slot[_box_key(P, i, fix, shift)] = 0
    m = 0
    for key in range(nbox):
        if slot[key] == 0:
            slot[key] = m
            m += 1
    mass = np.zeros(m, np.int64)
    sums = np.zeros((m, 3), np.int64)
    binof = np.empty(n, np.int32)
    for i in range(n):
        j = slot[_box_key(P, i, fix, shift)]
        binof[i] = j
        w = np.int64(W[i])
        mass[j] += w
        for t in range(3):
            sums[j, t] += w * np.int64(P[i, t])
    pts = np.empty((m, 3), np.int64)
    for j in range(m):
        for t in range(3):
            pts[j, t] = (2 * sums[j, t] + mass[j]) // (2 * mass[j])
    return pts, mass, binof


# -- Lloyd steps on all distinct colours ---------------------------------------------------------------


@kernel("(int32[:, ::1], int32[::1], uint8[::1], int64)", **_OPTS)
def group_sums(P, W, idx, k):
    """Exact int64 total weight (k,) and weighted coordinate sums (k, 3) of the points labelled 0..k-1."""
    mass = np.zeros(k, np.int64)
    sums = np.zeros((k, 3), np.int64)
    for i in range(P.shape[0]):
        j = idx[i]
        w = np.int64(W[i])
        mass[j] += w
        for t in range(3):
            sums[j, t] += w * np.int64(P[i, t])
    return mass, sums


_NEAR = 24  # neighbours listed per centre; a search that gets past them checks every centre


@kernel("(int64[:, ::1], int64[:, ::1], float64[:, ::1], int64, int64)", **_OPTS)
def _centre_order_rows(c, order, dist, start, stop):
    """Rows start..stop-1 of ``centre_order``, in place in ``order`` (k, near) and ``dist`` (k, near).

    Kept as int64 keys (squared distance << 9 | index) in a short sorted list filled by insertion: distinct
    integers have distinct square roots, so this is the stable order by distance.
    """
    k = c.shape[0]
    near = order.shape[1]
    top = np.empty(near, np.int64)
    for a in range(start, stop):
        n = 0
        for b in range(k):
            s = 0
            for t in range(3):
                d = c[a, t] - c[b, t]
                s += d * d
            key = (s << 9) | b
            if n == near and key >= top[near - 1]:
                continue
            j = n if n < near else near - 1  # insert, dropping the largest when full
            while j > 0 and top[j - 1] > key:
                top[j] = top[j - 1]
                j -= 1
            top[j] = key
            if n < near:
                n += 1
        for j in range(near):
            order[a, j] = top[j] & 511
            dist[a, j] = np.sqrt(np.float64(top[j] >> 9))
    return 0


def centre_order(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each centre g of c (k, 3) int64: its min(k, _NEAR) nearest centres by distance (stable: ties by
    index), (k, near) int64, and those distances, (k, near) float64.

    A short list is enough: the search below stops within the first few centres for almost every point,
    and falls back to all centres otherwise. Rows run on up to one thread per 64 centres (``_run_ranges``):
    a fit at k = 256 builds ~70 of these tables (0.45 ms each on one thread, 0.25 ms on two).
    """
    k = c.shape[0]
    near = min(k, _NEAR)
    order = np.empty((k, near), np.int64)
    dist = np.empty((k, near), np.float64)
    _run_ranges(_centre_order_rows, k, c, order, dist, min_range=64)
    return order, dist


@kernel(inline="always", **_OPTS)
def _sq_dist(c, j, p0, p1, p2):
    """Squared distance from (p0, p1, p2) to centre j of c (int64)."""
    e0 = p0 - c[j, 0]
    e1 = p1 - c[j, 1]
    e2 = p2 - c[j, 2]
    return e0 * e0 + e1 * e1 + e2 * e2


@kernel(
    "(int32[:, ::1], int64[:, ::1], int64[:, ::1], float64[:, ::1], float64[::1], uint8[::1], int32[::1],"
    " int64, int64)",
    **_OPTS,
)
def _assign_range(P, c, order, cdist, mgap, idx, W, start, stop):
    """Exact nearest centre of points start..stop-1, in place; returns their sum of W * squared distance.

    ``idx`` holds a guess on entry (any valid label; a good guess makes this fast) and the nearest centre
    on exit, ties to the lower index. Triangle inequality: a centre j can be nearer to p than the current
    best b only if |c_j - c_g| <= |p - c_g| + |p - c_b|, so the centres are scanned in order of distance
    from the guess g and the scan stops at that bound; when the bound lies beyond g's listed neighbours,
    every centre is checked. The bound carries a relative and an absolute margin so that float rounding of
    the square roots can only widen it; the decision itself is exact int64.

    ``mgap`` (k,) float64, after a Lloyd step that moved some centres and left ``idx`` exact for the
    previous ones: -1 for a moved centre; for an unmoved one, its distance to the nearest moved centre. A
    point whose centre g is unmoved can only be taken by a moved centre (an unmoved one was, and still is,
    farther or tied with a higher index), and only by one within 2 |p - c_g| of c_g: with none there (most
    points, late in a run), its label stands. All -1: a full search from guesses.
    """
    k = c.shape[0]
    near = order.shape[1]
    acc = np.int64(0)
    for i in range(start, stop):
        g = np.int64(idx[i])
        if g >= k:
            g = 0
        p0 = np.int64(P[i, 0])
        p1 = np.int64(P[i, 1])
        p2 = np.int64(P[i, 2])
        d0 = p0 - c[g, 0]
        d1 = p1 - c[g, 1]
        d2 = p2 - c[g, 2]
        best = g
        bd = d0 * d0 + d1 * d1 + d2 * d2
        rg = np.sqrt(np.float64(bd))
        lim = 2.0 * rg * (1.0 + 1e-12) + 1e-6
        stay = mgap[g] >= 0.0  # g unmoved: only moved centres can take the point
        if stay and mgap[g] > lim:
            acc += bd * np.int64(W[i])
            continue
        done = False
        for jj in range(near):
            if cdist[g, jj] > lim:
                done = True
                break
            j = order[g, jj]
            if j == g or (stay and mgap[j] >= 0.0):  # (g: a duplicate centre also sits at distance 0)
                continue
            d = _sq_dist(c, j, p0, p1, p2)
            if d < bd or (d == bd and j < best):
                if d < bd:
                    lim = (rg + np.sqrt(np.float64(d))) * (1.0 + 1e-12) + 1e-6
                best = j
                bd = d
        if not done and near < k:  # the bound reaches past the listed neighbours: check them all
            for j in range(k):
                if stay and mgap[j] >= 0.0:
                    continue
                d = _sq_dist(c, j, p0, p1, p2)
                if d < bd or (d == bd and j < best):
                    best = j
                    bd = d
        idx[i] = best
        acc += bd * np.int64(W[i])
    return acc


_GUESS_SHIFT = 4  # guesses from a table of (2**4)^3 = 4096 colour boxes


@kernel("(int64[:, ::1], int64, int64)", **_OPTS)
def _box_table(centres, fix, shift):
    """Nearest centre (ties to the lower index) of the middle of every (2**shift)^3 colour box: (boxes,) uint8."""
    b = 8 - shift
    mask = (1 << b) - 1
    half = (fix << shift) // 2
    k = centres.shape[0]
    lut = np.empty(1 << (3 * b), np.uint8)
    for box in range(lut.shape[0]):
        x0 = ((box >> (2 * b)) * fix << shift) + half
        x1 = (((box >> b) & mask) * fix << shift) + half
        x2 = ((box & mask) * fix << shift) + half
        best = 0
        bd = np.int64(1) << 62
        for j in range(k):
            d = _sq_dist(centres, j, x0, x1, x2)
            if d < bd:
                bd = d
                best = j
        lut[box] = best
    return lut


@kernel("(int32[:, ::1], uint8[::1], int64, int64, uint8[::1], int64, int64)", **_OPTS)
def _guess_range(P, lut, fix, shift, idx, start, stop):
    for i in range(start, stop):
        idx[i] = lut[_box_key(P, i, fix, shift)]
    return 0


def guess_labels(P: np.ndarray, centres: np.ndarray, fix: int) -> np.ndarray:
    """Starting guesses (M,) uint8 for ``assign``: the nearest centre to the middle of each point's colour box.

    ``assign`` is exact from any guess, but from a far one (say label 0) its pruned search measures most
    centres for most points: at k = 256 on a small photo, a Lloyd run that starts from new centres spent
    10-20 ms on its first assignment that way, against about 2 ms from these guesses. P (M, 3) fixed point
    (``fix`` per channel unit), centres (k <= 256, 3) in the same units.
    """
    lut = _box_table(np.ascontiguousarray(centres, dtype=np.int64), fix, _GUESS_SHIFT)
    idx = np.empty(P.shape[0], np.uint8)
    _run_ranges(_guess_range, P.shape[0], P, lut, fix, _GUESS_SHIFT, idx)
    return idx


# -- greedy k-means++ on learning bins -----------------------------------------------------------------


@kernel(
    "(int64[:, ::1], float64[::1], float64[::1], float64[::1], float64[::1], int64[::1], int64[:, ::1], int64)",
    **_OPTS,
)
def kpp_step(p, wf, closest, cum, u, near, centres, m):
    """One greedy k-means++ step on weighted points; returns the chosen point, or -1 when every point
    already sits on a centre.

    p (n, C) int64 fixed-point points, wf (n,) float64 weights, closest (n,) float64 squared distance of
    each point to its nearest chosen centre, near (n,) int64 that centre's number, centres (k, C) int64 the
    m centres chosen so far (both updated in place: the new one becomes number m), cum (n,) float64 scratch,
    u (t,) float64 uniform draws in [0, 1), one per candidate. Candidates are D^2-sampled (the first index
    whose running sum of weight * distance exceeds u * total); the one whose choice leaves the least total
    weighted distance wins, ties to the earlier draw.

    A candidate c can only bring point i closer when |c - centre(near_i)| < 2 sqrt(closest_i) (triangle
    inequality; tested exactly on squares of integers), so the other points are skipped. Every value is an
    integer below 2**53, so the float64 sums are exact and the result equals ``kmeans_colour._kpp``'s numpy
    step.
    """
    n, ch = p.shape
    acc = 0.0
    for i in range(n):
        acc += wf[i] * closest[i]
        cum[i] = acc
    if acc <= 0:
        return -1
    trials = u.shape[0]
    cands = np.empty(trials, np.int64)
    for t in range(trials):
        x = u[t] * acc
        lo, hi = 0, n
        while lo < hi:  # first index with cum > x ("right" side)
            mid = (lo + hi) >> 1
            if cum[mid] <= x:
                lo = mid + 1
            else:
                hi = mid
        cands[t] = min(lo, n - 1)
    cp = np.empty((trials, ch), np.int64)
    for t in range(trials):
        for a in range(ch):
            cp[t, a] = p[cands[t], a]
    gap = np.empty((trials, m), np.float64)  # squared distance from each candidate to each centre
    for t in range(trials):
        for j in range(m):
            s = 0
            for a in range(ch):
                e = cp[t, a] - centres[j, a]
                s += e * e
            gap[t, j] = s
    saved = np.zeros(trials, np.float64)  # how much each candidate lowers the total
    for i in range(n):  # one pass over the points for all candidates
        ci = closest[i]
        g = near[i]
        for t in range(trials):
            if gap[t, g] >= 4.0 * ci:
                continue
            d = 0
            for a in range(ch):
                e = p[i, a] - cp[t, a]
                d += e * e
            if d < ci:
                saved[t] += wf[i] * (ci - np.float64(d))
    best = cands[0]
    best_saved = saved[0]
    best_t = 0
    for t in range(1, trials):
        if saved[t] > best_saved:
            best_saved = saved[t]
            best = cands[t]
            best_t = t
    for a in range(ch):
        centres[m, a] = p[best, a]
    for i in range(n):
        if gap[best_t, near[i]] >= 4.0 * closest[i]:
            continue
        d = 0
        for a in range(ch):
            e = p[i, a] - p[best, a]
            d += e * e
        if d < closest[i]:
            closest[i] = d
            near[i] = m
    return best


@kernel("(uint8[:, ::1], uint8[::1], uint8[::1], int64, int64)", inputs=(0, 1), **_OPTS)
def _label_range(flat, lut, out, start, stop):
    """out[i] = lut[24-bit key of pixel i] for i in start..stop-1."""
    for i in range(start, stop):
        out[i] = lut[(np.int64(flat[i, 0]) << 16) | (np.int64(flat[i, 1]) << 8) | np.int64(flat[i, 2])]


def assign(
    P: np.ndarray, centres: np.ndarray, idx: np.ndarray, W: np.ndarray, previous: np.ndarray | None = None
) -> int:
    """Exact nearest centre of every point, in place in ``idx`` (guesses on entry); returns the total
    weighted squared distance (fixed-point units squared), an exact integer.

    previous : the centres (k, 3) ``idx`` is exact for, when it is (same k, same order): then only points
    near a centre that changed are searched again (a Lloyd step late in a run moves a few centres).
    """
    centres = np.ascontiguousarray(centres, dtype=np.int64)
    order, cdist = centre_order(centres)
    k = centres.shape[0]
    mgap = np.full(k, -1.0)
    if previous is not None and previous.shape == centres.shape:
        moved = (np.asarray(previous) != centres).any(axis=1)
        mv = centres[moved]
        mgap[~moved] = np.inf
        if mv.shape[0]:
            gaps = ((centres[~moved, None, :] - mv[None, :, :]) ** 2).sum(-1)
            mgap[~moved] = np.sqrt(gaps.min(axis=1).astype(np.float64))
    return int(sum(_run_ranges(_assign_range, P.shape[0], P, centres, order, cdist, mgap, idx, W)))


def label_strips(strips, n: int, lut: np.ndarray) -> np.ndarray:
    """Labels (n,) uint8 of an image given as strips (``distinct_colours_of_strips``) through a 2**24 table."""
    out = np.empty(n, np.uint8)
    pos = 0
    for strip in strips():
        flat = np.ascontiguousarray(strip).reshape(-1, 3)
        if pos + flat.shape[0] > n:
            raise ValueError("the strips hold more pixels than the image")
        _run_ranges(_label_range, flat.shape[0], flat, lut, out[pos : pos + flat.shape[0]])
        pos += flat.shape[0]
        del strip, flat  # before the next strip is read, not after
    if pos != n:
        raise ValueError("the strips hold fewer pixels than the image")
    return out


def label_pixels(flat: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Labels (N,) uint8 of (N, 3) uint8 pixels through a 2**24 colour -> label table."""
    out = np.empty(flat.shape[0], np.uint8)
    _run_ranges(_label_range, flat.shape[0], flat, lut, out)
    return out
