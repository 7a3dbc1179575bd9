"""Codec 3 of ``.kq``: a context-modelling coder for label planes (spec section 16).

    stream = encode_label_planes(planes, keys, refs)       # planes: list of (H, W) uint8
    planes = decode_label_planes(stream, header)           # raises KqFormatError

Per pixel, one adaptive symbol picks among the distinct neighbour labels L, T, TR, TL or "escape" (two
adaptive models mixed with an adaptive weight); an escaped label is coded as its rank in the list of labels
ordered by key (colour) distance from a base label. Rows equal to an earlier row are coded as copies. The
entropy coder is rANS (32-bit state, 16-bit words, 15-bit probabilities); nothing but the symbols is
transmitted. Stripes of rows are coded independently.

The kernels are compiled at install time, or by numba on first use (``_native``); only the container's
codec-3 paths import this module, on first use. One kernel serves encoder and decoder, so their models cannot
drift apart.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._heap import release_free_memory
from ._native import kernel, notice_first_compile

__all__ = ["encode_plane", "decode_plane", "encode_label_planes", "decode_label_planes", "STREAM_VERSION"]

STREAM_VERSION = 1
FLAG_KEYS = 1  # keys are the plane's centroid table (else the label values themselves)
FLAG_REF = 2  # the previous plane is the reference plane

PREC = 15
TOT = 1 << PREC
RANS_L = 1 << 16
NS = 5  # S1 alphabet: candidate 0..3, escape 4
NB = 9  # escape bucket alphabet: bitlen(rank) 0..8
NRB = 17  # row-copy distance bucket alphabet: bitlen(d-1) 0..16
NCTX1 = 64 * 8 * 16 * 4
NHASH = 1 << 14
NECTX1 = 45
W_INIT = 2048
_WT = NS + 2  # the column of S1-A's rows that holds the context's mixing weight (after the CDF and the count)
_BWT = NB + 2  # the same in bucket-A's rows
MAX_STRIPE_ROWS = 1 << 16
DEFAULT_STRIPE_PIXELS = 1 << 21
# Symbol rows of at least _MAPPED_MIN entries (stripes of about 0.5 MP and up) get at least _MAPPED_ROW:
# 2 rows x 2 bytes x 2^23 = 32 MiB, glibc's largest mmap threshold.
_MAPPED_MIN = 1 << 20
_MAPPED_ROW = 1 << 23

# RCP[i] ~ 2^22 / frequency for frequencies in [32 i, 32 i + 31]: the weight step (f2 - f1) * 64 / fm
RCP = np.array([(1 << 22) // (32 * i + 16) for i in range(TOT >> 5)], dtype=np.int64)

# status codes from the kernels
_OK = 0
_ERR_EOF = 1
_ERR_SYM = 2
_ERR_FINAL = 3


# ----------------------------------------------------------------------------------------------
# adaptive CDF model helpers
# q[ctx, 0..n] is a reduced CDF over total TOT - n: q[0] = 0, q[n] = TOT - n, non-decreasing;
# symbol s has start q[s] + s and frequency q[s+1] - q[s] + 1 (so every frequency is >= 1).
# ----------------------------------------------------------------------------------------------


@kernel(inline="always")
def _adapt(q, ctx, n, s):
    """Adapt model q (n symbols) at context ctx towards symbol s. A model's row holds its reduced CDF in columns
    0..n and its adaptation count in column n + 1 (one cache line per context, not one per array)."""
    c = np.int32(q[ctx, n + 1])
    r = 2 + (c >> 4)
    if r > 6:
        r = 6
    if c < 255:
        q[ctx, n + 1] = c + 1
    t = TOT - n
    for i in range(1, n):
        v = np.int32(q[ctx, i])
        if i > s:
            v = v + ((t - v) >> r)
        else:
            v = v - (v >> r)
        q[ctx, i] = v


@kernel(inline="always")
def _mix(qa, ca, qb, cb, w, i):
    """Entry i of the mix of two models' reduced CDFs (rows ca of qa, cb of qb) with weight w / 4096 on qb."""
    return ((4096 - w) * np.int64(qa[ca, i]) + w * np.int64(qb[cb, i])) >> 12


@kernel(inline="always")
def _mixed_find(qa, ca, qb, cb, w, n, slot):
    """The decoder's symbol s (of n) whose mixed start mix(s) + s is the last at or below slot, with mix(s) and
    mix(s + 1): the mix is computed only as far as the symbol (mix(0) = 0, mix(n) = TOT - n, the starts
    increase strictly). Returns (s, mix(s), mix(s + 1))."""
    s = 0
    lo = np.int64(0)
    hi = _mix(qa, ca, qb, cb, w, 1)
    while s < n - 1 and hi + s + 1 <= slot:
        s += 1
        lo = hi
        hi = _mix(qa, ca, qb, cb, w, s + 1)
    return s, lo, hi


@kernel(inline="always")
def _med(a, b, c):
    mn = a if a < b else b
    mx = a if a > b else b
    if c >= mx:
        return mn
    if c <= mn:
        return mx
    return a + b - c


@kernel(inline="always")
def _bitlen(v):
    b = 0
    while v > 0:
        b += 1
        v >>= 1
    return b


# ----------------------------------------------------------------------------------------------
# the shared model+coder kernel: dec=False records (start, freq) of every symbol, dec=True decodes
# ----------------------------------------------------------------------------------------------


@kernel(inline="always")
def _put(st, fr, k, start, freq):
    """Record symbol k's (start, frequency): the rows are sized for the most symbols a stripe can have."""
    st[k] = start
    fr[k] = freq


@kernel(nogil=True)
def _midpoint_label(keys, ksort, L, T):
    """The label whose key is nearest to the midpoint of keys L and T (squared distance of the doubled keys;
    ties to the lower label): the escape base of 16.7.

    The labels are visited outward from the midpoint in the order of their channel-0 key (``ksort``), on
    each side until channel 0 alone is farther than the best found; the result is that of a scan of all m
    labels, for a few distances instead of m (about a quarter of a small image's coding time at m = 256)."""
    m, nch = keys.shape
    t0 = np.int64(keys[L, 0]) + np.int64(keys[T, 0])
    lo = 0
    hi = m
    while lo < hi:  # first sorted position whose doubled channel-0 key is >= t0
        mid = (lo + hi) >> 1
        if 2 * np.int64(keys[ksort[mid], 0]) < t0:
            lo = mid + 1
        else:
            hi = mid
    best = np.int64(1) << 62
    B = m
    for side in range(2):
        p = lo if side == 0 else lo - 1
        while 0 <= p < m:
            j = ksort[p]
            e = t0 - 2 * np.int64(keys[j, 0])
            if e * e > best:
                break
            dist = e * e
            for ch in range(1, nch):
                e = np.int64(keys[L, ch]) + np.int64(keys[T, ch]) - 2 * np.int64(keys[j, ch])
                dist += e * e
            if dist < best or (dist == best and j < B):
                best = dist
                B = j
            p = p + 1 if side == 0 else p - 1
    return B


# The argument types of the one specialization both directions use (built ahead of time with them):
# dec, lab, copyd, out, m, R, order, keys, ksort, avg, words, w0, w1, ref, has_ref (out and avg written).
_STRIPE_SIGNATURE = (
    "(boolean, uint8[:, ::1], int64[::1], uint8[:, ::1], int64, uint8[:, ::1], uint8[:, ::1], int32[:, ::1],"
    " int64[::1], int16[:, ::1], uint16[::1], int64, int64, uint8[:, ::1], boolean)"
)


@kernel(_STRIPE_SIGNATURE, inputs=(1, 2, 5, 6, 7, 8, 10, 13), nogil=True)
def _stripe_kernel(dec, lab, copyd, out, m, R, order, keys, ksort, avg, words, w0, w1, ref, has_ref):
    """Code one stripe. lab: (H, W) uint8 input (encoder) ; out: (H, W) uint8 output (decoder).
    words: uint16 stream for the decoder, words[w0:w1]. Returns (status, st, fr, nsym)."""
    # dec is a run-time flag (not numba.literally): one compiled kernel serves encoder and decoder, so a
    # cold cache compiles it once (the branches on dec are perfectly predictable)
    H = lab.shape[0] if not dec else out.shape[0]
    W = lab.shape[1] if not dec else out.shape[1]
    # The rows y, y-1 and y-2 of the labels, padded (2 left, 2 right): a ring of three rows, not the stripe,
    # so a 2-megapixel stripe holds 72 KB here instead of 8 MB. Rows before the first are zeros.
    P = np.zeros((3, W + 4), np.int32)
    t5 = TOT - NS
    # models: a context's whole state in one row (columns 0..n the reduced CDF, n + 1 the adaptation count, then
    # the mixing weight of S1-A and bucket-A): S1-A's 16-byte rows take one cache line, not three
    q1 = np.zeros((NCTX1, 8), np.int16)
    q2 = np.zeros((NHASH, 8), np.int16)
    for i in range(NS + 1):
        v = (t5 * i) // NS
        for c in range(NCTX1):
            q1[c, i] = v
        for c in range(NHASH):
            q2[c, i] = v
    for c in range(NCTX1):
        q1[c, _WT] = W_INIT
    tb_ = TOT - NB
    qb1 = np.zeros((NECTX1, NB + 3), np.int16)
    qb2 = np.zeros((m, NB + 2), np.int16)
    for i in range(NB + 1):
        v = (tb_ * i) // NB
        for c in range(NECTX1):
            qb1[c, i] = v
        for c in range(m):
            qb2[c, i] = v
    for c in range(NECTX1):
        qb1[c, _BWT] = W_INIT
    qt = np.zeros((NB, 4), np.int32)  # top mantissa bit, ctx = bucket
    qr = np.zeros((2, 4), np.int32)  # row-copy flag, ctx = previous row's flag
    for c in range(NB):
        qt[c, 1] = (TOT - 2) // 2
        qt[c, 2] = TOT - 2
    for c in range(2):
        qr[c, 1] = (TOT - 2) // 2
        qr[c, 2] = TOT - 2
    trb = TOT - NRB
    qd = np.zeros((1, NRB + 2), np.int32)
    for i in range(NRB + 1):
        qd[0, i] = (trb * i) // NRB
    cand = np.zeros(4, np.int32)

    # coder state
    # (start, frequency) of every symbol, one row each; every frequency is < 2^15. A large stripe's rows are
    # sized to make the block >= 32 MiB (of address space: only the pages written count), so that glibc maps
    # it afresh and unmaps it when freed: freed heap memory of a worker thread's arena stays resident, which at
    # 24 MP kept 30 MB after the coding phase, into the next phase's peak. The rows hold the most symbols a
    # stripe can have (4 per pixel: S1, bucket, top bit, raw bits; 3 per row: flag, distance bucket, raw
    # bits), so recording one is two stores: growing them on demand (a call returning the arrays, so
    # reference counting on every symbol) made the encoder's model pass 1.5-2x slower.
    cap = 16 if dec else 4 * H * W + 3 * H + 16
    sym = np.empty((2, cap if cap < _MAPPED_MIN else max(cap, _MAPPED_ROW)), np.uint16)
    st = sym[0]
    fr = sym[1]
    k = 0
    x = np.int64(0)
    pos = w0
    if dec:
        if w1 - w0 < 2:
            return _ERR_EOF, st, fr, 0
        x = (np.int64(words[pos]) << 16) | np.int64(words[pos + 1])
        pos += 2
        if x < RANS_L:
            return _ERR_SYM, st, fr, 0

    # row hashes for row-copy detection (encoder only): compare candidate rows exactly
    prevflag = 0
    for y in range(H):
        r0 = (y + 2) % 3  # ring rows of y, y-1, y-2
        r1 = (y + 1) % 3
        r2 = y % 3
        # left padding of this row: value above column 0; right padding of the row above
        P[r0, 0] = P[r1, 2]
        P[r0, 1] = P[r1, 2]
        P[r1, W + 2] = P[r1, W + 1]
        P[r1, W + 3] = P[r1, W + 1]
        if y > 0:
            # ---- row-copy flag
            flag = 0
            d = 0
            if not dec:
                # distance to the most recent identical earlier row in this stripe (0: none)
                d = copyd[y]
                flag = 1 if d > 0 else 0
            # code flag (binary model, ctx prevflag)
            if dec:
                slot = x & (TOT - 1)
                s = 1 if slot >= qr[prevflag, 1] + 1 else 0
                flag = s
            else:
                s = flag
            start = qr[prevflag, s] + s
            freq = qr[prevflag, s + 1] - qr[prevflag, s] + 1
            if dec:
                x = freq * (x >> PREC) + (x & (TOT - 1)) - start
                if x < RANS_L:
                    if pos >= w1:
                        return _ERR_EOF, st, fr, 0
                    x = (x << 16) | np.int64(words[pos])
                    pos += 1
            else:
                _put(st, fr, k, start, freq)
                k += 1
            _adapt(qr, prevflag, 2, s)
            prevflag = flag
            if flag:
                # distance d in 1..y: bucket b = bitlen(d-1) then b-1 raw bits
                if dec:
                    slot = x & (TOT - 1)
                    b = 0
                    for i in range(1, NRB):
                        if qd[0, i] + i <= slot:
                            b = i
                else:
                    b = _bitlen(d - 1)
                start = qd[0, b] + b
                freq = qd[0, b + 1] - qd[0, b] + 1
                if dec:
                    x = freq * (x >> PREC) + (x & (TOT - 1)) - start
                    if x < RANS_L:
                        if pos >= w1:
                            return _ERR_EOF, st, fr, 0
                        x = (x << 16) | np.int64(words[pos])
                        pos += 1
                else:
                    _put(st, fr, k, start, freq)
                    k += 1
                _adapt(qd, 0, NRB, b)
                if b <= 1:
                    dm1 = b
                else:
                    nbits = b - 1
                    if dec:
                        slot = x & (TOT - 1)
                        raw = slot >> (PREC - nbits)
                        start = raw << (PREC - nbits)
                        freq = 1 << (PREC - nbits)
                        x = freq * (x >> PREC) + slot - start
                        if x < RANS_L:
                            if pos >= w1:
                                return _ERR_EOF, st, fr, 0
                            x = (x << 16) | np.int64(words[pos])
                            pos += 1
                    else:
                        raw = (d - 1) - (1 << nbits)
                        _put(st, fr, k, raw << (PREC - nbits), 1 << (PREC - nbits))
                        k += 1
                    dm1 = (1 << nbits) + raw
                d = dm1 + 1
                if d > y:
                    return _ERR_SYM, st, fr, 0
                # row y repeats row y-d (of the input, or of the output decoded so far)
                if dec:
                    for xx in range(W):
                        v = out[y - d, xx]
                        out[y, xx] = v
                        P[r0, xx + 2] = v
                else:
                    for xx in range(W):
                        P[r0, xx + 2] = lab[y - d, xx]
                continue

        rl = 0
        rt = 0
        rtr = 0
        rtl = 0
        for xc in range(W):
            c0 = xc + 2
            L = P[r0, c0 - 1]
            T = P[r1, c0]
            TR = P[r1, c0 + 1]
            TL = P[r1, c0 - 1]
            LL = P[r0, c0 - 2]
            TT = P[r2, c0]
            TRR = P[r1, c0 + 2]
            if y == 0:
                # first row of a stripe: every neighbour above is taken to be L
                T = L
                TR = L
                TL = L
                TT = L
                TRR = L
            pat = (L == T) * 1 + (L == TL) * 2 + (L == TR) * 4 + (T == TL) * 8 + (T == TR) * 16 + (TL == TR) * 32
            ex = (L == LL) * 1 + (T == TT) * 2 + (TR == TRR) * 4
            mx = rl
            dd = 0
            if rt > mx:
                mx = rt
                dd = 1
            if rtr > mx:
                mx = rtr
                dd = 2
            if rtl > mx:
                mx = rtl
                dd = 3
            bk = 0 if mx < 2 else (1 if mx < 4 else (2 if mx < 16 else 3))
            ctx = ((pat * 8 + ex) * 4 + dd) * 4 + bk
            if has_ref:
                # edges of the reference plane at this pixel: U != U-left, U != U-above
                u = ref[y, xc]
                ul = ref[y, xc - 1] if xc > 0 else u
                ut = ref[y - 1, xc] if y > 0 else u
                ctx = ctx * 4 + (u != ul) * 1 + (u != ut) * 2
            hv = np.int64(((L * m + T) * m + TR) * 8 + (pat & 7))
            if has_ref:
                hv = (hv * 257 + np.int64(ref[y, xc]) + 1) & 0xFFFFFFFF
            h2 = ((hv * 2654435761) & 0xFFFFFFFF) >> 18
            # distinct candidates in order L, T, TR, TL
            cand[0] = L
            nd = 1
            if T != L:
                cand[nd] = T
                nd += 1
            if TR != L and TR != T:
                cand[nd] = TR
                nd += 1
            if TL != L and TL != T and TL != TR:
                cand[nd] = TL
                nd += 1
            w = np.int64(q1[ctx, _WT])
            if dec:
                s, lo, hi = _mixed_find(q1, ctx, q2, h2, w, NS, x & (TOT - 1))
            else:
                X = np.int32(lab[y, xc])
                s = NS - 1
                for j in range(nd):
                    if cand[j] == X:
                        s = j
                        break
                lo = _mix(q1, ctx, q2, h2, w, s)
                hi = _mix(q1, ctx, q2, h2, w, s + 1)
            start = lo + s
            fm = hi - lo + 1
            if dec:
                x = fm * (x >> PREC) + (x & (TOT - 1)) - start
                if x < RANS_L:
                    if pos >= w1:
                        return _ERR_EOF, st, fr, 0
                    x = (x << 16) | np.int64(words[pos])
                    pos += 1
            else:
                _put(st, fr, k, start, fm)
                k += 1
            f1 = np.int64(q1[ctx, s + 1]) - np.int64(q1[ctx, s]) + 1
            f2 = np.int64(q2[h2, s + 1]) - np.int64(q2[h2, s]) + 1
            w += ((f2 - f1) * RCP[fm >> 5]) >> 16
            if w < 64:
                w = 64
            elif w > 4032:
                w = 4032
            q1[ctx, _WT] = w
            _adapt(q1, ctx, NS, s)
            _adapt(q2, h2, NS, s)
            if s < NS - 1:
                if s >= nd:
                    return _ERR_SYM, st, fr, 0
                X = cand[s]
            else:
                # ---- escape: base label B nearest to the midpoint of L and T
                if has_ref:
                    # median (LOCO-I) predictor of this plane, corrected by the reference plane's error
                    # of the same predictor
                    u = np.int32(ref[y, xc])
                    ul = np.int32(ref[y, xc - 1]) if xc > 0 else u
                    ut = np.int32(ref[y - 1, xc]) if y > 0 else u
                    utl = np.int32(ref[y - 1, xc - 1]) if (xc > 0 and y > 0) else ut
                    B = _med(L, T, TL) + u - _med(ul, ut, utl)
                    B = 0 if B < 0 else (m - 1 if B > m - 1 else B)
                else:
                    B = np.int32(avg[L, T])
                if B < 0:
                    B = _midpoint_label(keys, ksort, L, T)
                    avg[L, T] = np.int16(B)
                    avg[T, L] = np.int16(B)
                a = _bitlen(np.int32(R[L, T]))
                if a > 8:
                    a = 8
                ectx = a * 5 + nd
                e2 = B
                wv = np.int64(qb1[ectx, _BWT])
                rk = 0
                if dec:
                    b, lo, hi = _mixed_find(qb1, ectx, qb2, e2, wv, NB, x & (TOT - 1))
                else:
                    rx = np.int32(R[B, X])
                    rk = rx
                    for j in range(nd):
                        if np.int32(R[B, cand[j]]) < rx:
                            rk -= 1
                    b = _bitlen(rk)
                    lo = _mix(qb1, ectx, qb2, e2, wv, b)
                    hi = _mix(qb1, ectx, qb2, e2, wv, b + 1)
                start = lo + b
                fm = hi - lo + 1
                if dec:
                    x = fm * (x >> PREC) + (x & (TOT - 1)) - start
                    if x < RANS_L:
                        if pos >= w1:
                            return _ERR_EOF, st, fr, 0
                        x = (x << 16) | np.int64(words[pos])
                        pos += 1
                else:
                    _put(st, fr, k, start, fm)
                    k += 1
                f1 = np.int64(qb1[ectx, b + 1]) - np.int64(qb1[ectx, b]) + 1
                f2 = np.int64(qb2[e2, b + 1]) - np.int64(qb2[e2, b]) + 1
                wv += ((f2 - f1) * RCP[fm >> 5]) >> 16
                if wv < 64:
                    wv = 64
                elif wv > 4032:
                    wv = 4032
                qb1[ectx, _BWT] = wv
                _adapt(qb1, ectx, NB, b)
                _adapt(qb2, e2, NB, b)
                if b >= 2:
                    # top mantissa bit (adaptive, ctx b), then b-2 raw bits
                    if dec:
                        slot = x & (TOT - 1)
                        tbit = 1 if slot >= qt[b, 1] + 1 else 0
                    else:
                        tbit = (rk >> (b - 2)) & 1
                    start = qt[b, tbit] + tbit
                    freq = qt[b, tbit + 1] - qt[b, tbit] + 1
                    if dec:
                        x = freq * (x >> PREC) + (x & (TOT - 1)) - start
                        if x < RANS_L:
                            if pos >= w1:
                                return _ERR_EOF, st, fr, 0
                            x = (x << 16) | np.int64(words[pos])
                            pos += 1
                    else:
                        _put(st, fr, k, start, freq)
                        k += 1
                    _adapt(qt, b, 2, tbit)
                    nbits = b - 2
                    raw = 0
                    if nbits > 0:
                        if dec:
                            slot = x & (TOT - 1)
                            raw = slot >> (PREC - nbits)
                            start = raw << (PREC - nbits)
                            freq = 1 << (PREC - nbits)
                            x = freq * (x >> PREC) + slot - start
                            if x < RANS_L:
                                if pos >= w1:
                                    return _ERR_EOF, st, fr, 0
                                x = (x << 16) | np.int64(words[pos])
                                pos += 1
                        else:
                            raw = rk & ((1 << nbits) - 1)
                            _put(st, fr, k, raw << (PREC - nbits), 1 << (PREC - nbits))
                            k += 1
                    rk = (1 << (b - 1)) | (tbit << nbits) | raw
                elif b == 1:
                    rk = 1
                else:
                    rk = 0
                if dec:
                    # rank among labels not equal to a candidate -> position in order[B]
                    if rk > m - 1 - nd:
                        return _ERR_SYM, st, fr, 0
                    rp = rk
                    # add one for every excluded candidate whose position is <= the running position
                    # (candidates visited in increasing order of their position)
                    used = 0
                    for _it in range(nd):
                        bestp = m
                        bj = -1
                        for j in range(nd):
                            if not (used >> j) & 1:
                                pj = np.int32(R[B, cand[j]])
                                if pj < bestp:
                                    bestp = pj
                                    bj = j
                        used |= 1 << bj
                        if bestp <= rp:
                            rp += 1
                    X = np.int32(order[B, rp])
            P[r0, c0] = X
            rl = rl + 1 if X == L else 0
            rt = rt + 1 if X == T else 0
            rtr = rtr + 1 if X == TR else 0
            rtl = rtl + 1 if X == TL else 0
        if dec:
            for xc in range(W):
                out[y, xc] = P[r0, xc + 2]
    if dec:
        if x != RANS_L or pos != w1:
            return _ERR_FINAL, st, fr, 0
        return _OK, st, fr, 0
    return _OK, st, fr, k


@kernel("(uint16[::1], uint16[::1], int64)", nogil=True)
def _rans_encode(st, fr, n):
    """Encode symbols n-1..0 (reverse); return the uint16 word stream in decoder order.

    Overwrites st and fr: a symbol emits at most one word (before it is coded: x < 2^32 falls below f << 17
    after one 16-bit shift), kept in its own spent slot (st[i] = word, fr[i] = 1; fr[i] = 0: none). The
    decoder reads the words in the reverse of their emission, that is in ascending i."""
    nw = 0
    x = np.int64(RANS_L)
    for i in range(n - 1, -1, -1):
        f = np.int64(fr[i])
        start = np.int64(st[i])
        fr[i] = 0
        if x >= f << 17:
            st[i] = x & 0xFFFF
            fr[i] = 1
            nw += 1
            x >>= 16
        x = ((x // f) << PREC) + (x % f) + start
    out = np.empty(nw + 2, np.uint16)
    out[0] = (x >> 16) & 0xFFFF
    out[1] = x & 0xFFFF
    j = 2
    for i in range(n):
        if fr[i]:
            out[j] = st[i]
            j += 1
    return out


# Both directions call the one kernel from Python with arguments of the same types, so numba compiles (and
# caches) a single specialization: a cold cache costs one compile, not one per direction.
_NO_LABELS = np.zeros((1, 1), np.uint8)
_NO_COPIES = np.zeros(1, np.int64)
_NO_WORDS = np.zeros(1, np.uint16)


def _encode_stripe(lab, copyd, m, R, order, keys, ksort, avg, ref, has_ref) -> np.ndarray:
    status, st, fr, n = _stripe_kernel(
        False, lab, copyd, _NO_LABELS, m, R, order, keys, ksort, avg, _NO_WORDS, 0, 0, ref, bool(has_ref)
    )
    return _rans_encode(st, fr, n)


def _decode_stripe(out, m, R, order, keys, ksort, avg, words, w0, w1, ref, has_ref) -> int:
    status, st, fr, n = _stripe_kernel(
        True, _NO_LABELS, _NO_COPIES, out, m, R, order, keys, ksort, avg, words, int(w0), int(w1), ref, bool(has_ref)
    )
    return status


def _key_tables(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The kernel's tables of a key table: R and order (``_rank_tables``), and the labels sorted by their
    channel-0 key (int64, ties by label) for ``_midpoint_label``."""
    R, order = _rank_tables(keys)
    return R, order, np.argsort(keys[:, 0], kind="stable").astype(np.int64)


def _rank_tables(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """order[a] = all labels sorted by (squared key distance from a, label); R[a, b] = position of b."""
    m = keys.shape[0]
    k = keys.astype(np.int64)
    d = ((k[:, None, :] - k[None, :, :]) ** 2).sum(-1)
    idx = np.broadcast_to(np.arange(m, dtype=np.int64), (m, m))
    order = np.lexsort((idx, d), axis=1).astype(np.uint8)
    R = np.empty((m, m), np.uint8)
    R[np.arange(m)[:, None], order] = np.arange(m, dtype=np.uint8)[None, :]
    return np.ascontiguousarray(R), np.ascontiguousarray(order)


# ----------------------------------------------------------------------------------------------
# stream framing (spec section 16.2)
# ----------------------------------------------------------------------------------------------


def _uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def max_stripes(h: int, w: int) -> int:
    """The most stripes a plane stream of an h x w image may have (spec 16.2): max(64, h w / 1024). Every
    stripe costs a reader a fixed set-up of its models (about 0.8 MB here); the reference encoder's stripes
    hold at least 65,536 pixels each (all but the last), far inside this."""
    return max(64, h * w // 1024)


def _read_uvarint(data: bytes, pos: int, limit: int = 1 << 40) -> tuple[int, int]:
    """A uvarint of at most 6 bytes (spec 16.1) at data[pos:], no larger than limit -> (value, next pos)."""
    v = 0
    for shift in range(0, 42, 7):
        if pos >= len(data):
            raise ValueError("truncated label stream (varint)")
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if v > limit:
            raise ValueError("varint out of range")
        if not b & 0x80:
            return v, pos
    raise ValueError("varint longer than 6 bytes")


# Lower bounds on the information each coded item carries (bits), used to refuse streams too short for the
# image they claim before allocating or decoding anything: a pixel's S1 symbol has a frequency of at most
# TOT - 4 (five symbols, each >= 1), a row flag at most TOT - 1.
_MIN_PIXEL_BITS = 4 / TOT / np.log(2)
_MIN_ROW_BITS = 1 / TOT / np.log(2)


def _key_array(m: int, keys: np.ndarray | None) -> np.ndarray:
    """(m, C) int32 key table: the given table rows (C <= 4 channels, integers 0..65535: the kernel's squared
    distances then stay far inside int64), or the label values (C = 1)."""
    if keys is None:
        return np.arange(m, dtype=np.int32)[:, None]
    k = np.asarray(keys)
    if k.ndim == 1:
        k = k[:, None]
    if k.shape[0] != m or not 1 <= k.shape[1] <= 4:
        raise ValueError(f"keys must have shape ({m}, C) with 1 <= C <= 4, got {k.shape}")
    if k.dtype.kind not in "iub" or (k.size and (int(k.min()) < 0 or int(k.max()) > 65535)):
        raise ValueError("keys must be integers 0..65535")
    return np.ascontiguousarray(k.astype(np.int32))


def _copy_distances(lab: np.ndarray) -> np.ndarray:
    """For each row, the distance to the most recent identical earlier row of the stripe (0 if none)."""
    last: dict[bytes, int] = {}
    d = np.zeros(lab.shape[0], np.int64)
    for y in range(lab.shape[0]):
        key = lab[y].tobytes()
        j = last.get(key)
        if j is not None:
            d[y] = y - j
        last[key] = y
    return d


def encode_plane(
    labels: np.ndarray,
    m: int,
    keys: np.ndarray | None = None,
    ref: np.ndarray | None = None,
    stripe_rows: int | None = None,
) -> bytes:
    """One plane's substream (spec 16.2): header + rANS words of each stripe.

    labels : (H, W) uint8, every value < m (1 <= m <= 256).
    keys : (m, C) table whose rows order escapes by squared distance (flag bit 0), or None for label values.
    ref : (H, W) uint8 reference plane (flag bit 1: the previous plane of the same image), or None.
    stripe_rows : rows per stripe; default about 2 megapixels per stripe.
    """
    lab = np.ascontiguousarray(labels)
    if lab.dtype != np.uint8 or lab.ndim != 2 or lab.size == 0:
        raise ValueError("labels must be a non-empty 2-D uint8 array")
    if not 1 <= m <= 256 or int(lab.max()) >= m:
        raise ValueError("labels must be < m <= 256")
    h, w = lab.shape
    notice_first_compile(_stripe_kernel, "coder", "5-15")
    karr = _key_array(m, keys)
    R, order, ksort = _key_tables(karr)
    has_ref = ref is not None
    refa = np.ascontiguousarray(ref, dtype=np.uint8) if has_ref else np.zeros((1, 1), np.uint8)
    if has_ref and refa.shape != lab.shape:
        raise ValueError("ref must have the shape of labels")
    if stripe_rows is None:
        stripe_rows = max(1, -(-DEFAULT_STRIPE_PIXELS // w))
    stripe_rows = int(min(max(1, stripe_rows, -(-h // max_stripes(h, w))), MAX_STRIPE_ROWS, h))
    # Escape base per (L, T), filled lazily and shared by all stripes: a pure function of the keys, so stripes
    # running at once at worst compute the same entry twice.
    avg = np.full((m, m), -1, np.int16)

    def encode_stripe(y0: int) -> np.ndarray:
        part = lab[y0 : y0 + stripe_rows]
        part_ref = refa[y0 : y0 + stripe_rows] if has_ref else refa
        return _encode_stripe(part, _copy_distances(part), m, R, order, karr, ksort, avg, part_ref, has_ref)

    streams = _map_stripes(encode_stripe, list(range(0, h, stripe_rows)))
    flags = (FLAG_KEYS if keys is not None else 0) | (FLAG_REF if has_ref else 0)
    head = bytearray([STREAM_VERSION, flags]) + _uvarint(stripe_rows)
    for words in streams[:-1]:
        head += _uvarint(len(words))
    return bytes(head) + b"".join(words.astype("<u2").tobytes() for words in streams)


def decode_plane(data: bytes, h: int, w: int, m: int, keys: np.ndarray | None, ref: np.ndarray | None) -> np.ndarray:
    """Inverse of ``encode_plane`` -> (h, w) uint8 labels, each < m. Raises ValueError on any inconsistency.

    ``keys`` is the plane's table (used when the stream's flag bit 0 says so); ``ref`` the previous plane
    (None for the first plane; required when flag bit 1 is set).
    """
    if len(data) < 3:
        raise ValueError("truncated plane header")
    if data[0] != STREAM_VERSION:
        raise ValueError(f"unknown label stream version {data[0]}")
    flags = data[1]
    if flags & ~(FLAG_KEYS | FLAG_REF):
        raise ValueError(f"unknown flags {flags:#x} in label stream")
    if flags & FLAG_REF and ref is None:
        raise ValueError("the first plane cannot use a reference plane")
    karr = _key_array(m, keys if flags & FLAG_KEYS else None)
    stripe_rows, pos = _read_uvarint(data, 2, MAX_STRIPE_ROWS)
    if not 1 <= stripe_rows <= min(h, MAX_STRIPE_ROWS):
        raise ValueError(f"bad stripe height {stripe_rows}")
    ns = -(-h // stripe_rows)
    if ns > max_stripes(h, w):  # each stripe sets up its models afresh: tiny ones would make decoding slow
        raise ValueError(f"{ns} stripes of {stripe_rows} rows: at most {max_stripes(h, w)} for {w}x{h}")
    lens = []  # in 16-bit words
    for _ in range(ns - 1):
        n, pos = _read_uvarint(data, pos, len(data))
        lens.append(n)
    rest = len(data) - pos
    if rest % 2:
        raise ValueError("odd number of stripe bytes")
    if sum(lens) > rest // 2:
        raise ValueError("stripe lengths exceed the stream")
    lens.append(rest // 2 - sum(lens))
    if any(n < 2 for n in lens):
        raise ValueError("a stripe has fewer than 2 words")
    # Every stripe codes its first row pixel by pixel and every other row at least as a flag; rANS spends
    # no fewer bits than that, less its 32-bit final state. Half the bound is kept as a margin.
    need = ns * w * _MIN_PIXEL_BITS + (h - ns) * _MIN_ROW_BITS
    if rest * 8 + 32 * ns < need / 2:
        raise ValueError("label stream too short for the image size")
    has_ref = bool(flags & FLAG_REF)
    refa = np.ascontiguousarray(ref) if has_ref else np.zeros((1, 1), np.uint8)
    notice_first_compile(_stripe_kernel, "coder", "5-15")
    R, order, ksort = _key_tables(karr)
    words = np.frombuffer(data, dtype="<u2", count=rest // 2, offset=pos).astype(np.uint16)
    offs = np.zeros(ns + 1, np.int64)
    offs[1:] = np.cumsum(np.array(lens, np.int64))
    out = np.empty((h, w), np.uint8)
    avg = np.full((m, m), -1, np.int16)

    def decode_stripe(i: int) -> int:
        y0, y1 = i * stripe_rows, min((i + 1) * stripe_rows, h)
        part_ref = refa[y0:y1] if has_ref else refa
        return _decode_stripe(out[y0:y1], m, R, order, karr, ksort, avg, words, offs[i], offs[i + 1], part_ref, has_ref)

    for i, status in enumerate(_map_stripes(decode_stripe, list(range(ns)))):
        if status != _OK:
            raise ValueError(f"corrupt stripe {i} ({_STATUS[status]})")
    return out


def _map_stripes(fn, items: list) -> list:
    """``[fn(x) for x in items]``, on up to one thread per core: the stripe kernels release the GIL and
    stripes are independent, so the result is the same on any number of threads.

    A job of several stripes (a large image) first hands the C heap's free memory back to the system: what the
    caller freed just before (at 24 MP, a fit's 16 MB colour table and more, about 20 MB that glibc keeps once
    its mmap threshold has risen) would otherwise add to the coding's peak. (Trimming after each stripe as
    well no longer changed the peak once the symbol buffers were mapped: see ``_MAPPED_ROW``.)"""
    workers = min(len(items), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    if len(items) > 1:
        release_free_memory()
    if workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kq-stripe") as pool:
        return list(pool.map(fn, items))


_STATUS = {_ERR_EOF: "ran out of words", _ERR_SYM: "impossible symbol", _ERR_FINAL: "does not end exactly"}


def encode_label_planes(planes: list[np.ndarray], tables: list[np.ndarray | None], use_ref: bool) -> bytes:
    """The whole codec-3 label stream (spec 16.1): each plane's substream, all but the last after its length.

    planes : list of (H, W) uint8 label planes in stream order. tables : per plane, its (m, C) key table
    (or None: label values as keys). use_ref : code planes 1.. with the previous plane as reference.
    """
    out = bytearray()
    for index, (plane, table) in enumerate(zip(planes, tables, strict=True)):
        m = 256 if table is None else len(table)
        ref = planes[index - 1] if use_ref and index else None
        sub = encode_plane(plane, m, table, ref)
        if index < len(planes) - 1:
            out += _uvarint(len(sub))
        out += sub
    return bytes(out)


def decode_label_planes(data: bytes, h: int, w: int, tables: list[np.ndarray]) -> list[np.ndarray]:
    """Inverse of ``encode_label_planes``: one (h, w) uint8 plane per table. Raises ValueError."""
    data = bytes(data)
    pos, planes = 0, []
    for index, table in enumerate(tables):
        if index < len(tables) - 1:
            n, pos = _read_uvarint(data, pos, len(data) - pos)
            sub, pos = data[pos : pos + n], pos + n
        else:
            sub = data[pos:]
        ref = planes[-1] if planes else None
        planes.append(decode_plane(sub, h, w, len(table), table, ref))
    return planes
