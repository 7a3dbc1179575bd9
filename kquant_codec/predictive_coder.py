"""Codec 4 of ``.kq``: the predictive coder of sorted label planes (spec section 17, normative there).

    stream = encode_label_planes(planes, sizes)        # planes: list of (H, W) uint8; sizes: each plane's m
    planes = decode_label_planes(stream, h, w, sizes)  # raises ValueError on any inconsistency

For the global and channel quantization modes, whose tables are sorted ascending, so that a label plane is a
grey image (labels 0 .. m-1, larger = brighter). Per pixel: 6 simple predictors (W, N, W + N - NW, W + NE - N
and two averages), on planes after the first 6 more that apply them to the difference with the previous plane;
each weighted by the inverse square of its error summed over 7 causal neighbours, blended in eighths of a label,
corrected by a LOCO-I style bias per texture context, and rounded to the prediction p. The residual r = label - p
(-255 .. 255) is coded as bit length (two adaptive models mixed), top mantissa bit, raw low bits and sign (its
context includes the rounding of the blend and the previous plane's residual at the same pixel). Zero
residuals: a row flag (the whole row) and run lengths where the neighbours' residuals are all zero.

The entropy coder, model update and mixing are codec 3's (``label_coder``, spec 16.4 and 16.8). One numba
kernel serves encoder and decoder, so the models cannot drift apart; the decoder bounds every index and reports
a status for streams that run out, hold an impossible symbol or do not end exactly. Stripes of rows are coded
independently, on a thread pool; the bytes do not depend on the number of threads. The kernels are compiled
at install time, or by numba on first use (``_native``); the container imports this module on first use only.
"""

from __future__ import annotations

import numpy as np

from ._native import kernel, notice_first_compile
from .label_coder import (
    RCP,
    _map_stripes,
    _put,
    _rans_encode,
    _read_uvarint,
    _uvarint,
    max_stripes,
)

__all__ = ["encode_plane", "decode_plane", "encode_label_planes", "decode_label_planes", "STREAM_VERSION"]

STREAM_VERSION = 1
FLAG_REF = 1  # planes after the first: the previous plane is the reference plane
FLAG_EXACT = 2  # exact rules (spec 17.11): a sub-predictor with no recent error decides; run token "to W - 1"

PREC = 15
TOT = 1 << PREC
RANS_L = 1 << 16
MAX_STRIPE_ROWS = 1 << 16
DEFAULT_STRIPE_PIXELS = 1 << 21

NBASE = 6
NPRED = 12  # sub-predictors (NBASE without a reference plane)
EMAX = 1023  # error sums are clamped to this before the weight lookup
NB = 9  # magnitude bucket alphabet: bitlen(|r|), 0..8
_BWT = NB + 2  # the column of the bucket model's rows (qb) that holds the mixing weight, after the CDF and the count
ACT_T = (1, 2, 3, 4, 6, 8, 11, 15, 20, 27, 36, 48, 64, 90, 128)
NACT = len(ACT_T) + 1  # activity classes
ACT_Q = np.array([sum(e >= t for t in ACT_T) for e in range(1024)], dtype=np.int32)
NREFQ = 4  # reference residual classes
NBIAS = 125 * 3 * 4  # bias contexts
BIAS_RESET = 32
BIAS_MAX = 1023
NACTX = NACT * NREFQ * 3  # magnitude contexts A (plus one: the pixel that ends a run)
NBCTX = NACT * NACT  # magnitude contexts B (plus one, the same)
NRUN = 26  # run tokens: 0 = to the end of the row, t = bitlen(L) + 1 (L < 2^24)
EXACT_TRY_BELOW = 100  # the encoder tries the exact rules on a plane with under 1/100 nonzero residuals
RUN_TO_LAST = NRUN  # exact rules only: the run stops at the row's last pixel (a 27th token)

# weight of a sub-predictor whose error sum is e: 2^24 // (e + 1)^2 (always >= 16)
WTAB = np.array([(1 << 24) // ((e + 1) * (e + 1)) for e in range(EMAX + 1)], dtype=np.int64)

_OK = 0
_ERR_EOF = 1
_ERR_SYM = 2
_ERR_FINAL = 3
_STATUS = {_ERR_EOF: "ran out of words", _ERR_SYM: "impossible symbol", _ERR_FINAL: "does not end exactly"}


@kernel(inline="always")
def _bitlen(v):
    b = 0
    while v > 0:
        b += 1
        v >>= 1
    return b


@kernel(inline="always")
def _clamp(v, lo, hi):
    return lo if v < lo else (hi if v > hi else v)


@kernel(inline="always")
def _q5(d):
    if d < -2:
        return 0
    if d < 0:
        return 1
    if d == 0:
        return 2
    if d <= 2:
        return 3
    return 4


@kernel(inline="always")
def _sgn3(v):
    return 0 if v == 0 else (1 if v > 0 else 2)


@kernel(inline="always")
def _adapt(q, ctx, n, s):
    """The model update of spec 16.4 (the same arithmetic as codec 3's), in two branch-free loops. A model's row
    holds its reduced CDF in columns 0..n and its adaptation count in column n + 1 (one cache line, not two)."""
    c = q[ctx, n + 1]
    r = 2 + (c >> 4)
    if r > 6:
        r = 6
    if c < 255:
        q[ctx, n + 1] = c + 1
    t = TOT - n
    for i in range(1, s + 1):
        q[ctx, i] -= q[ctx, i] >> r
    for i in range(s + 1, n):
        q[ctx, i] += (t - q[ctx, i]) >> r


@kernel(inline="always")
def _init_model(q, n):
    t = TOT - n
    for c in range(q.shape[0]):
        for i in range(n + 1):
            q[c, i] = (t * i) // n


@kernel(inline="always")
def _code_sym(dec, q, c, n, s, x, pos, words, w1, st, fr, k):
    """One symbol under the reduced CDF q[c] over n symbols: decode it (dec) or record s (encoder).
    Returns (s, x, pos, k, ok); ok is False when the decoder runs out of words."""
    if dec:
        slot = x & (TOT - 1)
        s = 0
        for i in range(1, n):  # q[c, i] + i increases strictly: stop at the first start past the slot
            if q[c, i] + i > slot:
                break
            s = i
    start = np.int64(q[c, s]) + s
    freq = np.int64(q[c, s + 1]) - np.int64(q[c, s]) + 1
    if dec:
        x = freq * (x >> PREC) + (x & (TOT - 1)) - start
        if x < RANS_L:
            if pos >= w1:
                return s, x, pos, k, False
            x = (x << 16) | np.int64(words[pos])
            pos += 1
    else:
        _put(st, fr, k, start, freq)  # (st, fr are sized for every symbol: written, never replaced)
        k += 1
    return s, x, pos, k, True


@kernel(inline="always")
def _code_raw(dec, v, nb, x, pos, words, w1, st, fr, k):
    """nb (1..15) raw bits of v. Returns (v, x, pos, k, ok)."""
    sh = PREC - nb
    if dec:
        slot = x & (TOT - 1)
        v = slot >> sh
        x = (np.int64(1) << sh) * (x >> PREC) + slot - (v << sh)
        if x < RANS_L:
            if pos >= w1:
                return v, x, pos, k, False
            x = (x << 16) | np.int64(words[pos])
            pos += 1
    else:
        _put(st, fr, k, v << sh, np.int64(1) << sh)
        k += 1
    return v, x, pos, k, True


@kernel(inline="always")
def _code_residual(dec, r, p, mx, actx, bctx, sctx, qb, qb2, qt, qs, x, pos, words, w1, st, fr, k):
    """The residual r = label - p (p in 0..mx): magnitude bucket (two models mixed), top mantissa bit, raw low
    bits, then the sign when both signs are possible. Returns (r, x, pos, k, status)."""
    a = r if r >= 0 else -r
    b = _bitlen(a)
    wv = np.int64(qb[actx, _BWT])
    # the mixed CDF, computed only as far as the symbol needs: mix(i) = ((4096 - w) qA[i] + w qB[i]) >> 12
    if dec:
        slot = x & (TOT - 1)
        b = 0
        lo = np.int64(0)
        hi = ((4096 - wv) * qb[actx, 1] + wv * qb2[bctx, 1]) >> 12
        while b < NB - 1 and hi + b + 1 <= slot:
            b += 1
            lo = hi
            hi = ((4096 - wv) * qb[actx, b + 1] + wv * qb2[bctx, b + 1]) >> 12
    else:
        lo = ((4096 - wv) * qb[actx, b] + wv * qb2[bctx, b]) >> 12
        hi = ((4096 - wv) * qb[actx, b + 1] + wv * qb2[bctx, b + 1]) >> 12
    fm = hi - lo + 1
    if dec:
        x = fm * (x >> PREC) + (x & (TOT - 1)) - (lo + b)
        if x < RANS_L:
            if pos >= w1:
                return 0, x, pos, k, _ERR_EOF
            x = (x << 16) | np.int64(words[pos])
            pos += 1
    else:
        _put(st, fr, k, lo + b, fm)
        k += 1
    f1 = np.int64(qb[actx, b + 1] - qb[actx, b] + 1)
    f2 = np.int64(qb2[bctx, b + 1] - qb2[bctx, b] + 1)
    wv += ((f2 - f1) * RCP[fm >> 5]) >> 16
    qb[actx, _BWT] = _clamp(wv, 64, 4032)
    _adapt(qb, actx, NB, b)
    _adapt(qb2, bctx, NB, b)
    if b >= 2:
        nb = b - 2
        t = (a >> nb) & 1
        tq = (actx // (NREFQ * 3)) >> 2
        tctx = b * 4 + (tq if tq < 3 else 3)
        t, x, pos, k, ok = _code_sym(dec, qt, tctx, 2, t, x, pos, words, w1, st, fr, k)
        if not ok:
            return 0, x, pos, k, _ERR_EOF
        _adapt(qt, tctx, 2, t)
        raw = 0
        if nb > 0:
            raw, x, pos, k, ok = _code_raw(dec, a & ((1 << nb) - 1), nb, x, pos, words, w1, st, fr, k)
            if not ok:
                return 0, x, pos, k, _ERR_EOF
        a = (1 << (b - 1)) | (t << nb) | raw
    else:
        a = b
    if a == 0:
        return 0, x, pos, k, _OK
    up = a <= mx - p
    dn = a <= p
    if up and dn:
        sg = 1 if r < 0 else 0
        sg, x, pos, k, ok = _code_sym(dec, qs, sctx, 2, sg, x, pos, words, w1, st, fr, k)
        if not ok:
            return 0, x, pos, k, _ERR_EOF
        _adapt(qs, sctx, 2, sg)
        return (-a if sg else a), x, pos, k, _OK
    if up:
        return a, x, pos, k, _OK
    if dn:
        return -a, x, pos, k, _OK
    return 0, x, pos, k, _ERR_SYM


# Not inlined (unlike the helpers above): it runs once per run, not per pixel, and inlining both of its call sites
# cost about 3.5 s of a cold compile. Both sites pass the same argument types, so it compiles once.
@kernel(nogil=True)
def _code_run(dec, L, left, rctx, nrun, qr, x, pos, words, w1, st, fr, k):
    """A run of L zero residuals starting here, 0 <= L <= left (pixels left in the row, this one included):
    token 0 = to the end of the row, else bitlen(L) + 1, then the low bitlen(L) - 1 bits of L raw (more than 15
    in two parts, the high part first). With nrun = NRUN + 1 (exact rules), token RUN_TO_LAST = L = left - 1
    >= 1. Returns (L, x, pos, k, status)."""
    if L == left:
        t = 0
    elif nrun > NRUN and L == left - 1 and L >= 1:
        t = RUN_TO_LAST
    else:
        t = _bitlen(L) + 1
    t, x, pos, k, ok = _code_sym(dec, qr, rctx, nrun, t, x, pos, words, w1, st, fr, k)
    if not ok:
        return 0, x, pos, k, _ERR_EOF
    _adapt(qr, rctx, nrun, t)
    if t == 0:
        return left, x, pos, k, _OK
    if t == RUN_TO_LAST:
        if left < 2:
            return 0, x, pos, k, _ERR_SYM
        return left - 1, x, pos, k, _OK
    if t <= 2:
        L = t - 1
    else:
        nb = t - 2
        low = L & ((1 << nb) - 1)
        if nb > 15:
            hi, x, pos, k, ok = _code_raw(dec, low >> 15, nb - 15, x, pos, words, w1, st, fr, k)
            if not ok:
                return 0, x, pos, k, _ERR_EOF
            lo, x, pos, k, ok = _code_raw(dec, low & 0x7FFF, 15, x, pos, words, w1, st, fr, k)
            low = (hi << 15) | lo
        else:
            low, x, pos, k, ok = _code_raw(dec, low, nb, x, pos, words, w1, st, fr, k)
        if not ok:
            return 0, x, pos, k, _ERR_EOF
        L = (1 << nb) | low
    if L >= left:
        return 0, x, pos, k, _ERR_SYM
    return L, x, pos, k, _OK


# The argument types of the one specialization both directions use (built ahead of time with them):
# dec, lab, out, res_out, m, words, w0, w1, ref, refres, has_ref, exact (out and res_out written).
_STRIPE_SIGNATURE = (
    "(boolean, uint8[:, ::1], uint8[:, ::1], int16[:, ::1], int64, uint16[::1], int64, int64, uint8[:, ::1],"
    " int16[:, ::1], boolean, boolean)"
)


@kernel(_STRIPE_SIGNATURE, inputs=(1, 5, 8, 9), nogil=True)
def _stripe_kernel(dec, lab, out, res_out, m, words, w0, w1, ref, refres, has_ref, exact):
    """Code one stripe. lab: (S, W) uint8 labels (encoder); out: (S, W) uint8 (decoder); res_out: (S, W) int16
    residuals (both sides; the next plane's reference residuals). words[w0:w1]: the decoder's words.
    Returns (status, st, fr, nsym)."""
    # dec is a run-time flag (not numba.literally): one compiled specialization serves both directions
    H = out.shape[0] if dec else lab.shape[0]
    W = out.shape[1] if dec else lab.shape[1]
    npred = NPRED if has_ref else NBASE
    mx = m - 1
    # Rows y-1 and y only, as rings of two (a row's columns are all rewritten before they are read again), in
    # the narrowest cells that hold them (read back as int32): a stripe's scratch grows with its width alone,
    # about 36 bytes per column, so that a short, very wide image (a few bytes of stream may declare 2^24 x 1)
    # does not need many times the memory of the image itself.
    P = np.zeros((2, W + 4), np.int16)  # labels of rows y-1, y: ring row (y+1) & 1 is row y, column c+2 is c
    Q = np.zeros((2, W + 4), np.int16)  # reference labels, same layout
    R = np.zeros((2, W + 2), np.int16)  # residuals (-255..255) of the previous and current row, column c+1
    E = np.zeros((2, W + 6, NPRED), np.uint8)  # sub-predictor errors (0..255), column c+2 (zero padding both sides)
    ws = np.zeros(NPRED, np.int32)  # per sub-predictor: its errors in the row above, columns x-2 .. x+2
    pr = np.zeros(NPRED, np.int64)
    # models
    # (each row: the reduced CDF, the adaptation count, and in qb the mixing weight)
    qb = np.zeros((NACTX + 1, NB + 3), np.int32)
    _init_model(qb, NB)
    qb[:, _BWT] = 2048
    qb2 = np.zeros((NBCTX + 1, NB + 2), np.int32)
    _init_model(qb2, NB)
    qt = np.zeros((NB * 4, 4), np.int32)
    _init_model(qt, 2)
    qs = np.zeros((216, 4), np.int32)
    _init_model(qs, 2)
    qf = np.zeros((2, 4), np.int32)
    _init_model(qf, 2)
    nrun = NRUN + 1 if exact else NRUN
    qr = np.zeros((2, nrun + 2), np.int32)
    _init_model(qr, nrun)
    bB = np.zeros(NBIAS, np.int32)
    bN = np.ones(NBIAS, np.int32)
    bC = np.zeros(NBIAS, np.int32)
    # encoder row buffers (the decoder never touches them)
    nrb = 1 if dec else W
    rb_r = np.zeros(nrb + 1, np.int32)
    rb_p = np.zeros(nrb, np.int32)
    rb_a = np.zeros(nrb, np.int32)
    rb_s = np.zeros(nrb, np.int32)
    rb_b = np.zeros(nrb, np.int32)
    rb_z = np.zeros(nrb, np.uint8)

    # at most 5 symbols per pixel (a run of 0, then a residual's 4) and a row flag per row
    st = np.empty(16 if dec else 5 * H * W + H + 16, np.uint16)
    fr = np.empty(st.shape[0], np.uint16)  # frequencies are at most TOT - 1
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
    prevflag = 0
    for y in range(H):
        r0 = (y + 1) & 1  # ring rows of y and y-1 (before the first row: zeros)
        r1 = y & 1
        P[r0, 0] = P[r1, 2]
        P[r0, 1] = P[r1, 2]
        P[r1, W + 2] = P[r1, W + 1]
        P[r1, W + 3] = P[r1, W + 1]
        if has_ref:
            for xc in range(W):
                Q[r0, xc + 2] = ref[y, xc]
            Q[r0, 0] = Q[r1, 2]
            Q[r0, 1] = Q[r1, 2]
            Q[r1, W + 2] = Q[r1, W + 1]
            Q[r1, W + 3] = Q[r1, W + 1]
        cur = y & 1
        prv = cur ^ 1
        for i in range(npred):
            ws[i] = (
                np.int32(E[prv, 0, i])
                + np.int32(E[prv, 1, i])
                + np.int32(E[prv, 2, i])
                + np.int32(E[prv, 3, i])
                + np.int32(E[prv, 4, i])
            )
        flag = 0
        if dec:
            flag, x, pos, k, ok = _code_sym(dec, qf, prevflag, 2, 0, x, pos, words, w1, st, fr, k)
            if not ok:
                return _ERR_EOF, st, fr, 0
            _adapt(qf, prevflag, 2, flag)
        allzero = True
        run_left = 0
        after = False
        for xc in range(W):
            c0 = xc + 2
            Wv = np.int32(P[r0, c0 - 1])
            if y == 0:
                Nv = Wv
                NWv = Wv
                NEv = Wv
            else:
                Nv = np.int32(P[r1, c0])
                NWv = np.int32(P[r1, c0 - 1])
                NEv = np.int32(P[r1, c0 + 1])
            pr[0] = Wv
            pr[1] = Nv
            pr[2] = _clamp(Wv + Nv - NWv, 0, mx)
            pr[3] = _clamp(Wv + NEv - Nv, 0, mx)
            pr[4] = (Wv + Nv + 1) >> 1
            pr[5] = (Nv + NEv + 1) >> 1
            uerr = 0
            if has_ref:
                u = np.int32(Q[r0, c0])
                uW = np.int32(Q[r0, c0 - 1])
                if y == 0:
                    uN = uW
                    uNW = uW
                    uNE = uW
                else:
                    uN = np.int32(Q[r1, c0])
                    uNW = np.int32(Q[r1, c0 - 1])
                    uNE = np.int32(Q[r1, c0 + 1])
                pr[6] = _clamp(u + Wv - uW, 0, mx)
                pr[7] = _clamp(u + Nv - uN, 0, mx)
                pr[8] = _clamp(u + (Wv + Nv - NWv) - (uW + uN - uNW), 0, mx)
                pr[9] = _clamp(u + (Wv + NEv - Nv) - (uW + uNE - uN), 0, mx)
                pr[10] = _clamp(u + ((Wv + Nv - uW - uN) >> 1), 0, mx)
                pr[11] = _clamp(u + ((Nv + NEv - uN - uNE) >> 1), 0, mx)
                uerr = np.int32(refres[y, xc])
            # blend: weights from the error sums around the pixel
            sw = np.int64(0)
            sp = np.int64(0)
            mine = EMAX
            first0 = -1
            for i in range(npred):
                e = ws[i] + np.int32(E[cur, c0 - 1, i]) + np.int32(E[cur, c0 - 2, i])
                if e > EMAX:
                    e = EMAX
                if e < mine:
                    mine = e
                    if e == 0:
                        first0 = i
                wi = WTAB[e]
                sw += wi
                sp += wi * pr[i]
            pred8 = (sp * 8 + (sw >> 1)) // sw
            rW = np.int32(R[cur, xc])
            rN = np.int32(R[prv, xc + 1])
            rNW = np.int32(R[prv, xc])
            rNE = np.int32(R[prv, xc + 2])
            ee = abs(rW) + abs(rN) + abs(rNW) + abs(rNE)
            act = ACT_Q[ee if ee < 1024 else 1023]
            # bias correction
            bc = (((_q5(Nv - NWv) * 5 + _q5(Wv - NWv)) * 5 + _q5(NEv - Nv)) * 3 + _sgn3(uerr)) * 4 + (act >> 2)
            if exact and first0 >= 0:
                # a sub-predictor without error in the window decides alone, unbiased: exact on synthetic ramps
                pc = 8 * np.int32(pr[first0])
            else:
                pc = _clamp(pred8 + bC[bc], 0, 8 * mx)
            p = (pc + 4) >> 3
            # coding contexts
            au = abs(uerr)
            rq = 0 if au == 0 else (1 if au <= 2 else (2 if au <= 6 else 3))
            fa = abs(pc - 8 * p)
            actx = (act * NREFQ + rq) * 3 + (0 if fa <= 1 else (1 if fa <= 3 else 2))
            bctx = ACT_Q[mine] * NACT + act
            sctx = ((_sgn3(rW) * 3 + _sgn3(rN)) * 3 + _sgn3(uerr)) * 8 + (pc - 8 * p + 4)
            if dec:
                r = 0
                if flag:
                    pass
                elif run_left > 0:
                    run_left -= 1
                else:
                    brk = after
                    after = False
                    status = _OK
                    if not brk and ee == 0:
                        L, x, pos, k, status = _code_run(
                            dec, np.int64(0), W - xc, 1 if xc == 0 else 0, nrun, qr, x, pos, words, w1, st, fr, k
                        )
                        if status != _OK:
                            return status, st, fr, 0
                        if L == 0:
                            brk = True
                        else:
                            run_left = L - 1
                            after = xc + L < W
                    if brk or ee != 0:  # (one call site: each is inlined, and compile time grows with them)
                        r, x, pos, k, status = _code_residual(
                            dec,
                            0,
                            p,
                            mx,
                            NACTX if brk else actx,
                            NBCTX if brk else bctx,
                            sctx,
                            qb,
                            qb2,
                            qt,
                            qs,
                            x,
                            pos,
                            words,
                            w1,
                            st,
                            fr,
                            k,
                        )
                        if brk and status == _OK and r == 0:
                            status = _ERR_SYM
                    if status != _OK:
                        return status, st, fr, 0
                v = p + r
                out[y, xc] = v
            else:
                v = np.int32(lab[y, xc])
                r = v - p
                rb_r[xc] = r
                rb_p[xc] = p
                rb_a[xc] = actx
                rb_b[xc] = bctx
                rb_s[xc] = sctx
                rb_z[xc] = ee == 0
                if r != 0:
                    allzero = False
            res_out[y, xc] = r
            R[cur, xc + 1] = r
            P[r0, c0] = v
            for i in range(npred):
                d = v - pr[i]
                E[cur, c0, i] = d if d >= 0 else -d
                ws[i] += np.int32(E[prv, c0 + 3, i]) - np.int32(E[prv, c0 - 2, i])  # slide to the next pixel
            # bias update (LOCO-I style, in 1/8 label units)
            n = bN[bc]
            bb = bB[bc] + 8 * v - pc
            if n == BIAS_RESET:
                bb >>= 1
                n >>= 1
            n += 1
            if bb <= -n:
                bb += n
                if bC[bc] > -BIAS_MAX:
                    bC[bc] -= 1
                if bb <= -n:
                    bb = -n + 1
            elif bb > 0:
                bb -= n
                if bC[bc] < BIAS_MAX:
                    bC[bc] += 1
                if bb > 0:
                    bb = 0
            bB[bc] = bb
            bN[bc] = n
        if not dec:
            flag = 1 if allzero else 0
            flag, x, pos, k, ok = _code_sym(dec, qf, prevflag, 2, flag, x, pos, words, w1, st, fr, k)
            _adapt(qf, prevflag, 2, flag)
            if not flag:
                rb_r[W] = 1  # sentinel: runs stop at the end of the row
                xc = 0
                while xc < W:
                    r = rb_r[xc]
                    ended = rb_z[xc]  # a run is coded first; the pixel that ends it has the run contexts
                    if ended:
                        L = 0
                        while rb_r[xc + L] == 0:
                            L += 1
                        if xc + L > W:
                            L = W - xc
                        L, x, pos, k, status = _code_run(
                            dec, L, W - xc, 1 if xc == 0 else 0, nrun, qr, x, pos, words, w1, st, fr, k
                        )
                        if L > 0:
                            xc += L
                            if xc >= W:
                                break
                            r = rb_r[xc]
                    # one call site (each is inlined: compile time grows with them); after a run, the pixel
                    # that ends it (never zero)
                    r, x, pos, k, status = _code_residual(
                        dec,
                        r,
                        rb_p[xc],
                        mx,
                        NACTX if ended else rb_a[xc],
                        NBCTX if ended else rb_b[xc],
                        rb_s[xc],
                        qb,
                        qb2,
                        qt,
                        qs,
                        x,
                        pos,
                        words,
                        w1,
                        st,
                        fr,
                        k,
                    )
                    xc += 1
        prevflag = flag
    if dec:
        if x != RANS_L or pos != w1:
            return _ERR_FINAL, st, fr, 0
        return _OK, st, fr, 0
    return _OK, st, fr, k


# Both directions call the one kernel from Python with arguments of the same types, so numba compiles (and
# caches) a single specialization: a cold cache costs one compile, not one per direction.
_NO_LABELS = np.zeros((1, 1), np.uint8)
_NO_WORDS = np.zeros(1, np.uint16)


def _encode_stripe(lab, res_out, m, ref, refres, has_ref, exact) -> np.ndarray:
    status, st, fr, n = _stripe_kernel(
        False, lab, _NO_LABELS, res_out, m, _NO_WORDS, 0, 0, ref, refres, bool(has_ref), bool(exact)
    )
    return _rans_encode(st, fr, n)


def _decode_stripe(out, res_out, m, words, w0, w1, ref, refres, has_ref, exact) -> int:
    status, st, fr, n = _stripe_kernel(
        True, _NO_LABELS, out, res_out, m, words, int(w0), int(w1), ref, refres, bool(has_ref), bool(exact)
    )
    return status


# ----------------------------------------------------------------------------------------------
# stream framing (spec section 17.1, 17.2)
# ----------------------------------------------------------------------------------------------

# A pixel's least possible cost: its row is flagged all-zero (one binary symbol per row, at most
# TOT - 1 of TOT), or its magnitude bucket is coded (one of NB symbols, frequency at most TOT - NB + 1).
_MIN_ROW_BITS = 1 / TOT / np.log(2)


def encode_plane(
    labels: np.ndarray,
    m: int,
    ref: tuple[np.ndarray, np.ndarray] | None = None,
    stripe_rows: int | None = None,
    exact: bool = False,
) -> tuple[bytes, np.ndarray]:
    """One plane stream (spec 17.2) and the plane's residuals.

    labels : (H, W) uint8, every value < m (1 <= m <= 256), labels of a table sorted ascending.
    ref : (labels, residuals) of the previous plane, as returned for it, or None (flag bit 0 clear).
    stripe_rows : rows per stripe; default about 2 megapixels per stripe.
    exact : code with the exact rules (flag bit 1, spec 17.11).
    Returns (stream bytes, (H, W) int16 residuals: label minus prediction).
    """
    lab = np.ascontiguousarray(labels)
    if lab.dtype != np.uint8 or lab.ndim != 2 or lab.size == 0:
        raise ValueError("labels must be a non-empty 2-D uint8 array")
    if not 1 <= m <= 256 or int(lab.max()) >= m:
        raise ValueError("labels must be < m <= 256")
    h, w = lab.shape
    has_ref = ref is not None
    if has_ref:
        refl = np.ascontiguousarray(ref[0], dtype=np.uint8)
        refr = np.ascontiguousarray(ref[1], dtype=np.int16)
        if refl.shape != lab.shape or refr.shape != lab.shape:
            raise ValueError("the reference plane must have the shape of labels")
    else:
        refl, refr = np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.int16)
    if stripe_rows is None:
        stripe_rows = max(1, -(-DEFAULT_STRIPE_PIXELS // w))
    stripe_rows = int(min(max(1, stripe_rows, -(-h // max_stripes(h, w))), MAX_STRIPE_ROWS, h))
    res = np.empty((h, w), np.int16)
    notice_first_compile(_stripe_kernel, "predictive coder", "15-30")

    def encode_stripe(y0: int) -> np.ndarray:
        y1 = y0 + stripe_rows
        part_ref = (refl[y0:y1], refr[y0:y1]) if has_ref else (refl, refr)
        return _encode_stripe(lab[y0:y1], res[y0:y1], m, part_ref[0], part_ref[1], has_ref, exact)

    streams = _map_stripes(encode_stripe, list(range(0, h, stripe_rows)))
    flags = (FLAG_REF if has_ref else 0) | (FLAG_EXACT if exact else 0)
    head = bytearray([STREAM_VERSION, flags]) + _uvarint(stripe_rows)
    for words in streams[:-1]:
        head += _uvarint(len(words))
    return bytes(head) + b"".join(words.astype("<u2").tobytes() for words in streams), res


def decode_plane(
    data: bytes, h: int, w: int, m: int, ref: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``encode_plane`` -> ((h, w) uint8 labels, each < m; (h, w) int16 residuals).

    ``ref`` is (labels, residuals) of the previous plane (None for the first plane). Raises ValueError on any
    inconsistency of the stream.
    """
    if len(data) < 3:
        raise ValueError("truncated plane header")
    if data[0] != STREAM_VERSION:
        raise ValueError(f"unknown predictive stream version {data[0]}")
    flags = data[1]
    if flags & ~(FLAG_REF | FLAG_EXACT):
        raise ValueError(f"unknown flags {flags:#x} in predictive stream")
    has_ref = bool(flags & FLAG_REF)
    exact = bool(flags & FLAG_EXACT)
    if has_ref and ref is None:
        raise ValueError("the first plane cannot use a reference plane")
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
    if rest * 8 + 32 * ns < h * _MIN_ROW_BITS / 2:
        raise ValueError("label stream too short for the image size")
    if has_ref:
        refl = np.ascontiguousarray(ref[0], dtype=np.uint8)
        refr = np.ascontiguousarray(ref[1], dtype=np.int16)
    else:
        refl, refr = np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.int16)
    notice_first_compile(_stripe_kernel, "predictive coder", "15-30")
    words = np.frombuffer(data, dtype="<u2", count=rest // 2, offset=pos).astype(np.uint16)
    offs = np.zeros(ns + 1, np.int64)
    offs[1:] = np.cumsum(np.array(lens, np.int64))
    out = np.empty((h, w), np.uint8)
    res = np.empty((h, w), np.int16)

    def decode_stripe(i: int) -> int:
        y0, y1 = i * stripe_rows, min((i + 1) * stripe_rows, h)
        rl, rr = (refl[y0:y1], refr[y0:y1]) if has_ref else (refl, refr)
        return _decode_stripe(out[y0:y1], res[y0:y1], m, words, offs[i], offs[i + 1], rl, rr, has_ref, exact)

    for i, status in enumerate(_map_stripes(decode_stripe, list(range(ns)))):
        if status != _OK:
            raise ValueError(f"corrupt stripe {i} ({_STATUS[status]})")
    return out, res


def encode_label_planes(planes: list[np.ndarray], sizes: list[int]) -> bytes:
    """The whole codec-4 label stream (spec 17.1): each plane stream, all but the last after its length.

    planes : (H, W) uint8 label planes in stream order; sizes : the size m of each plane's table. Planes after
    the first are coded with the previous plane as reference.
    """
    out = bytearray()
    ref = None
    for index, (plane, m) in enumerate(zip(planes, sizes, strict=True)):
        sub, res = encode_plane(plane, m, ref)
        # The exact rules pay only on planes that are nearly all predicted exactly (synthetic ramps); on photos
        # they cost 0.5-6%. Trying them only below 1% nonzero residuals keeps photo encodes at one pass.
        if np.count_nonzero(res) * EXACT_TRY_BELOW < res.size:
            alt, alt_res = encode_plane(plane, m, ref, exact=True)
            if len(alt) < len(sub):
                sub, res = alt, alt_res
        ref = (plane, res)
        if index < len(planes) - 1:
            out += _uvarint(len(sub))
        out += sub
    return bytes(out)


def decode_label_planes(data: bytes, h: int, w: int, sizes: list[int]) -> list[np.ndarray]:
    """Inverse of ``encode_label_planes``: one (h, w) uint8 plane per table size. Raises ValueError."""
    data = bytes(data)
    pos, planes, ref = 0, [], None
    for index, m in enumerate(sizes):
        if index < len(sizes) - 1:
            n, pos = _read_uvarint(data, pos, len(data) - pos)
            sub, pos = data[pos : pos + n], pos + n
        else:
            sub = data[pos:]
        plane, res = decode_plane(sub, h, w, m, ref)
        planes.append(plane)
        ref = (plane, res)
    return planes
