"""The spec against a second implementation: ``tests/spec_reference.py`` is a decoder (and a codec 3/4 encoder)
written from ``spec/kq-format.md`` alone, by a team member who did not read ``kquant_codec``'s source. It is
pure Python and slow, so the images here are small.

- Every corpus file and every hostile or once-broken input: both decoders give the same pixels, or both refuse.
- Files written by our encoder in every image mode, quantization mode, alpha handling and codec: the reference
  decodes them to what ``Image.open`` gives.
- Codec 3 and 4 plane streams: our encoder and the reference encoder write the same bytes for the same labels,
  flags and stripe heights (so the spec pins every model update, not only what a decoder can check).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kquant_codec as kq
from kquant_codec import label_coder, predictive_coder

sys.path.insert(0, str(Path(__file__).resolve().parent))
import spec_reference as reference  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted((ROOT / "fuzz" / "corpus").glob("*.kq")) + sorted((ROOT / "tests" / "fuzz_regressions").glob("*.kq"))


def ours(data: bytes) -> tuple[np.ndarray, str, Image.Image] | None:
    """Our decoder's pixels, mode and image, or None when it refuses the bytes."""
    try:
        img = Image.open(io.BytesIO(data), formats=["KQ"])
        img.load()
    except (OSError, SyntaxError, Image.DecompressionBombError):
        return None
    return np.asarray(img), img.mode, img


def theirs(data: bytes) -> tuple[np.ndarray, str, dict] | None:
    try:
        return reference.decode(data)
    except reference.KqError:
        return None


def assert_same(data: bytes, name: str) -> bool:
    """Both decoders agree on ``data``; returns whether it decoded."""
    a, b = ours(data), theirs(data)
    assert (a is None) == (b is None), f"{name}: ours {'refuses' if a is None else 'decodes'}, the reference not"
    if a is None:
        return False
    assert a[1] == b[1], f"{name}: mode {a[1]} vs {b[1]}"
    assert a[0].dtype == b[0].dtype and np.array_equal(a[0], b[0]), f"{name}: pixels differ"
    if a[1] in ("L", "RGB"):
        assert a[2].info.get("transparency") == b[2].get("transparency"), f"{name}: colour key"
    if a[1] == "P":
        entries = b[2]["palette"]
        assert np.array_equal(np.asarray(a[2].getpalette(), np.uint8).reshape(-1, 3)[: len(entries)], entries)
        assert np.array_equal(np.asarray(a[2].convert("RGBA")), _reference_rgba(b[0], b[2])), f"{name}: P alpha"
    return True


def _reference_rgba(indices: np.ndarray, extra: dict) -> np.ndarray:
    """A P image's RGBA pixels from the reference's palette and alpha (native: per-entry alpha; PNG payload: the
    tRNS bytes, or one transparent index)."""
    palette = extra["palette"]
    alpha = np.full(len(palette), 255, np.uint8)
    if extra.get("palette_alpha") is not None:
        alpha = np.asarray(extra["palette_alpha"], np.uint8)
    elif isinstance(extra.get("transparency"), bytes):
        alpha[: len(extra["transparency"])] = np.frombuffer(extra["transparency"], np.uint8)
    elif isinstance(extra.get("transparency"), int):
        alpha[extra["transparency"]] = 0
    return np.concatenate([palette[indices], alpha[indices][..., None]], -1)


def test_every_corpus_and_regression_file_gets_the_same_verdict():
    assert len(FILES) > 150
    decoded = sum(assert_same(path.read_bytes(), path.name) for path in FILES)
    assert 100 < decoded < len(FILES)  # both kinds are present


def _photo(width: int, height: int) -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg")[150 : 150 + height, 200 : 200 + width])


def _synthetic(width: int, height: int) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    arr = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), (xx + yy) % 7 * 30], -1).astype(np.uint8)
    arr[: height // 3, : width // 2] = (10, 200, 30)  # a flat block: runs, row copies
    return Image.fromarray(arr)


def _cases():
    photo, synth = _photo(36, 28), _synthetic(33, 21)
    rng = np.random.default_rng(5)
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, (28, 36), dtype=np.uint8)))
    for name, img in (("photo", photo), ("synthetic", synth)):
        for k in (2, 16, 256):
            for mode in ("rgb", "global", "channel"):
                yield f"{name}-{mode}-k{k}", img, {"k": k, "mode": mode}
        yield f"{name}-lossless", img, {}
        yield f"{name}-native", img, {"k": 16, "fallback": False}
    yield "rgba-keep", rgba, {"k": 16, "alpha": "keep"}
    yield "rgba-quantize", rgba, {"k": 16, "alpha": "quantize"}
    yield "la-channel", rgba.convert("LA"), {"k": 8, "mode": "channel"}
    yield "l-global", photo.convert("L"), {"k": 5, "mode": "global"}
    yield "p", photo.quantize(40), {}
    yield "p-transparent", rgba.quantize(12), {}
    p_alpha = photo.quantize(6)
    p_alpha.info["transparency"] = bytes([0, 90, 255, 255, 30, 255])
    yield "p-alpha-native", p_alpha, {"fallback": False}
    yield "p-alpha", p_alpha, {}
    keyed_l, keyed_rgb = photo.convert("L"), photo.copy()
    keyed_l.info["transparency"] = int(np.asarray(keyed_l)[0, 0])
    keyed_rgb.info["transparency"] = photo.filter(kq.KMeansQuantize(8)).getpixel((0, 0))  # in use after k=8
    yield "l-colour-key", keyed_l, {}
    yield "l-colour-key-native", keyed_l, {"fallback": False}
    yield "rgb-colour-key", keyed_rgb, {"k": 8}
    keyed_channel = photo.copy()
    keyed_channel.info["transparency"] = photo.filter(kq.KMeansQuantize(8, "channel")).getpixel((1, 0))
    yield "rgb-colour-key-channel", keyed_channel, {"k": 8, "mode": "channel"}
    yield "1", photo.convert("1"), {}
    yield "cmyk", photo.convert("CMYK"), {"k": 6, "mode": "channel"}
    yield "i16", Image.fromarray((np.arange(28 * 36, dtype=np.uint16) * 61).reshape(28, 36)), {}


CASES = list(_cases())


@pytest.mark.parametrize("name, img, options", CASES, ids=[c[0] for c in CASES])
def test_the_reference_decodes_what_we_write(name, img, options):
    buf = io.BytesIO()
    img.save(buf, format="KQ", **options)
    assert assert_same(buf.getvalue(), name)


def test_the_cases_cover_every_codec_and_payload():
    codecs, payloads, keyed = set(), set(), set()
    for _, img, options in CASES:
        data = kq.encode_image(img, **options)
        info = kq.kq_info(data)
        codecs.add(info.codec)
        payloads.add(info.payload)
        if "transparency" in kq.read_kq(data).to_image().info and img.mode in ("L", "RGB"):
            keyed.add((img.mode, info.payload, info.quant_mode))
    assert {"context", "predictive", "png"} <= codecs and payloads == {"native", "png"}
    assert {("L", "png", None), ("RGB", "native", "rgb"), ("RGB", "native", "channel")} <= keyed
    assert any(mode == "L" and payload == "native" for mode, payload, _ in keyed)


def _plane(h: int, w: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth labels with specks, flat rows and repeated rows: every kind of symbol both codecs have."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(xx / 4 + rng.random() * 6) + np.cos(yy / 3) + 2) / 4 * (m - 1)
    noise = (rng.random((h, w)) < 0.15) * rng.integers(-3, 4, (h, w))
    lab = np.clip(np.rint(base + noise), 0, m - 1).astype(np.uint8)
    lab[h // 2] = rng.integers(0, m)
    for y in range(2, h):
        if rng.random() < 0.15:
            lab[y] = lab[y - int(rng.integers(1, min(y, 4) + 1))]
    return lab


@pytest.mark.parametrize("seed", range(6))
def test_codec_3_streams_are_the_reference_encoders_bytes(seed):
    rng = np.random.default_rng(seed)
    h, w = 13, 17
    m = int(rng.choice([2, 5, 40, 256]))
    first, second = _plane(h, w, m, rng), _plane(h, w, m, rng)
    table = rng.integers(0, 256, (m, 3)).astype(np.uint8)
    stripe = int(rng.choice([1, 4, h]))
    for keys, ref, flags in ((None, None, 0), (table, None, 1), (None, first, 2), (table, first, 3)):
        ours_ = label_coder.encode_plane(second, m, keys, ref, stripe_rows=stripe)
        key_rows = [tuple(int(v) for v in r) for r in table] if keys is not None else None
        theirs_ = reference.c3_encode_plane(second.astype(np.int64), m, key_rows, flags, ref, stripe)
        assert ours_ == theirs_, f"m={m} flags={flags} S={stripe}"


@pytest.mark.parametrize("seed", range(6))
def test_codec_4_streams_are_the_reference_encoders_bytes(seed):
    rng = np.random.default_rng(100 + seed)
    h, w = 13, 17
    m = int(rng.choice([2, 9, 60, 256]))
    first, second = _plane(h, w, m, rng), _plane(h, w, m, rng)
    stripe = int(rng.choice([1, 5, h]))
    for exact in (False, True):
        flags = 2 if exact else 0
        ours_first, residuals = predictive_coder.encode_plane(first, m, None, stripe_rows=stripe, exact=exact)
        theirs_first, their_residuals = reference.c4_encode_plane(first, m, flags, None, None, stripe)
        assert ours_first == theirs_first, f"m={m} exact={exact} S={stripe}"
        assert np.array_equal(residuals, their_residuals)
        ours_second, _ = predictive_coder.encode_plane(second, m, (first, residuals), stripe_rows=stripe, exact=exact)
        theirs_second, _ = reference.c4_encode_plane(second, m, flags | 1, first, their_residuals, stripe)
        assert ours_second == theirs_second, f"m={m} exact={exact} S={stripe}, reference plane"


@pytest.mark.parametrize("codec", [3, 4])
def test_a_plane_of_too_many_stripes_is_refused_by_both(codec):
    """Spec 16.2: at most max(64, H W / 1024) stripes. 200,000 five-pixel stripes (a 1 MB file) took ours 30 s
    and a 16.7-megapixel one ran out of memory; each stripe sets up its models afresh."""

    h, s = 1_000_000, 5
    if codec == 3:
        one = label_coder.encode_plane(np.zeros((s, 1), np.uint8), 2, None, None, stripe_rows=s)
        ours, theirs = label_coder.decode_plane, reference.c3_plane
    else:
        one = predictive_coder.encode_plane(np.zeros((s, 1), np.uint8), 2, None)[0]
        ours, theirs = predictive_coder.decode_plane, reference.c4_plane
    words = one[3:]
    stream = one[:3] + label_coder._uvarint(len(words) // 2) * (h // s - 1) + words * (h // s)
    with pytest.raises(ValueError, match="200000 stripes of 5 rows: at most 976"):
        ours(stream, h, 1, 2, None, None) if codec == 3 else ours(stream, h, 1, 2, None)
    with pytest.raises(reference.KqError, match="too many stripes"):
        theirs(stream, 2, None, h, 1, 0, None) if codec == 3 else theirs(stream, 2, h, 1, 0, None, None)
    # the encoder never writes more: asked for 5-row stripes, it takes the fewest rows the rule allows
    fine = label_coder.encode_plane(np.zeros((h // 100, 100), np.uint8), 2, None, None, stripe_rows=s)
    assert label_coder._read_uvarint(fine, 2)[0] == -(-(h // 100) // label_coder.max_stripes(h // 100, 100))
