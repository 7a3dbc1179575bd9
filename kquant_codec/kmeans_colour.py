"""Colour palettes by weighted k-means ("rgb" mode): learning, and the exact nearest colour of every pixel.

``fit_palette`` learns at most k uint8 colours from (H, W, C) uint8 samples (C = 1..8) and labels every
pixel with its nearest palette colour; ``label_pixels`` labels any samples against a given palette.
Both guarantee: every pixel gets the palette colour at the least squared distance, exactly, ties to the
lower index; palette rows are sorted as tuples; an image with at most k distinct colours gets exactly
those colours (lossless).

Pipeline of ``fit_palette``
1. Distinct colours and their pixel counts (the k-means objective over pixels equals the objective over
   distinct colours weighted by count). Small images: ``np.unique`` on packed keys. Large 3-channel
   images: numba count tables (``_rgb_kernels``), a tenth of the time and memory of a sort.
2. Learning bins: distinct colours merged into (2**s)^C boxes, the finest s giving at most about
   2 * limit occupied boxes; each box is its count-weighted mean (in fixed point) and its mass.
3. Learning on the bins (numpy, a few thousand points): greedy k-means++ and Lloyd, best of several
   restarts at small k, then swap local search (move the centre that is cheapest to remove to a D^2-sampled
   point, run Lloyd, keep the result if the error fell). Restarts and swaps are what keep the palette below
   pngquant's error on every sample photo (plain Lloyd sometimes lands above it).
4. Polish: Lloyd on finer bins or on all distinct colours (numba: all distinct colours, exact nearest
   centre with triangle-inequality pruning, previous labels as guesses).
5. Integer stage: centres rounded to uint8, then Lloyd with rounded centres while the error falls (first
   rounding the 1/FIX-grid means, then the exact means: a group's best uint8 centre); the
   palette is sorted and every distinct colour gets its exact label against the final order.
6. Labels of every pixel: a colour -> label table (2**(8C) entries for C <= 3; a sorted search for more
   channels) and one gather. Nothing is ever a pixels x k distance matrix: nearest-centre searches run once
   per *distinct colour*, in blocks.

Determinism. Every coordinate is an integer on a grid of 1/FIX channel units. numpy distances go through
float32 BLAS products where every product and partial sum is an integer below 2**24 (C <= 8, FIX = 4), so
they are exact in any summation order; numba distances are int64; sums of weights are exact integers; ties
go to the lower index. Results are therefore identical for any BLAS or numba thread count, in every run
and process. BLAS is held to one thread during a fit: with an inner dimension of 3, OpenBLAS threading
only adds overhead (2-6x slower measured on a busy 2-core machine). Large images use the numba path when
the kernels are usable (built at install, or numba imports: ``_native``); its palette differs slightly
from the numpy path's (it polishes on all distinct colours), so results are reproducible for a given
installation; without kernels the numpy path is used for every size (correct, but slower and with more
memory on large images).

Compiled steps. On 3-channel unweighted images the numpy path's k-means++, Lloyd and integer stage can run
through the numba kernels instead (``_accelerator``: when they cost no load time, or from ACCEL_MIN_PIXELS).
They compute the very same exact labels, sums and random draws, so the result is identical either way (a
test checks it); only the time differs (about 2x less on 0.27 MP photos).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from types import ModuleType

import numpy as np

from . import _native
from ._heap import release_free_memory

__all__ = ["PaletteFit", "fit_palette", "fit_palette_strips", "label_pixels", "nearest_colour", "ENGINES"]

ENGINES = ("auto", "numpy", "numba")
NUMBA_MIN_PIXELS = 1 << 21  # "auto": images with at least this many pixels (about 2 MP) use numba
ACCEL_MIN_PIXELS = 1 << 20  # "auto", smaller images: numba runs the numpy path's steps from this size (or
# whenever the kernels cost no load time); below it, loading numba (0.2-0.4 s) would cost more than it saves
FIX = 4  # fixed-point steps per channel unit; 2 * C * (255 * FIX)**2 < 2**24 for C <= 8 keeps float32 exact
MAX_CHANNELS = 8
LEARN_POINTS = 8192  # learning bins (soft limit, up to 2x); the numpy path uses max(4096, 64 k) up to this
LEARN_ITERS = 40  # most Lloyd iterations of one learning run on the bins
MID_POINTS = 32768  # numpy path, k >= MID_MIN_K: polish on bins this fine (soft limit, up to 2x) ...
MID_MIN_K = 32  # ... below this k, polish on all distinct colours (cheap when k is small)
POLISH_ITERS = 20  # most Lloyd iterations of the polish
INTEGER_ROUNDS = 8  # most Lloyd rounds with rounded centres
_BLOCK = 1 << 21  # distance-matrix elements per numpy block (8 MB of float32)
_LABEL_CHUNK = 1 << 20  # pixels per sorted-search chunk when labelling more than 3 channels


@dataclass(frozen=True)
class PaletteFit:
    """Result of ``fit_palette``.

    palette : (m, C) uint8, m <= k, rows sorted as tuples, every row used by some pixel of positive weight.
    labels : (H, W) uint8 index of every pixel's nearest palette row; None for weighted fits (zero-weight
        pixels are not labelled during the fit).
    sse : total squared error of the (weighted) pixels against their nearest palette row, channel units^2.
    """

    palette: np.ndarray
    labels: np.ndarray | None
    sse: int


# -- numba, loaded on first use --------------------------------------------------------------------------

_kernels_lock = threading.Lock()
_kernels_state: list = []  # [module] once loaded, [None] once found unusable


def _kernels() -> ModuleType | None:
    """The kernels module, imported on first use; None (after one warning) when no kernels are usable."""
    with _kernels_lock:
        if not _kernels_state:
            try:
                from . import _rgb_kernels

                _native.backend()  # raises when neither the install's build nor numba is usable
                _native.notice_first_compile(_rgb_kernels.coarse_bins, "colour learner", "3-5")
            except Exception as exc:  # ImportError, or numba / llvmlite failing while loading
                warnings.warn(
                    f"kquant_codec: the compiled kernels are unusable ({exc}); large images are quantized "
                    "by the slower numpy path",
                    RuntimeWarning,
                    stacklevel=3,
                )
                _rgb_kernels = None
            _kernels_state.append(_rgb_kernels)
        return _kernels_state[0]


def _pick_kernels(engine: str, pixels: int, channels: int, weighted: bool) -> ModuleType | None:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(map(repr, ENGINES))}, got {engine!r}")
    eligible = channels == 3 and not weighted and pixels < 1 << 31  # count tables hold int32 counts
    if engine == "numba":
        if not eligible:
            raise ValueError("the numba engine takes unweighted 3-channel images of fewer than 2**31 pixels")
        kernels = _kernels()
        if kernels is None:
            raise RuntimeError("the numba engine was asked for, but no compiled kernels are usable")
        return kernels
    if engine == "auto" and eligible and pixels >= NUMBA_MIN_PIXELS:
        return _kernels()
    return None


def _accelerator(engine: str, pixels: int, channels: int, weighted: bool) -> ModuleType | None:
    """numba kernels to run the numpy path's learning steps compiled (same results, less time), or None.

    "auto" only, 3 channels, unweighted: when the kernels cost no load time (built at install, or numba
    already loaded in this process, as a ``.kq`` encode does), or the image is large enough that loading
    numba pays.
    """
    if engine != "auto" or channels != 3 or weighted:
        return None
    if pixels >= ACCEL_MIN_PIXELS or _native.cheap():
        return _kernels()
    return None


# -- packed colour keys --------------------------------------------------------------------------------


def _keys(flat: np.ndarray) -> np.ndarray:
    """(N, C) uint8 -> (N,) keys ordered like the tuples: uint32 for C <= 4, uint64 above."""
    dtype = np.uint32 if flat.shape[1] <= 4 else np.uint64
    keys = flat[:, 0].astype(dtype)
    for c in range(1, flat.shape[1]):
        keys <<= dtype(8)
        keys |= flat[:, c]
    return keys


def _unpack(keys: np.ndarray, channels: int) -> np.ndarray:
    """Keys -> (M, C) int64 colours."""
    keys = keys.astype(np.int64 if channels < 8 else np.uint64)
    shifts = 8 * np.arange(channels - 1, -1, -1)
    return ((keys[:, None] >> shifts.astype(keys.dtype)) & 255).astype(np.int64)


def _gather(keys: np.ndarray, distinct: np.ndarray, label_of: np.ndarray, channels: int) -> np.ndarray:
    """Label of every pixel key, given the (ascending) distinct keys and each one's label. (N,) uint8."""
    label_of = label_of.astype(np.uint8)
    if channels <= 3:  # a table indexed by colour: one gather
        lut = np.zeros(1 << (8 * channels), np.uint8)
        lut[distinct] = label_of
        return lut[keys]
    out = np.empty(keys.shape[0], np.uint8)  # chunks bound the int64 search results' memory
    for s in range(0, keys.shape[0], _LABEL_CHUNK):
        out[s : s + _LABEL_CHUNK] = label_of[np.searchsorted(distinct, keys[s : s + _LABEL_CHUNK])]
    return out


# -- exact nearest centre and Lloyd (numpy) -----------------------------------------------------------------


def _nearest(p: np.ndarray, c: np.ndarray, second: bool = False):
    """Nearest centre of every point, exact, ties to the lower index.

    p (n, C), c (k, C): integers on the 1/FIX grid, 0..255 * FIX. Returns index int64 (n,) and squared
    distance int64 (n,) [and, with ``second``, the second-smallest squared distance int64 (n,)].
    """
    n, k = p.shape[0], c.shape[0]
    pf = p.astype(np.float32)
    cf = c.astype(np.float32)
    cc = np.einsum("ij,ij->i", cf, cf)
    m2c = -2.0 * cf.T
    pp = np.einsum("ij,ij->i", p, p).astype(np.int64)
    idx = np.empty(n, np.int64)
    d1 = np.empty(n, np.int64)
    d2 = np.empty(n, np.int64) if second else None
    rows = max(1, _BLOCK // max(1, k))
    for s in range(0, n, rows):
        blk = pf[s : s + rows] @ m2c  # |c|^2 - 2 p.c: every value an integer below 2**24, so exact
        blk += cc
        i = np.argmin(blk, axis=1)  # first minimum: ties go to the lower index
        r = np.arange(blk.shape[0])
        idx[s : s + rows] = i
        d1[s : s + rows] = pp[s : s + rows] + blk[r, i].astype(np.int64)
        if second:
            if k > 1:
                blk[r, i] = np.inf
                d2[s : s + rows] = pp[s : s + rows] + blk.min(axis=1).astype(np.int64)
            else:
                d2[s : s + rows] = d1[s : s + rows]
    return (idx, d1, d2) if second else (idx, d1)


def _nearest_moved(p, c, idx, d, moved):
    """Exact update of (idx, d) after the centres flagged ``moved`` changed, in place.

    A point whose own centre did not move can only be taken by a moved centre (every unmoved centre was,
    and still is, farther or tied with a higher index), so it is compared with the moved centres only;
    points whose centre moved are searched against all centres. Ties go to the lower index.
    """
    own = moved[idx]
    r = np.flatnonzero(own)
    if r.size:
        idx[r], d[r] = _nearest(p[r], c)
    o = np.flatnonzero(~own)
    mv = np.flatnonzero(moved)
    if o.size and mv.size:
        j, dm = _nearest(p[o], c[mv])
        j = mv[j]
        take = (dm < d[o]) | ((dm == d[o]) & (j < idx[o]))
        t = o[take]
        idx[t] = j[take]
        d[t] = dm[take]
    return idx, d


def _sums(p, w, idx, k):
    """Total weight (k,) and weighted coordinate sums (k, C), exact int64 (float64 sums stay below 2**53)."""
    wf = w.astype(np.float64)
    mass = np.bincount(idx, weights=wf, minlength=k).astype(np.int64)
    s = np.empty((k, p.shape[1]), np.int64)
    for a in range(p.shape[1]):
        s[:, a] = np.bincount(idx, weights=wf * p[:, a], minlength=k).astype(np.int64)
    return mass, s


def _means(mass, sums):
    """Rounded means of the non-empty groups (exact integers) and the mask of non-empty groups."""
    keep = mass > 0
    m = mass[keep, None]
    return (2 * sums[keep] + m) // (2 * m), keep


def _whole_means(mass, sums):
    """``_means`` rounded once to whole channel values (in 1/FIX units): per channel, the best uint8 centre of
    each group. Rounding the 1/FIX-grid mean instead rounds twice (145.47 -> 145.5 -> 146, not 145)."""
    keep = mass > 0
    m = mass[keep, None]
    return (2 * sums[keep] + FIX * m) // (2 * FIX * m) * FIX, keep


def _integer_trial(phase, mass, sums):
    """The next rounded centres: phase 0 rounds the 1/FIX-grid means (the long-standing path, kept because its
    stopping points are as good on average), phase 1 the exact means once (never raises the error: it only runs
    on from where phase 0 stopped, and a step is taken only when the error falls)."""
    if phase == 0:
        new, keep = _means(mass, sums)
        return _to_uint8_grid(new), keep
    return _whole_means(mass, sums)


def _lloyd(p, w, c, iters, K=None):
    """Weighted Lloyd on the 1/FIX grid; emptied centres are dropped. Returns (centres, index, error).

    With numba kernels ``K`` (3 channels, weights below 2**31) the same steps run compiled: the same exact
    labels and sums, so the same result, several times faster.
    """
    if K is not None:
        return _lloyd_compiled(K, p.astype(np.int32), w.astype(np.int32), c, iters)
    idx, d = _nearest(p, c)
    for _ in range(iters):
        mass, s = _sums(p, w, idx, c.shape[0])
        new, keep = _means(mass, s)
        if keep.all() and np.array_equal(new, c):
            break
        if not keep.all():
            c = new
            idx, d = _nearest(p, c)
            continue
        moved = (new != c).any(axis=1)
        c = new
        idx, d = _nearest_moved(p, c, idx, d, moved)
    return c, idx, int((d * w).sum())


def _lloyd_compiled(K, P, W, c, iters):
    """``_lloyd`` through the numba kernels: P (n, 3) int32, W (n,) int32. Same return values."""
    idx = K.guess_labels(P, c, FIX)  # ``assign`` is exact whatever it starts from; near guesses are quicker
    c, err = _lloyd_in_place(K, P, W, c, idx, iters)
    return c, idx.astype(np.int64), err


def _lloyd_in_place(K, P, W, c, idx, iters):
    """Lloyd through the numba kernels, labels kept in ``idx`` (uint8 guesses on entry, exact labels on exit);
    emptied centres are dropped. Returns (centres (m, 3) int64, error in FIX^2 units)."""
    c = np.ascontiguousarray(c, dtype=np.int64)
    err = K.assign(P, c, idx, W)
    for _ in range(iters):
        mass, s = K.group_sums(P, W, idx, c.shape[0])
        new, keep = _means(mass, s)
        if keep.all() and np.array_equal(new, c):
            break
        previous = c if keep.all() else None  # (after a shift below the labels are mere guesses)
        if not keep.all():  # no point carries an emptied centre's label: shift the higher labels down
            np.take((np.cumsum(keep) - 1).astype(np.uint8), idx, out=idx)
        c = np.ascontiguousarray(new)
        err = K.assign(P, c, idx, W, previous)
    return c, err


# -- learning on the bins --------------------------------------------------------------------------------


def _coarse_bins(cols: np.ndarray, w: np.ndarray, limit: int):
    """Merge distinct colours (M, C) int64 into boxes of 2**s values per channel.

    s is the finest level giving at most 2 * limit occupied boxes (a soft limit: a 2x finer level beats an
    8x coarser one for quality). Returns (box means (b, C) int64 on the 1/FIX grid, box masses (b,) int64,
    box of each colour (M,) int64); the colours themselves (times FIX) when M <= limit.
    """
    channels = cols.shape[1]
    if cols.shape[0] <= limit:
        return cols * FIX, w.astype(np.int64), np.arange(cols.shape[0])
    for s in range(1, 8):
        b = 8 - s
        key = np.zeros(cols.shape[0], np.int64)
        for a in range(channels):
            key = (key << b) | (cols[:, a] >> s)
        if channels * b <= 24:  # a dense count is cheapest while the box table is at most 16 M entries
            occ = np.flatnonzero(np.bincount(key, minlength=1 << (channels * b)))
            binof = None
        else:
            occ, binof = np.unique(key, return_inverse=True)
        if occ.size <= 2 * limit:
            break
    if binof is None:
        remap = np.zeros(1 << (channels * b), np.int64)
        remap[occ] = np.arange(occ.size)
        binof = remap[key]
    binof = binof.reshape(-1)
    wf = w.astype(np.float64)
    mass = np.bincount(binof, weights=wf, minlength=occ.size).astype(np.int64)  # exact: below 2**53
    pts = np.empty((occ.size, channels), np.int64)
    for a in range(channels):
        s_a = np.bincount(binof, weights=wf * cols[:, a], minlength=occ.size).astype(np.int64)
        pts[:, a] = (2 * FIX * s_a + mass) // (2 * mass)  # round(FIX * mean) in exact integers
    return pts, mass, binof


def _kpp(p, w, k, rng, K=None):
    """Greedy weighted k-means++: 2 + ln k D^2-sampled candidates per step, keep the one that lowers the
    potential most. float64 on integer coordinates: exact. With numba kernels ``K`` each step runs
    compiled (``kpp_step``), drawing the same random numbers, so the result is the same."""
    pf = p.astype(np.float64)
    wf = w.astype(np.float64)
    n = p.shape[0]
    trials = 2 + int(np.log(k))
    first = min(int(np.searchsorted(np.cumsum(wf), rng.random() * wf.sum(), side="right")), n - 1)
    chosen = [first]
    pp = np.einsum("ij,ij->i", pf, pf)
    closest = pp - 2 * pf @ pf[first] + pp[first]
    if K is not None:
        pi = np.ascontiguousarray(p, dtype=np.int64)
        cum = np.empty(n, np.float64)
        near = np.zeros(n, np.int64)
        centres = np.empty((k, p.shape[1]), np.int64)
        centres[0] = pi[first]
        for m in range(1, k):
            pick = K.kpp_step(pi, wf, closest, cum, rng.random(trials), near, centres, m)
            if pick < 0:
                break
            chosen.append(int(pick))
        return p[chosen].copy()
    for _ in range(1, k):
        cum = np.cumsum(wf * closest)
        if cum[-1] <= 0:
            break  # every point already sits on a centre
        cand = np.minimum(np.searchsorted(cum, rng.random(trials) * cum[-1], side="right"), n - 1)
        dc = pp[:, None] - 2 * (pf @ pf[cand].T) + pp[cand][None, :]
        cd = np.minimum(closest[:, None], dc)
        b = int(np.argmin((wf[:, None] * cd).sum(axis=0)))
        chosen.append(int(cand[b]))
        closest = cd[:, b]
    return p[chosen].copy()


def _swap(p, w, c, idx, err, rng, rounds, iters, cands=6, K=None):
    """Swap local search: move the centre whose removal costs least to a D^2-sampled point (best of
    ``cands``), run Lloyd, keep the result if the error fell. Returns (centres, index, error)."""
    k = c.shape[0]
    pf = p.astype(np.float64)
    for _ in range(rounds):
        idx, d, d2 = _nearest(p, c, second=True)
        cost = np.bincount(idx, weights=(w * (d2 - d)).astype(np.float64), minlength=k)
        j = int(np.argmin(cost))
        dd = np.where(idx == j, d2, d).astype(np.float64)  # distances once centre j is gone
        cum = np.cumsum(w * dd)
        cand = np.minimum(np.searchsorted(cum, rng.random(cands) * cum[-1], side="right"), p.shape[0] - 1)
        cd = np.minimum(dd[:, None], ((pf[:, None, :] - pf[cand][None]) ** 2).sum(2))
        pick = cand[int(np.argmin((w[:, None] * cd).sum(axis=0)))]
        trial = c.copy()
        trial[j] = p[pick]
        tc, ti, te = _lloyd(p, w, trial, iters, K)
        if te < err and tc.shape[0] == k:
            c, idx, err = tc, ti, te
    return c, idx, err


def _schedule(k: int) -> tuple[int, int]:
    """(restarts, swap rounds) of the learning stage: more where each is cheap and matters most (small k)."""
    if k <= 4:
        return 6, 10
    if k <= 16:
        return 3, 10
    if k <= 64:
        return 1, 6
    return 1, 2


def _learn(p, w, k, seed, iters, K=None):
    """Centres (m, C) on the 1/FIX grid (m <= k) learned on weighted points, and each point's centre.

    ``K``: numba kernels to run the steps compiled (same result), or None for numpy.
    """
    restarts, swaps = _schedule(k) if k > 1 else (1, 0)
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(restarts):
        c, idx, err = _lloyd(p, w, _kpp(p, w, k, rng, K), iters, K)
        if best is None or err < best[2]:
            best = (c, idx, err)
    c, idx, err = best
    if swaps:
        c, idx, err = _swap(p, w, c, idx, err, rng, swaps, iters, K=K)
    return c, idx


# -- integer stage -----------------------------------------------------------------------------------------


def _to_uint8_grid(c):
    """Centres on the 1/FIX grid rounded to whole channel values (still in 1/FIX units)."""
    return np.clip((c + FIX // 2) // FIX, 0, 255) * FIX


def _integer_refine(P, W, c, rounds, K=None):
    """Round the centres to uint8; Lloyd with rounded centres while the error falls; exact final labels.

    P (M, C), W (M,): all distinct colours (times FIX) and their weights. Returns (palette (m, C) uint8
    sorted as tuples, label of every point int64 (M,), total squared error in FIX^2 units). ``K``: numba
    kernels for the same steps compiled (same result).
    """
    if K is not None:
        return _integer_refine_compiled(K, P.astype(np.int32), W.astype(np.int32), c, rounds)
    cur = np.unique(_to_uint8_grid(c), axis=0)
    g, d = _nearest(P, cur)
    err = int((d * W).sum())
    for phase in (0, 1):
        for _ in range(rounds):
            mass, s = _sums(P, W, g, cur.shape[0])
            trial, keep = _integer_trial(phase, mass, s)
            if not keep.all() or np.array_equal(trial, cur):
                break
            tg, td = _nearest_moved(P, trial, g.copy(), d.copy(), (trial != cur).any(axis=1))
            te = int((td * W).sum())
            if te >= err:
                break
            cur, g, d, err = trial, tg, td, te
    pal = np.unique(cur, axis=0)  # rows sorted as tuples, duplicates merged
    if not np.array_equal(pal, cur):
        g, d = _nearest(P, pal)  # exact labels against the final order
    used = np.unique(g)
    if used.size < pal.shape[0]:  # drop centres no colour uses; the order (so tie-breaks) is kept
        remap = np.full(pal.shape[0], -1, np.int64)
        remap[used] = np.arange(used.size)
        pal, g = pal[used], remap[g]
    return (pal // FIX).astype(np.uint8), g, err


def _integer_refine_compiled(K, P, W, c, rounds):
    """``_integer_refine`` through the numba kernels: P (M, 3) int32, W (M,) int32. Same return values."""
    cur = np.ascontiguousarray(np.unique(_to_uint8_grid(c), axis=0))
    g = K.guess_labels(P, cur, FIX)
    err = K.assign(P, cur, g, W)
    for phase in (0, 1):
        for _ in range(rounds):
            mass, s = K.group_sums(P, W, g, cur.shape[0])
            trial, keep = _integer_trial(phase, mass, s)
            trial = np.ascontiguousarray(trial)
            if not keep.all() or np.array_equal(trial, cur):
                break
            tg = g.copy()
            te = K.assign(P, trial, tg, W, cur)
            if te >= err:
                break
            cur, g, err = trial, tg, te
    pal = np.unique(cur, axis=0)  # rows sorted as tuples, duplicates merged
    if not np.array_equal(pal, cur):
        _, inv = np.unique(cur, axis=0, return_inverse=True)
        np.take(inv.reshape(-1).astype(np.uint8), g, out=g)  # good guesses; the search below is exact
        err = K.assign(P, np.ascontiguousarray(pal), g, W)
    mass, _ = K.group_sums(P, W, g, pal.shape[0])
    used = np.flatnonzero(mass)
    g = g.astype(np.int64)
    if used.size < pal.shape[0]:  # drop centres no colour uses; the order (so tie-breaks) is kept
        remap = np.full(pal.shape[0], -1, np.int64)
        remap[used] = np.arange(used.size)
        pal, g = pal[used], remap[g]
    return (pal // FIX).astype(np.uint8), g, err


def _polish_big(K, P, W, c, idx, iters):
    """numba path: Lloyd on all distinct colours, then the integer stage, in place.

    P (M, 3) int32 fixed point, W (M,) int32, idx (M,) uint8 guesses, overwritten with the labels (k <= 256,
    so labels fit a byte). Returns (palette (m, 3) uint8 sorted as tuples, idx, error in FIX^2 units).
    """
    c, _ = _lloyd_in_place(K, P, W, c, idx, iters)
    cur = _to_uint8_grid(c)
    err = K.assign(P, cur, idx, W, c)
    for _ in range(INTEGER_ROUNDS):
        mass, s = K.group_sums(P, W, idx, cur.shape[0])
        new, keep = _means(mass, s)
        trial = _to_uint8_grid(new)
        if not keep.all() or np.array_equal(trial, cur):
            break
        save = idx.copy()
        te = K.assign(P, trial, idx, W, cur)
        if te >= err:
            idx[:] = save
            break
        cur, err = trial, te
        del save
    pal, inv = np.unique(cur, axis=0, return_inverse=True)
    np.take(inv.reshape(-1).astype(np.uint8), idx, out=idx)
    err = K.assign(P, np.ascontiguousarray(pal), idx, W)  # exact labels in the final order
    mass, _ = K.group_sums(P, W, idx, pal.shape[0])
    used = np.flatnonzero(mass)
    if used.size < pal.shape[0]:
        remap = np.zeros(pal.shape[0], np.uint8)
        remap[used] = np.arange(used.size)
        pal = pal[used]
        np.take(remap, idx, out=idx)
    return (pal // FIX).astype(np.uint8), idx, int(err)


# -- public entry points ---------------------------------------------------------------------------------


def _flat(samples: np.ndarray) -> np.ndarray:
    if samples.ndim != 3 or not 1 <= samples.shape[2] <= MAX_CHANNELS or samples.dtype != np.uint8:
        raise ValueError(f"samples must be a (H, W, C) uint8 array with 1 <= C <= {MAX_CHANNELS}")
    return np.ascontiguousarray(samples).reshape(-1, samples.shape[2])


def fit_palette(
    samples: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    max_iter: int = 100,
    sample_weight: np.ndarray | None = None,
    engine: str = "auto",
) -> PaletteFit:
    """Learn at most ``k`` (1..256) uint8 colours from (H, W, C) uint8 samples and label every pixel.

    seed : drives the k-means++ seeding and swap search (numpy ``default_rng``).
    max_iter : caps the Lloyd iterations of each learning and polishing run (which stop earlier when they
        converge, and after LEARN_ITERS / POLISH_ITERS anyway).
    sample_weight : optional (H, W) non-negative integers: each pixel counts that many times. Weighted fits
        always take the numpy path and return ``labels=None``.
    engine : "auto" (numba for 3-channel images of at least NUMBA_MIN_PIXELS pixels, when numba imports),
        "numpy" or "numba" (forced; "numba" raises when it cannot run).
    """
    from threadpoolctl import threadpool_limits

    flat = _flat(samples)
    h, w = samples.shape[:2]
    weights = None if sample_weight is None else np.asarray(sample_weight, dtype=np.int64).reshape(-1)
    kernels = _pick_kernels(engine, flat.shape[0], flat.shape[1], weights is not None)
    if flat.shape[0] == 0:
        return PaletteFit(np.zeros((0, flat.shape[1]), np.uint8), np.zeros((h, w), np.uint8), 0)
    iters = max(1, min(int(max_iter), LEARN_ITERS))
    with threadpool_limits(1, user_api="blas"):
        if kernels is not None:
            labels_of = partial(kernels.label_pixels, flat)
            palette, labels, sse = _fit_big(
                kernels, kernels.distinct_colours(flat), labels_of, int(k), int(seed), iters
            )
        else:
            accel = _accelerator(engine, flat.shape[0], flat.shape[1], weights is not None)
            palette, labels, sse = _fit_small(flat, int(k), int(seed), iters, weights, accel)
    return PaletteFit(palette, None if labels is None else labels.reshape(h, w), sse)


def _bins(cols, W, limit, K=None):
    """``_coarse_bins``' box means and masses; through the numba kernels when given (3 channels, weights
    below 2**31): the same boxes, numbered alike, with the same rounded means, without numpy's dense counts
    over up to 2**21 boxes per level tried."""
    if K is None or cols.shape[0] <= limit:
        return _coarse_bins(cols, W, limit)[:2]
    P = (cols * FIX).astype(np.int32)
    pts, mass, _ = K.coarse_bins(P, W.astype(np.int32), FIX, K.learning_shift(P, FIX, 2 * limit))
    return pts, mass


def _fit_small(flat, k, seed, iters, weights, K=None):
    """numpy path, any C: (palette, labels (N,) or None when weighted, sse in channel units^2).

    ``K``: numba kernels (3 channels, unweighted only) that run the learning steps compiled; the result is
    the same as without them.
    """
    channels = flat.shape[1]
    keys = _keys(flat)
    if weights is None:
        distinct, W = np.unique(keys, return_counts=True)
        W = W.astype(np.int64)
    else:
        distinct, inverse = np.unique(keys, return_inverse=True)
        W = np.bincount(inverse.reshape(-1), weights=weights.astype(np.float64), minlength=distinct.size)
        W = W.astype(np.int64)
        del inverse
        keys = None
        distinct, W = distinct[W > 0], W[W > 0]  # zero-weight colours do not shape the palette
    cols = _unpack(distinct, channels)
    if distinct.size <= k:  # every colour gets its own entry: lossless
        palette, label_of, err = cols.astype(np.uint8), np.arange(distinct.size), 0
    else:
        P = cols * FIX
        bp, bw = _bins(cols, W, min(LEARN_POINTS, max(4096, 64 * k)), K)
        c, _ = _learn(bp, bw, k, seed, iters, K)
        mp, mw = _bins(cols, W, MID_POINTS, K) if k >= MID_MIN_K else (P, W)
        if mp.shape[0] > bp.shape[0]:  # finer than the learning bins: worth a polish
            c, _, _ = _lloyd(mp, mw, c, min(POLISH_ITERS, iters), K)
        palette, label_of, err = _integer_refine(P, W, c, INTEGER_ROUNDS, K)
    labels = None if keys is None else _gather(keys, distinct, label_of, channels)
    return palette, labels, err // (FIX * FIX)


def fit_palette_strips(
    strips: Callable[[], Iterable[np.ndarray]], height: int, width: int, k: int, *, seed: int = 0, max_iter: int = 100
) -> PaletteFit | None:
    """``fit_palette`` of a large 3-channel image read in strips of rows, never held whole.

    strips : called twice (once to count the colours, once to label them); each call returns a fresh iterable
        of (rows, width, 3) uint8 arrays covering the image's ``height`` rows, top to bottom.
    Returns exactly what ``fit_palette(image, k, seed=seed, max_iter=max_iter)`` returns for the joined image
    (both take the numba path), or None when that path does not apply (fewer than NUMBA_MIN_PIXELS pixels, or
    numba unusable): the caller then joins the strips itself. At 24 MP this saves the 72 MB joined copy.
    """
    pixels = height * width
    if not NUMBA_MIN_PIXELS <= pixels < 1 << 31:
        return None
    kernels = _kernels()
    if kernels is None:
        return None
    from threadpoolctl import threadpool_limits

    iters = max(1, min(int(max_iter), LEARN_ITERS))
    with threadpool_limits(1, user_api="blas"):
        labels_of = partial(kernels.label_strips, strips, pixels)
        palette, labels, sse = _fit_big(
            kernels, kernels.distinct_colours_of_strips(strips), labels_of, int(k), int(seed), iters
        )
    return PaletteFit(palette, labels.reshape(height, width), sse)


def _fit_big(K, colours, labels_of, k, seed, iters):
    """numba path, C == 3: (palette, labels (N,), sse in channel units^2).

    colours : (keys, counts) of the distinct colours (``distinct_colours``); labels_of(lut) : the label of
    every pixel through a 2**24 colour -> label table.
    """
    keys, W = colours
    del colours  # (else its tuple keeps W alive through the labelling)
    release_free_memory()  # the colour count's tables and strip copies
    P = K.points_from_keys(keys, FIX)
    if keys.size <= k:  # lossless
        palette, label_of, err = (P // FIX).astype(np.uint8), np.arange(keys.size, dtype=np.uint8), 0
    else:
        # Learn on the same boxes as the numpy path, built without its (M,)-sized int64 temporaries.
        bp, bw, binof = K.coarse_bins(P, W, FIX, K.learning_shift(P, FIX, 2 * LEARN_POINTS))
        c, bidx = _learn(bp, bw, k, seed, iters, K)
        idx = bidx.astype(np.uint8)[binof]
        del binof
        palette, label_of, err = _polish_big(K, P, W, c, idx, min(POLISH_ITERS, iters))
    del P, W
    lut = np.zeros(1 << 24, np.uint8)  # colour -> label, filled at the distinct colours only
    lut[keys] = label_of
    del keys, label_of
    # The labels (a byte per pixel) come next: let them reuse the fit's freed memory rather than add to it.
    release_free_memory()
    return palette, labels_of(lut), err // (FIX * FIX)


def nearest_colour(colours: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest palette row of each colour, ties to the lower index.

    colours (M, C) and palette (m, C), m >= 1: integers 0..255. Returns (index int64 (M,), squared
    distance int64 (M,), channel units^2).
    """
    palette = np.asarray(palette, dtype=np.int64)
    if palette.shape[0] == 0:
        raise ValueError("the palette is empty: nothing to map colours to")
    return _nearest(np.asarray(colours, dtype=np.int64), palette)


def label_pixels(samples: np.ndarray, palette: np.ndarray, *, engine: str = "auto") -> np.ndarray:
    """Label (H, W, C) uint8 samples with the index of their nearest ``palette`` row: (H, W) uint8.

    Exact, ties to the lower index; one nearest-colour search per distinct colour, then a gather.
    """
    flat = _flat(samples)
    h, w = samples.shape[:2]
    palette = np.asarray(palette, dtype=np.uint8)
    if palette.ndim != 2 or palette.shape[1] != flat.shape[1]:
        raise ValueError(f"palette must have shape (m, {flat.shape[1]}), got {palette.shape}")
    if flat.shape[0] == 0:
        return np.zeros((h, w), np.uint8)
    if palette.shape[0] == 0:
        raise ValueError("the palette is empty: nothing to map colours to")
    from threadpoolctl import threadpool_limits

    kernels = _pick_kernels(engine, flat.shape[0], flat.shape[1], False)
    with threadpool_limits(1, user_api="blas"):
        if kernels is not None:
            labels = _label_big(kernels, flat, palette)
        else:
            keys = _keys(flat)
            distinct = np.unique(keys)
            label_of, _ = nearest_colour(_unpack(distinct, flat.shape[1]), palette)
            labels = _gather(keys, distinct, label_of, flat.shape[1])
    return labels.reshape(h, w)


def _label_big(K, flat, palette):
    """numba path of ``label_pixels`` (C == 3): exact pruned search per distinct colour, guesses from the
    nearest palette colour of each colour's learning box."""
    keys, W = K.distinct_colours(flat)
    P = K.points_from_keys(keys, FIX)
    centres = palette.astype(np.int64) * FIX
    bp, _, binof = K.coarse_bins(P, W, FIX, K.learning_shift(P, FIX, 2 * LEARN_POINTS))
    idx = _nearest(bp, centres)[0].astype(np.uint8)[binof]
    del binof
    K.assign(P, centres, idx, W)
    del P, W
    lut = np.zeros(1 << 24, np.uint8)
    lut[keys] = idx
    return K.label_pixels(flat, lut)
