"""A second implementation of the .kq format, written from spec/kq-format.md alone (clean room: its author did
not read kquant_codec's source). Pure Python and numpy, slow: for tests. The inside of a PNG payload (its
pixels, palette, bit depths) is Pillow's to decode, so there only the container rules of spec 9 are its own.

    decode(data) -> (array, mode, extra)       raises KqError for anything the spec rejects
        array: what np.asarray(PIL image) gives for that mode ('1': bool (H, W); 'L', 'P': uint8 (H, W);
               'I;16': uint16 (H, W); others uint8 (H, W, bands))
        extra: header fields, the label planes, palette (and palette alpha) for 'P'
    c3_encode_plane(labels, m, key_rows, flags, ref, S) -> codec-3 plane stream (spec 16.2)
    c4_encode_plane(labels, m, flags, ref_labels, ref_residuals, S) -> (codec-4 plane stream, residuals)
"""

import io
import lzma
import struct
import zlib

import numpy as np


class KqError(Exception):
    pass


def fail(msg):
    raise KqError(msg)


MAGIC = b"\x89KQI\r\n\x1a\n"
# code -> (mode, colour channels, native allowed, png allowed, allowed alpha values)
MODES = {
    1: ("1", 1, True, True, (0,)),
    2: ("L", 1, True, True, (0,)),
    3: ("LA", 1, True, True, (1, 2)),
    4: ("P", 3, True, True, (0, 2)),
    5: ("RGB", 3, True, True, (0,)),
    6: ("RGBA", 3, True, True, (1, 2)),
    7: ("CMYK", 4, True, False, (0,)),
    8: ("YCbCr", 3, True, False, (0,)),
    9: ("LAB", 3, True, False, (0,)),
    10: ("HSV", 3, True, False, (0,)),
    11: ("I;16", None, False, True, (0,)),
}
KNOWN_CODECS = (0, 1, 2, 3, 4)

PREC = 15
TOT = 1 << PREC
RCP = [(1 << 22) // (32 * j + 16) for j in range(1024)]
MAX_PIXELS_DEFAULT = 2 * 89478485  # like 2 x Image.MAX_IMAGE_PIXELS


def crc32(b):
    return zlib.crc32(b) & 0xFFFFFFFF


def bitlen(v):
    return v.bit_length()


# --------------------------------------------------------------------------- header


def parse_header(data, max_pixels=MAX_PIXELS_DEFAULT):
    if len(data) < 8 or data[:8] != MAGIC:
        fail("not a .kq file (magic)")
    if len(data) < 44:
        fail("truncated header")
    h = {}
    (
        version,
        kind,
        mcode,
        qmode,
        alpha,
        C,
        packing,
        tcoding,
        W,
        H,
        lcodec,
        acodec,
        keyflag,
        reserved,
        llen,
        alen,
        m0,
        m1,
        m2,
        m3,
    ) = struct.unpack_from("<8BIIBBBBII4H", data, 8)
    ms = [m0, m1, m2, m3]
    if version != 1:
        fail("version")
    if kind > 1:
        fail("payload kind")
    if mcode not in MODES:
        fail("image mode code")
    mode, ncol, nat_ok, png_ok, alpha_ok = MODES[mcode]
    if kind == 0 and not nat_ok:
        fail("image mode not allowed for native payload")
    if kind == 1 and not png_ok:
        fail("image mode not allowed for png payload")
    if qmode > 2:
        fail("quant mode")
    if alpha > 2:
        fail("alpha")
    if packing > 1:
        fail("packing")
    if tcoding > 1:
        fail("table coding")
    if not (1 <= W <= 1 << 24) or not (1 <= H <= 1 << 24) or W * H > 1 << 28:
        fail("size")
    if lcodec not in KNOWN_CODECS:
        fail(f"unknown label codec id {lcodec}")
    if acodec not in KNOWN_CODECS:
        fail(f"unknown alpha codec id {acodec}")
    if reserved != 0:
        fail("reserved")
    if keyflag > 1:
        fail("colour key flag")
    if keyflag and (kind == 1 or mode not in ("L", "RGB")):
        fail("colour key on a PNG payload or outside modes L and RGB")
    K = C if keyflag else 0
    if kind == 1:
        if qmode or alpha or C or packing or tcoding or lcodec or acodec or alen or any(ms):
            fail("png payload header fields must be 0")
        T = 0
        tables = None
        if not (8 <= llen <= 8 * W * H + 8 * H + 65536):
            fail("png length out of bounds")
        nplanes = 0
    else:
        if mode == "P" and qmode != 0:
            fail("P must use rgb quantization")
        if alpha not in alpha_ok:
            fail("alpha value not allowed for mode")
        if C != ncol + (1 if alpha == 2 else 0):
            fail("channels")
        if tcoding == 1 and qmode == 0:
            fail("level sets in rgb mode")
        if alpha != 1 and (acodec != 0 or alen != 0):
            fail("alpha codec/length without alpha plane")
        ntab = C if qmode == 2 else 1
        for i in range(4):
            if i < ntab:
                if not (1 <= ms[i] <= 256):
                    fail("used table size")
            elif ms[i] != 0:
                fail("unused table size")
        if qmode == 0:
            T = ms[0] * C
        elif tcoding == 1:
            T = 32 * ntab
        else:
            T = sum(ms[:ntab])
        if lcodec in (3, 4) and packing == 1:
            fail("codec 3/4 with packing")
        if lcodec == 4 and qmode == 0:
            fail("codec 4 in rgb mode")
        if acodec in (3, 4):
            fail("codec 3/4 as alpha codec")
        nplanes = 1 if qmode == 0 else C
    # table bytes + colour key + header CRC
    if len(data) < 44 + T + K + 4:
        fail("truncated header (tables)")
    (hcrc,) = struct.unpack_from("<I", data, 44 + T + K)
    if crc32(data[: 44 + T + K]) != hcrc:
        fail("header CRC mismatch")
    tb = data[44 : 44 + T]
    key = tuple(data[44 + T : 44 + T + K]) if keyflag else None
    if kind == 0:
        if qmode == 0:
            tables = [np.frombuffer(tb, np.uint8).reshape(ms[0], C).copy()]
        else:
            tables = []
            off = 0
            for i in range(ntab):
                if tcoding == 1:
                    s = tb[off : off + 32]
                    off += 32
                    lv = [v for v in range(256) if (s[v >> 3] >> (v & 7)) & 1]
                    if len(lv) != ms[i]:
                        fail("level set count != table size")
                    tables.append(np.array(lv, np.uint8))
                else:
                    tables.append(np.frombuffer(tb[off : off + ms[i]], np.uint8).copy())
                    off += ms[i]
        if mode == "1":
            for t in tables:
                if not np.all((t == 0) | (t == 255)):
                    fail("mode 1 table holds values other than 0 and 255")
    if W * H > max_pixels:
        fail("decompression bomb")
    h.update(
        version=version,
        kind=kind,
        mcode=mcode,
        mode=mode,
        qmode=qmode,
        alpha=alpha,
        C=C,
        packing=packing,
        tcoding=tcoding,
        W=W,
        H=H,
        lcodec=lcodec,
        acodec=acodec,
        llen=llen,
        alen=alen,
        ms=ms,
        T=T,
        K=K,
        key=key,
        tables=tables,
        nplanes=nplanes,
    )
    return h


# --------------------------------------------------------------------------- stream codecs


def decompress(codec, stored, U):
    if codec == 0:
        if len(stored) != U:
            fail("stored length != uncompressed length")
        return bytes(stored)
    if not (1 <= len(stored) <= U + U // 16 + 64):
        fail("compressed length out of bounds")
    if codec == 1:
        d = zlib.decompressobj()
        try:
            out = d.decompress(stored, U + 1)
        except zlib.error as e:
            fail(f"zlib: {e}")
        if len(out) != U or not d.eof or d.unused_data or d.unconsumed_tail:
            fail("zlib stream size/end mismatch")
        return out
    if codec == 2:
        D = min(max(U, 4096), 1 << 26)
        d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": D}])
        try:
            out = d.decompress(stored, U + 1)
        except lzma.LZMAError as e:
            fail(f"lzma2: {e}")
        if len(out) != U:
            fail("lzma2 size mismatch")
        if not d.eof:
            # maybe only the end marker remains unread
            try:
                more = d.decompress(b"", 1)
            except lzma.LZMAError as e:
                fail(f"lzma2: {e}")
            if more or not d.eof:
                fail("lzma2 stream lacks end / too long")
        if d.unused_data:
            fail("lzma2 bytes after end")
        return out
    fail(f"unknown codec id {codec}")


def unpack_planes(buf, H, W, depths):
    planes = []
    off = 0
    for d in depths:
        rb = (W * d + 7) // 8
        a = np.frombuffer(buf, np.uint8, H * rb, off).reshape(H, rb)
        off += H * rb
        if d == 8:
            planes.append(a.copy())
        else:
            bits = np.unpackbits(a, axis=1)[:, : W * d].reshape(H, W, d)
            vals = np.zeros((H, W), np.int32)
            for k in range(d):
                vals = (vals << 1) | bits[:, :, k]
            planes.append(vals.astype(np.uint8))
    assert off == len(buf)
    return planes


def depth_for(m):
    return 1 if m <= 2 else 2 if m <= 4 else 4 if m <= 16 else 8


# --------------------------------------------------------------------------- entropy coding


class Model:
    def __init__(self, n, nctx):
        self.n = n
        self.init = [((TOT - n) * i) // n for i in range(n + 1)]
        self.q = [None] * nctx
        self.c = [0] * nctx

    def get(self, ctx):
        q = self.q[ctx]
        if q is None:
            q = self.q[ctx] = list(self.init)
        return q

    def update(self, ctx, s):
        q = self.get(ctx)
        c = self.c[ctx]
        r = min(2 + (c >> 4), 6)
        self.c[ctx] = min(c + 1, 255)
        lim = TOT - self.n
        for i in range(1, self.n):
            if i > s:
                q[i] += (lim - q[i]) >> r
            else:
                q[i] -= q[i] >> r


def _find(q, n, slot):
    for i in range(n - 1, -1, -1):
        if q[i] + i <= slot:
            return i
    return 0


class Coder:
    """rANS decoder over a stripe's words (16.8), or, with words=None, a recording encoder."""

    def __init__(self, words=None, log=None):
        self.enc = words is None
        self.log = log
        self.syms = []
        if not self.enc:
            if len(words) < 2:
                fail("stripe has fewer than 2 words")
            self.x = (words[0] << 16) | words[1]
            if self.x < 1 << 16:
                fail("rans initial state too small")
            self.w = words
            self.i = 2

    def slot(self):
        return self.x & (TOT - 1)

    def _code(self, start, freq):
        if self.log is not None:
            self.log.append((start, freq))
        if self.enc:
            self.syms.append((start, freq))
            return
        x = self.x
        x = freq * (x >> PREC) + (x & (TOT - 1)) - start
        if x < 1 << 16:
            if self.i >= len(self.w):
                fail("rans: stripe out of words")
            x = (x << 16) | self.w[self.i]
            self.i += 1
        self.x = x

    def model(self, M, ctx, s=None):
        q = M.get(ctx)
        if not self.enc:
            s = _find(q, M.n, self.slot())
        self._code(q[s] + s, q[s + 1] - q[s] + 1)
        M.update(ctx, s)
        return s

    def mixed(self, A, a, B, b, weights, widx, s=None):
        qa = A.get(a)
        qb = B.get(b)
        w = weights[widx]
        n = A.n
        qm = [((4096 - w) * qa[i] + w * qb[i]) >> 12 for i in range(n + 1)]
        if not self.enc:
            s = _find(qm, n, self.slot())
        fm = qm[s + 1] - qm[s] + 1
        self._code(qm[s] + s, fm)
        fA = qa[s + 1] - qa[s] + 1
        fB = qb[s + 1] - qb[s] + 1
        w += ((fB - fA) * RCP[fm >> 5]) >> 16
        weights[widx] = min(max(w, 64), 4032)
        A.update(a, s)
        B.update(b, s)
        return s

    def raw(self, k, v=None):
        if not self.enc:
            v = self.slot() >> (15 - k)
        self._code(v << (15 - k), 1 << (15 - k))
        return v

    def finish(self):
        if self.enc:
            x = 1 << 16
            emitted = []
            for start, freq in reversed(self.syms):
                if x >= freq << 17:
                    emitted.append(x & 0xFFFF)
                    x >>= 16
                x = ((x // freq) << 15) + (x % freq) + start
            return [x >> 16, x & 0xFFFF] + emitted[::-1]
        if self.x != 1 << 16 or self.i != len(self.w):
            fail("rans: stripe does not end exactly")


def read_uvarint(buf, pos):
    v = 0
    for i in range(6):
        if pos >= len(buf):
            fail("truncated uvarint")
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return v, pos
    fail("uvarint longer than 6 bytes")


def uvarint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def split_label_stream(stream, nplanes):
    """16.1 / 17.1: plane streams, each but the last preceded by a uvarint length."""
    out = []
    pos = 0
    for p in range(nplanes):
        if p < nplanes - 1:
            n, pos = read_uvarint(stream, pos)
            if n > len(stream) - pos:
                fail("plane length longer than remaining bytes")
            out.append(stream[pos : pos + n])
            pos += n
        else:
            out.append(stream[pos:])
    return out


def join_label_stream(pss):
    out = b""
    for i, ps in enumerate(pss):
        if i < len(pss) - 1:
            out += uvarint(len(ps))
        out += ps
    return out


def parse_plane_header(ps, H, W, allowed_flags):
    if len(ps) < 2:
        fail("truncated plane header")
    if ps[0] != 1:
        fail("plane stream version")
    flags = ps[1]
    if flags & ~allowed_flags:
        fail("unknown plane flags")
    S, pos = read_uvarint(ps, 2)
    if not (1 <= S <= min(H, 65536)):
        fail("S out of range")
    N = (H + S - 1) // S
    if N > max(64, H * W // 1024):
        fail("too many stripes")
    lens = []
    for _i in range(N - 1):
        n_words, pos = read_uvarint(ps, pos)
        lens.append(n_words)
    rest = len(ps) - pos
    if rest % 2:
        fail("odd byte count")
    nw = rest // 2
    words = list(struct.unpack_from(f"<{nw}H", ps, pos))
    if nw < sum(lens):
        fail("stream shorter than stripe lengths")
    stripes = []
    off = 0
    for n_words in lens:
        stripes.append(words[off : off + n_words])
        off += n_words
    stripes.append(words[off:])
    for s in stripes:
        if len(s) < 2:
            fail("stripe of fewer than 2 words")
    return flags, S, N, stripes


def build_plane_stream(flags, S, stripe_words):
    out = bytes([1, flags]) + uvarint(S)
    for w in stripe_words[:-1]:
        out += uvarint(len(w))
    for w in stripe_words:
        out += struct.pack(f"<{len(w)}H", *w)
    return out


# --------------------------------------------------------------------------- codec 3


class Keys:
    def __init__(self, keys):
        self.keys = [tuple(int(v) for v in k) for k in keys]
        m = len(keys)
        self.m = m
        K = np.array(self.keys, np.int64)
        self.order = []
        self.R = []
        for a in range(m):
            d = ((K - K[a]) ** 2).sum(axis=1)
            o = sorted(range(m), key=lambda j: (int(d[j]), j))
            self.order.append(o)
            r = [0] * m
            for pos, j in enumerate(o):
                r[j] = pos
            self.R.append(r)
        self.K = K
        self._base = {}

    def base(self, L, T):
        key = (L, T)
        b = self._base.get(key)
        if b is None:
            mid2 = self.K[L] + self.K[T]
            d = ((mid2[None, :] - 2 * self.K) ** 2).sum(axis=1)
            b = int(np.argmin(d))  # first minimum -> smallest j on ties
            self._base[key] = b
        return b


def med(a, b, c):
    if c >= max(a, b):
        return min(a, b)
    if c <= min(a, b):
        return max(a, b)
    return a + b - c


def c3_stripe(cd, m, keys, ref, U, y0, nrows, W, target=None):
    s1a = Model(5, 32768)
    s1b = Model(5, 16384)
    bka = Model(9, 45)
    bkb = Model(9, m)
    topm = Model(2, 9)
    rowf = Model(2, 2)
    rdist = Model(17, 1)
    w1 = [2048] * 32768
    wb = [2048] * 45
    prevflag = 0
    enc = target is not None
    P = [[0] * (W + 4) for _ in range(nrows + 2)]
    for y in range(nrows):
        Py = P[y + 2]
        Pm = P[y + 1]
        Pmm = P[y]
        Py[0] = Py[1] = Pm[2]
        Pm[W + 2] = Pm[W + 3] = Pm[W + 1]
        if enc:
            trow = [int(v) for v in target[y0 + y]]
        if y >= 1:
            flag = d = None
            if enc:
                flag = 0
                for dd_ in range(1, y + 1):
                    if P[y - dd_ + 2][2 : W + 2] == trow:
                        flag, d = 1, dd_
                        break
            flag = cd.model(rowf, prevflag, flag)
            prevflag = flag
            if flag:
                b = cd.model(rdist, 0, bitlen(d - 1) if enc else None)
                if b >= 2:
                    v = cd.raw(b - 1, (d - 1 - (1 << (b - 1))) if enc else None)
                    d = 1 + (1 << (b - 1)) + v
                else:
                    d = 1 + b
                if d > y:
                    fail("row distance > y")
                src = P[y - d + 2]
                for x in range(W):
                    Py[x + 2] = src[x + 2]
                continue
        if ref:
            Uy = U[y0 + y]
            Um = U[y0 + y - 1] if y >= 1 else None
        rl = rt = rtr = rtl = 0
        for x in range(W):
            cx = x + 2
            L = Py[cx - 1]
            LL = Py[cx - 2]
            if y == 0:
                T = TL = TR = TRR = TT = L
            else:
                T = Pm[cx]
                TL = Pm[cx - 1]
                TR = Pm[cx + 1]
                TRR = Pm[cx + 2]
                TT = Pmm[cx]
            pat = (L == T) + 2 * (L == TL) + 4 * (L == TR) + 8 * (T == TL) + 16 * (T == TR) + 32 * (TL == TR)
            ex = (L == LL) + 2 * (T == TT) + 4 * (TR == TRR)
            mx, dd = rl, 0
            if rt > mx:
                mx, dd = rt, 1
            if rtr > mx:
                mx, dd = rtr, 2
            if rtl > mx:
                mx, dd = rtl, 3
            bk = 0 if mx < 2 else 1 if mx < 4 else 2 if mx < 16 else 3
            ctx1 = ((pat * 8 + ex) * 4 + dd) * 4 + bk
            hv = ((L * m + T) * m + TR) * 8 + (pat & 7)
            if ref:
                u = int(Uy[x])
                ul = int(Uy[x - 1]) if x > 0 else u
                ut = int(Um[x]) if y > 0 else u
                utl = int(Um[x - 1]) if (x > 0 and y > 0) else ut
                hv = (hv * 257 + u + 1) % (1 << 32)
                ctx1 = ctx1 * 4 + (u != ul) + 2 * (u != ut)
            h2 = ((hv * 2654435761) % (1 << 32)) >> 18
            cand = [L]
            if T != L:
                cand.append(T)
            if TR != L and TR != T:
                cand.append(TR)
            if TL not in cand:
                cand.append(TL)
            nd = len(cand)
            s = None
            if enc:
                Xt = trow[x]
                s = cand.index(Xt) if Xt in cand else 4
            s = cd.mixed(s1a, ctx1, s1b, h2, w1, ctx1, s)
            if s < 4:
                if s >= nd:
                    fail("S1 symbol >= nd")
                X = cand[s]
            else:
                if ref:
                    B = min(max(med(L, T, TL) + u - med(ul, ut, utl), 0), m - 1)
                else:
                    B = keys.base(L, T)
                a = min(bitlen(keys.R[L][T]), 8)
                ectx = 5 * a + nd
                RB = keys.R[B]
                b = rank = None
                if enc:
                    rank = RB[Xt] - sum(1 for c in cand if RB[c] < RB[Xt])
                    b = bitlen(rank)
                b = cd.mixed(bka, ectx, bkb, B, wb, ectx, b)
                if b >= 2:
                    t = cd.model(topm, b, ((rank >> (b - 2)) & 1) if enc else None)
                    low = cd.raw(b - 2, (rank & ((1 << (b - 2)) - 1)) if enc else None) if b > 2 else 0
                    rank = (1 << (b - 1)) + (t << (b - 2)) + low
                else:
                    rank = b
                if rank > m - 1 - nd:
                    fail("escape rank out of range")
                pos = sorted(RB[c] for c in cand)
                p = rank
                for q in pos:
                    if q <= p:
                        p += 1
                X = keys.order[B][p]
                if enc:
                    assert X == Xt
            Py[cx] = X
            rl = rl + 1 if X == L else 0
            rt = rt + 1 if X == T else 0
            rtr = rtr + 1 if X == TR else 0
            rtl = rtl + 1 if X == TL else 0
    return [P[y + 2][2 : W + 2] for y in range(nrows)]


def c3_keys(m, table_keys, flags):
    return Keys(table_keys if flags & 1 else [(j,) for j in range(m)])


def c3_plane(ps, m, table_keys, H, W, plane_idx, U, log=None):
    flags, S, N, stripes = parse_plane_header(ps, H, W, 0x03)
    if flags & 2 and plane_idx == 0:
        fail("reference flag on plane 0")
    keys = c3_keys(m, table_keys, flags)
    ref = bool(flags & 2)
    out = np.zeros((H, W), np.uint8)
    for si in range(N):
        y0 = si * S
        y1 = min(y0 + S, H)
        cd = Coder(stripes[si], log)
        rows = c3_stripe(cd, m, keys, ref, U, y0, y1 - y0, W)
        cd.finish()
        out[y0:y1] = np.array(rows, np.uint8).reshape(y1 - y0, W)
    return out


def c3_encode_plane(X, m, table_keys, flags, U, S, log=None):
    H, W = X.shape
    keys = c3_keys(m, table_keys, flags)
    words = []
    for y0 in range(0, H, S):
        y1 = min(y0 + S, H)
        cd = Coder(None, log)
        c3_stripe(cd, m, keys, bool(flags & 2), U, y0, y1 - y0, W, target=X)
        words.append(cd.finish())
    return build_plane_stream(flags, S, words)


# --------------------------------------------------------------------------- codec 4

ACT_TH = (1, 2, 3, 4, 6, 8, 11, 15, 20, 27, 36, 48, 64, 90, 128)


def actq(e):
    e = min(e, 1023)
    n = 0
    for t in ACT_TH:
        if t <= e:
            n += 1
    return n


def sgn3(v):
    return 0 if v == 0 else 1 if v > 0 else 2


def q5(d):
    return 0 if d < -2 else 1 if d <= -1 else 2 if d == 0 else 3 if d <= 2 else 4


def neigh(A, y, x, W):
    """17.3 neighbourhood of plane A (list of stripe rows)."""
    if x >= 1:
        w = A[y][x - 1]
    elif y >= 1:
        w = A[y - 1][0]
    else:
        w = 0
    if y == 0:
        return w, w, w, w
    n = A[y - 1][x]
    if x >= 1:
        nw = A[y - 1][x - 1]
    elif y >= 2:
        nw = A[y - 2][0]
    else:
        nw = 0
    ne = A[y - 1][x + 1] if x + 1 < W else A[y - 1][W - 1]
    return w, n, nw, ne


def c4_stripe(cd, m, ref, exact, Urows, Frows, nrows, W, target=None, Epre=None, trace=None):
    """cd None: dry run (target given, r = target - p, nothing coded)."""
    NP = 12 if ref else 6

    def cl(v):
        return min(max(v, 0), m - 1)

    enc = target is not None
    dry = cd is None
    rowf = Model(2, 2)
    runm = Model(27 if exact else 26, 2)
    maga = Model(9, 193)
    magb = Model(9, 257)
    topm = Model(2, 36)
    sgnm = Model(2, 216)
    wts = [2048] * 193
    Bt = [0] * 1500
    Nt = [1] * 1500
    Kt = [0] * 1500
    X = [[0] * W for _ in range(nrows)]
    E = [[0] * W for _ in range(nrows)]
    D = [[[0] * W for _ in range(nrows)] for _ in range(NP)]
    U = Urows
    F = Frows
    prevflag = 0
    for y in range(nrows):
        flag = None
        if enc and not dry:
            flag = int(all(v == 0 for v in Epre[y]))
        if not dry:
            flag = cd.model(rowf, prevflag, flag)
        else:
            flag = 0
        prevflag = flag
        z = 0
        runend = False
        Ey = E[y]
        Em = E[y - 1] if y >= 1 else None
        for x in range(W):
            Wv, Nv, NW, NE = neigh(X, y, x, W)
            ps_ = [Wv, Nv, cl(Wv + Nv - NW), cl(Wv + NE - Nv), (Wv + Nv + 1) >> 1, (Nv + NE + 1) >> 1]
            if ref:
                uW, uN, uNW, uNE = neigh(U, y, x, W)
                u = U[y][x]
                uerr = F[y][x]
                ps_ += [
                    cl(u + Wv - uW),
                    cl(u + Nv - uN),
                    cl(u + (Wv + Nv - NW) - (uW + uN - uNW)),
                    cl(u + (Wv + NE - Nv) - (uW + uNE - uN)),
                    cl(u + ((Wv + Nv - uW - uN) >> 1)),
                    cl(u + ((Nv + NE - uN - uNE) >> 1)),
                ]
            else:
                uerr = 0
            es = []
            for i in range(NP):
                Di = D[i]
                e = 0
                if x >= 1:
                    e += Di[y][x - 1]
                if x >= 2:
                    e += Di[y][x - 2]
                if y >= 1:
                    Dm = Di[y - 1]
                    for xx in range(x - 2, x + 3):
                        if 0 <= xx < W:
                            e += Dm[xx]
                es.append(min(1023, e))
            ws = [(1 << 24) // ((e + 1) ** 2) for e in es]
            sw = sum(ws)
            pred8 = (8 * sum(w * p for w, p in zip(ws, ps_, strict=False)) + (sw >> 1)) // sw
            emin = min(es)
            rW = Ey[x - 1] if x >= 1 else 0
            if y >= 1:
                rN = Em[x]
                rNW = Em[x - 1] if x >= 1 else 0
                rNE = Em[x + 1] if x + 1 < W else 0
            else:
                rN = rNW = rNE = 0
            ee = abs(rW) + abs(rN) + abs(rNW) + abs(rNE)
            act = actq(ee)
            bc = (((q5(Nv - NW) * 5 + q5(Wv - NW)) * 5 + q5(NE - Nv)) * 3 + sgn3(uerr)) * 4 + (act >> 2)
            pc = min(max(pred8 + Kt[bc], 0), 8 * (m - 1))
            p = (pc + 4) >> 3
            if exact and emin == 0:
                j = es.index(0)
                p = ps_[j]
                pc = 8 * p
            if trace is not None:
                trace.append(dict(y=y, x=x, es=list(es), ps=list(ps_), pred8=pred8, pc=pc, p=p, bc=bc))
            f = pc - 8 * p
            fq = 0 if abs(f) <= 1 else 1 if abs(f) <= 3 else 2
            rq = 0 if uerr == 0 else 1 if abs(uerr) <= 2 else 2 if abs(uerr) <= 6 else 3
            actx = (act * 4 + rq) * 3 + fq
            bctx = actq(emin) * 16 + act
            sctx = ((sgn3(rW) * 3 + sgn3(rN)) * 3 + sgn3(uerr)) * 8 + f + 4
            rt_ = (int(target[y][x]) - p) if enc else None

            def residual(a, bb, g, rt_=rt_, p=p, sctx=sctx):
                b = cd.mixed(maga, a, magb, bb, wts, a, bitlen(abs(rt_)) if enc else None)
                if b >= 2:
                    mt = abs(rt_) if enc else 0
                    t = cd.model(topm, 4 * b + g, ((mt >> (b - 2)) & 1) if enc else None)
                    low = cd.raw(b - 2, (mt & ((1 << (b - 2)) - 1)) if enc else None) if b > 2 else 0
                    mag = (1 << (b - 1)) + (t << (b - 2)) + low
                else:
                    mag = b
                if mag == 0:
                    return 0
                up = mag <= m - 1 - p
                dn = mag <= p
                if up and dn:
                    s = cd.model(sgnm, sctx, int(rt_ < 0) if enc else None)
                    return -mag if s else mag
                if up:
                    return mag
                if dn:
                    return -mag
                fail("residual out of range")

            if dry:
                r = rt_
            elif flag:
                r = 0
            elif z > 0:
                r = 0
                z -= 1
            elif runend:
                runend = False
                r = residual(192, 256, 3)
                if r == 0:
                    fail("run-end residual of 0")
            elif ee == 0:
                rem = W - x
                t = None
                if enc:
                    Lr = 0
                    while x + Lr < W and Epre[y][x + Lr] == 0:
                        Lr += 1
                    if Lr == rem:
                        t = 0
                    elif exact and Lr == rem - 1 and rem >= 2:
                        t = 26
                    else:
                        t = bitlen(Lr) + 1
                t = cd.model(runm, 1 if x == 0 else 0, t)
                if t == 0:
                    L = rem
                elif exact and t == 26:
                    if rem < 2:
                        fail("token 26 with W - x < 2")
                    L = rem - 1
                elif t == 1:
                    L = 0
                elif t == 2:
                    L = 1
                else:
                    nb = t - 2
                    vv = (Lr - (1 << nb)) if enc else None
                    if nb > 15:
                        hi = cd.raw(nb - 15, (vv >> 15) if enc else None)
                        lo = cd.raw(15, (vv & 0x7FFF) if enc else None)
                        v = (hi << 15) | lo
                    else:
                        v = cd.raw(nb, vv)
                    L = (1 << nb) + v
                if t >= 1 and not (exact and t == 26) and L >= rem:
                    fail("run length past row end")
                if L == 0:
                    r = residual(192, 256, 3)
                    if r == 0:
                        fail("run-end residual of 0")
                else:
                    r = 0
                    z = L - 1
                    if x + L < W:
                        runend = True
            else:
                r = residual(actx, bctx, min(act >> 2, 3))
            v = p + r
            if enc:
                assert v == target[y][x], (y, x, v, target[y][x])
            X[y][x] = v
            Ey[x] = r
            for i in range(NP):
                D[i][y][x] = abs(v - ps_[i])
            # bias update 17.7
            n = Nt[bc]
            beta = Bt[bc] + 8 * v - pc
            if n == 32:
                beta >>= 1
                n >>= 1
            n += 1
            K = Kt[bc]
            if beta <= -n:
                beta += n
                if K != -1023:
                    K -= 1
                if beta <= -n:
                    beta = 1 - n
            elif beta > 0:
                beta -= n
                if K != 1023:
                    K += 1
                if beta > 0:
                    beta = 0
            Bt[bc] = beta
            Nt[bc] = n
            Kt[bc] = K
    return X, E


def c4_plane(ps, m, H, W, plane_idx, Uplane, Fplane, log=None, trace=None):
    flags, S, N, stripes = parse_plane_header(ps, H, W, 0x03)
    if flags & 1 and plane_idx == 0:
        fail("reference flag on plane 0")
    ref = bool(flags & 1)
    exact = bool(flags & 2)
    Xout = np.zeros((H, W), np.int64)
    Eout = np.zeros((H, W), np.int64)
    for si in range(N):
        y0 = si * S
        y1 = min(y0 + S, H)
        Ur = [list(map(int, Uplane[y])) for y in range(y0, y1)] if ref else None
        Fr = [list(map(int, Fplane[y])) for y in range(y0, y1)] if ref else None
        cd = Coder(stripes[si], log)
        X, E = c4_stripe(cd, m, ref, exact, Ur, Fr, y1 - y0, W, trace=trace)
        cd.finish()
        Xout[y0:y1] = np.array(X, np.int64).reshape(y1 - y0, W)
        Eout[y0:y1] = np.array(E, np.int64).reshape(y1 - y0, W)
    return Xout.astype(np.uint8), Eout


def c4_encode_plane(Xt, m, flags, Uplane, Fplane, S, log=None):
    H, W = Xt.shape
    ref = bool(flags & 1)
    exact = bool(flags & 2)
    words = []
    Eall = np.zeros((H, W), np.int64)
    for y0 in range(0, H, S):
        y1 = min(y0 + S, H)
        Ur = [list(map(int, Uplane[y])) for y in range(y0, y1)] if ref else None
        Fr = [list(map(int, Fplane[y])) for y in range(y0, y1)] if ref else None
        tgt = [list(map(int, Xt[y])) for y in range(y0, y1)]
        _, Epre = c4_stripe(None, m, ref, exact, Ur, Fr, y1 - y0, W, target=tgt)
        cd = Coder(None, log)
        c4_stripe(cd, m, ref, exact, Ur, Fr, y1 - y0, W, target=tgt, Epre=Epre)
        words.append(cd.finish())
        Eall[y0:y1] = np.array(Epre, np.int64).reshape(y1 - y0, W)
    return build_plane_stream(flags, S, words), Eall


# --------------------------------------------------------------------------- PNG payload

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_chunks(b):
    if b[:8] != PNG_SIG:
        fail("png: no signature")
    pos = 8
    chunks = []
    while True:
        if pos + 8 > len(b):
            fail("png: truncated chunk")
        (ln,) = struct.unpack_from(">I", b, pos)
        typ = b[pos + 4 : pos + 8]
        if ln > 0x7FFFFFFF or pos + 12 + ln > len(b):
            fail("png: truncated chunk data")
        body = b[pos + 8 : pos + 8 + ln]
        (c,) = struct.unpack_from(">I", b, pos + 8 + ln)
        if crc32(typ + body) != c:
            fail("png: chunk CRC")
        chunks.append((typ, body))
        pos += 12 + ln
        if typ == b"IEND":
            break
    return chunks, pos


def decode_png(b, h):
    from PIL import Image

    chunks, end = png_chunks(b)
    if end != len(b):
        fail("png: bytes after IEND")
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        fail("png: no IHDR")
    pw, ph, depth, ctype, comp, filt, inter = struct.unpack(">IIBBBBB", chunks[0][1])
    W, H, mode = h["W"], h["H"], h["mode"]
    if (pw, ph) != (W, H):
        fail("png: size mismatch")
    kinds = [c[0] for c in chunks]
    if any(kinds.count(once) > 1 for once in (b"IHDR", b"PLTE", b"tRNS")):
        fail("png: a repeated IHDR, PLTE or tRNS chunk")
    first_idat = kinds.index(b"IDAT") if b"IDAT" in kinds else len(kinds)
    if any(kind in (b"PLTE", b"tRNS") for kind in kinds[first_idat:]):
        fail("png: PLTE or tRNS after the image data")
    if chunks[-1][1]:
        fail("png: IEND with data")
    if comp != 0 or filt != 0 or inter > 1:
        fail("png: unknown compression, filter or interlace method")
    for i, kind in enumerate(kinds):
        if kind[0] & 0x20 == 0 and kind not in (b"IHDR", b"PLTE", b"IDAT", b"IEND"):
            fail("png: unknown critical chunk")
        if kind == b"IDAT" and i > first_idat and kinds[i - 1] != b"IDAT":
            fail("png: IDAT chunks not consecutive")
    plte = [c[1] for c in chunks if c[0] == b"PLTE"]
    trns = [c[1] for c in chunks if c[0] == b"tRNS"]
    if plte:
        n = len(plte[0])
        if ctype in (0, 4) or n == 0 or n % 3 or n // 3 > 256 or (ctype == 3 and n // 3 > 2**depth):
            fail("png: bad PLTE")
    if trns:
        if ctype in (4, 6):
            fail("png: tRNS with an alpha channel")
        if ctype == 3 and kinds.index(b"tRNS") < (kinds.index(b"PLTE") if plte else len(kinds)):
            fail("png: tRNS before PLTE")
        if ctype in (0, 2):  # a colour key: 16-bit samples, grey or R, G, B, within the bit depth
            if len(trns[0]) != (2 if ctype == 0 else 6):
                fail("png: a colour-key tRNS of the wrong length")
            if max(struct.unpack(">" + "H" * (len(trns[0]) // 2), trns[0])) >= 2**depth:
                fail("png: a colour key past the bit depth")
    ok = False
    if mode == "1":
        ok = ctype == 0 and depth == 1
    elif mode == "I;16":
        ok = ctype == 0 and depth == 16
    elif mode == "P":
        ok = ctype == 3
    elif mode in ("L", "LA", "RGB", "RGBA"):
        want = {"L": 0, "LA": 4, "RGB": 2, "RGBA": 6}[mode]
        ok = (ctype == want and depth == 8) or ctype == 3
    if not ok:
        fail("png: colour type does not give the mode")
    if ctype == 3:
        if not plte:
            fail("png: indexed without PLTE")
        if trns and len(trns[0]) > len(plte[0]) // 3:
            fail("png: tRNS longer than PLTE")
    # the image data, joined, inflated with room for the rows and one byte: every row, and the end if no more
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(ctype, 1)
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    need = 0
    for x0, y0, dx, dy in passes if inter else [(0, 0, 1, 1)]:
        pw, ph = -(-(W - x0) // dx), -(-(H - y0) // dy)
        if pw > 0 and ph > 0:
            need += ph * (1 + -(-(pw * bits) // 8))
    z = zlib.decompressobj()
    try:
        got = len(z.decompress(b"".join(c[1] for c in chunks if c[0] == b"IDAT"), need + 1))
    except zlib.error:
        fail("png: image data does not inflate")
    if got < need:
        fail("png: too few rows")
    if got == need and not z.eof:
        fail("png: zlib stream does not end")
    # only IHDR, PLTE, tRNS, IDAT and IEND are read: ancillary chunks are skipped (after their CRC check)
    kept = [c for c in chunks if c[0] in (b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND")]
    b = b"\x89PNG\r\n\x1a\n" + b"".join(
        struct.pack(">I", len(body)) + typ + body + struct.pack(">I", crc32(typ + body)) for typ, body in kept
    )
    try:
        im = Image.open(io.BytesIO(b), formats=["PNG"])
        im.load()
    except Exception as e:  # noqa
        fail(f"png decode: {e!r}")
    if ctype == 3 and int(np.array(im).max()) >= len(plte[0]) // 3:
        fail("png: an index past PLTE")
    extra = {}
    if mode == "P":
        if im.mode != "P":
            fail("png: not P")
        arr = np.array(im)
        pal = np.array(im.getpalette(), np.uint8).reshape(-1, 3)
        extra["palette"] = pal
        extra["transparency"] = im.info.get("transparency")
        return arr, "P", extra
    if mode == "1":
        return np.array(im.convert("1") if im.mode != "1" else im), "1", extra
    if mode == "I;16":
        a = np.array(im)
        return a.astype(np.uint16), "I;16", extra
    if ctype == 3:
        idx = np.array(im)
        pal = np.zeros((256, 3), np.int64)
        p0 = np.frombuffer(plte[0][: len(plte[0]) // 3 * 3], np.uint8).reshape(-1, 3)
        pal[: len(p0)] = p0
        npal = len(p0)
        alpha = np.full(max(npal, 256), 255, np.int64)
        if trns:
            t = np.frombuffer(trns[0], np.uint8)
            alpha[: len(t)] = t
        rgb = pal[idx]
        if mode in ("L", "LA"):
            # ITU-R 601 luma, Pillow's integer formula
            Lc = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
            if mode == "L":
                return Lc.astype(np.uint8), "L", extra
            return np.stack([Lc, alpha[idx]], -1).astype(np.uint8), "LA", extra
        if mode == "RGB":
            return rgb.astype(np.uint8), "RGB", extra
        return np.concatenate([rgb, alpha[idx][..., None]], -1).astype(np.uint8), "RGBA", extra
    if im.mode != mode:
        fail(f"png: pillow mode {im.mode} != {mode}")
    if trns and mode in ("L", "RGB"):  # the image's colour key (section 9)
        key = struct.unpack(">" + "H" * (len(trns[0]) // 2), trns[0])
        extra["transparency"] = key[0] if mode == "L" else key
    return np.array(im), mode, extra


# --------------------------------------------------------------------------- top level


def decode(data, max_pixels=MAX_PIXELS_DEFAULT, log=None):
    data = bytes(data)
    h = parse_header(data, max_pixels)
    W, H = h["W"], h["H"]
    pos = 44 + h["T"] + h["K"] + 4
    need = h["llen"] + h["alen"] + 4
    if len(data) - pos < need:
        fail("truncated payload")
    if len(data) - pos > need:
        fail("trailing bytes after payload CRC")
    lstream = data[pos : pos + h["llen"]]
    astream = data[pos + h["llen"] : pos + h["llen"] + h["alen"]]
    (pcrc,) = struct.unpack_from("<I", data, pos + h["llen"] + h["alen"])
    if crc32(lstream + astream) != pcrc:
        fail("payload CRC mismatch")
    if h["kind"] == 1:
        arr, mode, extra = decode_png(lstream, h)
        extra["header"] = h
        return arr, mode, extra
    mode, qmode, C, tables = h["mode"], h["qmode"], h["C"], h["tables"]
    nplanes = h["nplanes"]
    sizes = [h["ms"][0]] * nplanes if qmode in (0, 1) else h["ms"][:C]
    U = H * W * nplanes
    codec = h["lcodec"]
    if codec in (3, 4):
        if not (1 <= len(lstream) <= U + U // 16 + 64):
            fail("label stream length out of bounds")
        pss = split_label_stream(lstream, nplanes)
        planes = []
        prevX = prevE = None
        for p in range(nplanes):
            if codec == 3:
                if qmode == 0:
                    tk = [tuple(r) for r in tables[0]]
                elif qmode == 1:
                    tk = [(int(v),) for v in tables[0]]
                else:
                    tk = [(int(v),) for v in tables[p]]
                X = c3_plane(pss[p], sizes[p], tk, H, W, p, planes[p - 1] if p else None, log)
            else:
                X, Eres = c4_plane(pss[p], sizes[p], H, W, p, prevX, prevE, log)
                prevX, prevE = X, Eres
            planes.append(X)
    else:
        depths = [depth_for(s) if h["packing"] else 8 for s in sizes]
        U = sum(H * ((W * d + 7) // 8) for d in depths)
        if codec not in (0, 1, 2):
            fail(f"unknown codec id {codec}")
        buf = decompress(codec, lstream, U)
        planes = unpack_planes(buf, H, W, depths)
    for p, X in enumerate(planes):
        if int(X.max()) >= sizes[p]:
            fail("label past the table")
    alpha_plane = None
    if h["alpha"] == 1:
        ab = decompress(h["acodec"], astream, W * H)
        alpha_plane = np.frombuffer(ab, np.uint8).reshape(H, W)
    extra = {"header": h, "planes": planes}
    if mode == "P":
        pal = tables[0]
        extra["palette"] = pal[:, :3]
        extra["palette_alpha"] = pal[:, 3] if h["alpha"] == 2 else None
        return planes[0].copy(), "P", extra
    if qmode == 0:
        samples = tables[0][planes[0]]  # H W C
    elif qmode == 1:
        samples = np.stack([tables[0][pl] for pl in planes], -1)
    else:
        samples = np.stack([tables[c][planes[c]] for c in range(C)], -1)
    if alpha_plane is not None:
        samples = np.concatenate([samples, alpha_plane[..., None]], -1)
    samples = samples.astype(np.uint8)
    if h["key"] is not None:  # the image's transparent colour (section 7)
        extra["transparency"] = h["key"][0] if mode == "L" else h["key"]
    if mode == "1":
        return samples[..., 0] != 0, "1", extra
    if mode == "L":
        return samples[..., 0], "L", extra
    return samples, mode, extra


def decode_file(path, **kw):
    with open(path, "rb") as f:
        return decode(f.read(), **kw)


if __name__ == "__main__":
    import sys

    for p in sys.argv[1:]:
        try:
            a, md, ex = decode_file(p)
            print(p, md, a.shape, a.dtype)
        except KqError as e:
            print(p, "ERROR", e)
