"""Codec 3 (the context-modelling label coder, spec section 16): exact round trips for every table size and
quantization mode, the spec's worked example, corrupt streams, determinism, lazy numba import.

References are the labels themselves (exact round trips) and the hex bytes written in the spec."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kquant_codec as kq
from kquant_codec import container as c
from kquant_codec.encoder import encode_image

SPEC = Path(__file__).resolve().parent.parent / "spec" / "kq-format.md"


def _structured(h: int, w: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth diagonal bands with a copied row, a flat block and some noise: every coding path is used."""
    y, x = np.mgrid[0:h, 0:w]
    lab = ((x + 2 * y) * m // (w + 2 * h)).astype(np.int64)
    noise = rng.random((h, w)) < 0.1
    lab[noise] = rng.integers(0, m, int(noise.sum()))
    lab[h // 2] = lab[1]
    lab[2:5, 3:9] = lab[2, 3]
    return lab.clip(0, m - 1).astype(np.uint8)


def _native_file(labels: np.ndarray, header: c.KqHeader) -> bytes:
    stream = c.labels_to_context_stream(labels, header)
    return c.pack_file(replace(header, label_codec=c.CODEC_CONTEXT, label_length=len(stream)), stream)


def _rgb_header(h: int, w: int, table: np.ndarray) -> c.KqHeader:
    return c.KqHeader(w, h, "RGB", channels=3, table_sizes=(len(table),), tables=table.tobytes())


def test_every_table_size_round_trips_through_a_kq_file():
    rng = np.random.default_rng(7)
    for m in range(1, 257):
        table = rng.integers(0, 256, (m, 3)).astype(np.uint8)
        for lab in ((rng.random((9, 13)) * m).astype(np.uint8), _structured(12, 17, m, rng)):
            data = _native_file(lab, _rgb_header(*lab.shape, table))
            assert kq.kq_info(data).codec == "context"
            back = kq.read_kq(data)
            assert np.array_equal(back.labels, lab), m
            assert np.array_equal(np.asarray(back.to_image()), table[lab])


@pytest.mark.parametrize("mode", ["rgb", "global", "channel"])
def test_every_quant_mode_saves_with_codec_3_and_opens_exactly(tmp_path, mode):
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:96, 0:128]
    rgb = np.dstack([x * 2, y * 2, (x + y)]).astype(np.uint8) + rng.integers(0, 3, (96, 128, 3)).astype(np.uint8)
    img = Image.fromarray(rgb)
    path = tmp_path / "x.kq"
    img.save(path, k=16, mode=mode)
    info = kq.kq_info(path)
    assert info.quant_mode == mode and info.codec == "context"
    expected = np.asarray(img.filter(kq.KMeansQuantize(16, mode)))
    with Image.open(path) as back:
        assert np.array_equal(np.asarray(back), expected)


def test_rgba_and_p_images_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    lab = _structured(40, 50, 20, rng)
    palette = rng.integers(0, 256, (20, 3)).astype(np.uint8)
    p = Image.fromarray(lab, "P")
    p.putpalette(palette.tobytes())
    data = encode_image(p)
    assert np.array_equal(np.asarray(kq.read_kq(data).to_image()), lab)
    rgba = np.dstack([palette[lab], (lab * 12).astype(np.uint8)])
    for alpha in ("keep", "quantize"):
        data = encode_image(Image.fromarray(rgba, "RGBA"), alpha=alpha)
        assert np.array_equal(np.asarray(kq.read_kq(data).to_image()), rgba)


def test_spec_worked_example_decodes():
    text = SPEC.read_text()
    block = re.search(r"<!-- codec3-example: begin -->\n```text\n(.*?)```\n<!-- codec3-example: end -->", text, re.S)
    stream = bytes.fromhex(block.group(1).replace("\n", " "))
    header = c.KqHeader(4, 3, "L", channels=1, table_sizes=(3,), tables=bytes([0, 128, 255]))
    expected = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 0, 1, 1]], np.uint8)
    assert np.array_equal(c.context_stream_to_labels(stream, header), expected)
    from kquant_codec import label_coder

    assert label_coder.encode_plane(expected, 3) == stream  # label values as keys (flag 0)


def _with_stream(data: bytes, header: c.KqHeader, stream: bytes) -> bytes:
    """The file with another label stream, its length field and payload CRC recomputed (so the CRC passes)."""
    h = replace(header, label_length=len(stream))
    return c.pack_file(h, stream)


def test_corrupt_and_truncated_streams_raise_kq_format_error():
    rng = np.random.default_rng(5)
    lab = _structured(40, 60, 37, rng)
    table = rng.integers(0, 256, (37, 3)).astype(np.uint8)
    header = _rgb_header(40, 60, table)
    good = c.labels_to_context_stream(lab, header)
    base = replace(header, label_codec=c.CODEC_CONTEXT)
    outcomes = {"error": 0, "ok": 0}
    mutants = [good[:n] for n in range(0, len(good), max(1, len(good) // 40))]
    mutants += [good + b"\0\0", good[:-1], b"\2" + good[1:], good[:1] + b"\4" + good[2:], good[:2] + b"\xff" * 8]
    for _ in range(300):
        bad = bytearray(good)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(0, len(bad)))] ^= 1 << int(rng.integers(0, 8))
        mutants.append(bytes(bad))
    for stream in mutants:
        if not stream:
            continue
        try:
            out = kq.read_kq(_with_stream(b"", base, stream)).labels
        except kq.KqFormatError:
            outcomes["error"] += 1
        else:  # a mutation may still decode; the labels are then valid for the table
            assert out.shape == (40, 60) and int(out.max()) < 37
            outcomes["ok"] += 1
    assert outcomes["error"] > len(mutants) * 0.9


def test_codec_3_header_rules():
    rng = np.random.default_rng(6)
    lab = _structured(8, 8, 3, rng)
    header = replace(_rgb_header(8, 8, np.zeros((3, 3), np.uint8) + np.arange(3, dtype=np.uint8)[:, None]))
    data = _native_file(lab, header)
    packed = bytearray(data)
    packed[14] = 1
    struct.pack_into("<I", packed, 44 + 9, zlib.crc32(packed[: 44 + 9]))
    with pytest.raises(kq.KqFormatError, match="packing 0"):
        kq.read_kq(bytes(packed))
    with pytest.raises(kq.KqFormatError, match="label planes"):
        c.decompress(b"\1\0\1\0\0\0\0", c.CODEC_CONTEXT, 64)


def test_encoder_is_deterministic_with_codec_3():
    y, x = np.mgrid[0:96, 0:128]
    img = Image.fromarray(np.dstack([x * 2, y * 2, (x + y)]).astype(np.uint8))
    first = encode_image(img, k=64)
    assert kq.kq_info(first).codec == "context"
    assert encode_image(img, k=64) == first


def test_import_does_not_import_numba():
    code = "import sys, kquant_codec; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("with_ref", [False, True])
def test_many_stripes_on_threads_match_one_thread(monkeypatch, with_ref):
    """Stripes are coded on a thread pool; the bytes and the decoded labels must not depend on it."""
    from kquant_codec import label_coder as lc

    rng = np.random.default_rng(5)
    lab = _structured(53, 37, 40, rng)
    ref = _structured(53, 37, 40, np.random.default_rng(6)) if with_ref else None
    keys = rng.integers(0, 256, (40, 3)).astype(np.uint8)
    threaded = lc.encode_plane(lab, 40, keys, ref, stripe_rows=4)  # 14 stripes
    assert np.array_equal(lc.decode_plane(threaded, 53, 37, 40, keys, ref), lab)
    monkeypatch.setattr(lc, "_map_stripes", lambda fn, items: [fn(x) for x in items])
    assert lc.encode_plane(lab, 40, keys, ref, stripe_rows=4) == threaded
    assert np.array_equal(lc.decode_plane(threaded, 53, 37, 40, keys, ref), lab)


def test_rows_repeated_at_every_distance_round_trip():
    """Row copies at distances 1..70 (the copied row is then every later row's neighbour above), in a stripe
    large enough for the mapped symbol buffer (>= 2^20 symbol slots) and in small stripes."""
    from kquant_codec import label_coder as lc

    rng = np.random.default_rng(11)
    h, w, m = 640, 900, 50
    fresh = rng.integers(0, m, (h, w)).astype(np.uint8)
    fresh[:, ::3] = fresh[:, 1::3]  # some runs, so candidates hit as well as escape
    lab = fresh.copy()
    for y in range(1, h):
        if rng.random() < 0.5:
            lab[y] = lab[y - int(rng.integers(1, min(y, 70) + 1))]
    assert 2 * h * w + 8 * h + 16 >= 1 << 20  # one stripe: the mapped-size buffer
    for rows in (None, 7):
        data = lc.encode_plane(lab, m, stripe_rows=rows)
        assert np.array_equal(lc.decode_plane(data, h, w, m, None, None), lab)


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_escape_base_search_matches_a_scan_of_every_label(channels):
    """The pruned midpoint search gives the label a scan of all labels gives: least squared distance of the
    doubled keys to keys[L] + keys[T], ties to the lower label (repeated keys and equal channel-0 keys
    included)."""
    from kquant_codec import label_coder as lc

    rng = np.random.default_rng(channels)
    m = 90
    keys = rng.integers(0, 256, (m, channels)).astype(np.int32)
    keys[rng.integers(0, m, 20)] = keys[rng.integers(0, m, 20)]  # repeated rows: ties
    keys[:30, 0] = keys[30:60, 0]  # many equal channel-0 keys
    ksort = lc._key_tables(keys)[2]
    wide = keys.astype(np.int64)
    for L in range(m):
        for T in range(0, m, 7):
            dist = (((wide[L] + wide[T])[None, :] - 2 * wide) ** 2).sum(1)
            assert lc._midpoint_label(keys, ksort, L, T) == int(np.argmin(dist))


def _copying_plane(h: int, w: int, m: int, seed: int) -> np.ndarray:
    """Diagonal bands with 15% noise, and from row 3 on a third of the rows copies of one 1-9 rows up."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    lab = ((x + 2 * y) * m // (w + 2 * h)).astype(np.int64)
    noise = rng.random((h, w)) < 0.15
    lab[noise] = rng.integers(0, m, int(noise.sum()))
    lab = lab.clip(0, m - 1).astype(np.uint8)
    for r in range(3, h):
        if rng.random() < 0.3:
            lab[r] = lab[r - int(rng.integers(1, min(r, 9) + 1))]
    return lab


def test_codec_3_bytes_are_those_of_the_earlier_reference_encoder():
    """Encoder and decoder share one kernel, so a neighbourhood mistake made on both sides would still
    round-trip. These streams (keys, a reference plane, stripes of 5 and 1 rows, row copies, escapes) must be
    byte for byte what the reference encoder wrote at commit a9114e4, before its neighbourhood became a ring
    of three rows and its rANS pass wrote words in place (sha256 of the length-prefixed streams, computed
    with that commit's code)."""
    import hashlib

    from kquant_codec import label_coder as lc

    h, w, m = 61, 47, 37
    lab, ref = _copying_plane(h, w, m, 1), _copying_plane(h, w, m, 2)
    keys = np.random.default_rng(3).integers(0, 256, (m, 3)).astype(np.uint8)
    digest = hashlib.sha256()
    for kk, rr, rows in ((None, None, None), (keys, None, None), (keys, ref, None), (keys, ref, 5), (None, ref, 1)):
        data = lc.encode_plane(lab, m, kk, rr, stripe_rows=rows)
        digest.update(len(data).to_bytes(4, "little") + data)
        assert np.array_equal(lc.decode_plane(data, h, w, m, kk, rr), lab)
    assert digest.hexdigest() == "3dcdf7b98ec8b3a35d0dea63eba3153a8f2c68b9658e10b658207800a654dd0a"


def test_keys_outside_0_to_65535_are_refused():
    from kquant_codec import label_coder as lc

    lab = np.zeros((2, 2), np.uint8)
    for bad in (np.array([[0], [70000]]), np.array([[-1], [3]]), np.array([[0.5], [1.0]])):
        with pytest.raises(ValueError, match="keys must be integers"):
            lc.encode_plane(lab, 2, bad)


def _reference_rans(st: np.ndarray, fr: np.ndarray) -> list[int]:
    """rANS of spec 16: 32-bit state from 2^16, 16-bit words, 15-bit frequencies; symbols coded last to first,
    words read by the decoder in the reverse of their emission, after the final state's two halves."""
    x, words = 1 << 16, []
    for start, freq in zip(reversed(st.tolist()), reversed(fr.tolist()), strict=True):
        while x >= freq << 17:
            words.append(x & 0xFFFF)
            x >>= 16
        x = ((x // freq) << 15) + x % freq + start
    return [x >> 16, x & 0xFFFF, *reversed(words)]


def test_rans_word_stream_matches_a_plain_reference():
    """The in-place rANS pass (words kept in the spent symbol slots) gives the stream of a plain rANS coder."""
    from kquant_codec import label_coder as lc

    rng = np.random.default_rng(3)
    for n in (1, 2, 1000, 50000):
        fr = rng.integers(1, 1 << 15, n).astype(np.uint16)
        fr[rng.random(n) < 0.3] = 1  # rare symbols: long words runs
        st = (rng.random(n) * ((1 << 15) - fr.astype(np.int64) + 1)).astype(np.uint16)
        expected = _reference_rans(st, fr)
        assert lc._rans_encode(st.copy(), fr.copy(), n).tolist() == expected


def test_a_corrupt_middle_stripe_is_named():
    from kquant_codec import label_coder as lc

    lab = _structured(40, 30, 16, np.random.default_rng(8))
    data = bytearray(lc.encode_plane(lab, 16, None, None, stripe_rows=10))
    clean = lc.decode_plane(bytes(data), 40, 30, 16, None, None)
    assert np.array_equal(clean, lab)
    # Stripe lengths follow the 3-byte header (version, flags, stripe rows): find stripe 2's words and flip them.
    pos, lens = 3, []
    for _ in range(3):
        n, pos = lc._read_uvarint(bytes(data), pos)
        lens.append(n)
    start = pos + 2 * (lens[0] + lens[1])
    for i in range(start, start + 2 * lens[2]):
        data[i] ^= 0x5A
    with pytest.raises(ValueError, match="stripe 2"):
        lc.decode_plane(bytes(data), 40, 30, 16, None, None)


def test_first_compile_is_announced_once_then_cached(tmp_path):
    """A cold numba cache makes the first decode take seconds: it must say so on stderr, and only then."""
    path = tmp_path / "x.kq"
    Image.fromarray(_structured(16, 16, 8, np.random.default_rng(2))).convert("L").save(path, mode="global", k=8)
    assert kq.kq_info(path).codec == "context"
    # numba's JIT (no install-time kernels) with an empty cache
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "KQUANT_KERNELS": "jit"}
    code = f"from PIL import Image; import kquant_codec; Image.open({str(path)!r}).load()"
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert "compiling the .kq coder kernel" in runs[0].stderr
    assert "compiling" not in runs[1].stderr


def test_multi_stripe_jobs_hand_freed_memory_back_first(monkeypatch):
    """A job of several stripes calls malloc_trim (when the C library has it) once before its first stripe;
    results in order."""
    from kquant_codec import _heap, label_coder

    calls = []
    monkeypatch.setattr(_heap, "_TRIM", [calls.append])
    assert label_coder._map_stripes(lambda x: x * x, [3, 1, 2]) == [9, 1, 4]
    assert calls == [0]
    assert label_coder._map_stripes(lambda x: -x, [5]) == [-5]  # one stripe: nothing to hand back
    assert calls == [0]
    monkeypatch.setattr(_heap, "_TRIM", [None])  # no malloc_trim (not glibc): plain calls
    assert label_coder._map_stripes(lambda x: x + 1, [1, 2]) == [2, 3]


def test_uvarints_are_at_most_six_bytes():
    """Spec 16.1: a uvarint has at most 6 bytes. A 7-byte one is refused even when its last group is zero (the
    value would fit), and a stream whose stripe height is written that way is refused as a whole."""
    from kquant_codec import label_coder as lc

    assert lc._read_uvarint(bytes([0x86, 0x80, 0x80, 0x80, 0x80, 0x00]), 0) == (6, 6)
    assert lc._read_uvarint(lc._uvarint((1 << 40) - 1), 0) == ((1 << 40) - 1, 6)
    with pytest.raises(ValueError, match="longer than 6 bytes"):
        lc._read_uvarint(bytes([0x86, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]), 0)
    lab = _structured(12, 10, 4, np.random.default_rng(3))
    data = lc.encode_plane(lab, 4, None, None)
    assert data[2] == 12  # stripe height, one byte
    padded = data[:2] + bytes([0x8C, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00]) + data[3:]
    with pytest.raises(ValueError, match="longer than 6 bytes"):
        lc.decode_plane(padded, 12, 10, 4, None, None)
    five = data[:2] + bytes([0x8C, 0x80, 0x80, 0x80, 0x00]) + data[3:]  # 5 bytes: allowed, same value
    assert np.array_equal(lc.decode_plane(five, 12, 10, 4, None, None), lab)
