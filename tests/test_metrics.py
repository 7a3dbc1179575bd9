from __future__ import annotations

import math

import numpy as np
import pytest

from kquant_codec import absolute_error, l2_error, mse, psnr, squared_error


def test_no_uint8_wraparound():
    a = np.array([[0, 255]], dtype=np.uint8)
    b = np.array([[255, 0]], dtype=np.uint8)
    assert absolute_error(a, b) == 510
    assert squared_error(a, b) == 2 * 255**2
    assert l2_error(a, b) == pytest.approx(math.sqrt(2) * 255)
    assert mse(a, b) == 255**2


def test_against_float_reference():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    d = a.astype(float) - b.astype(float)
    assert absolute_error(a, b) == np.abs(d).sum()
    assert l2_error(a, b) == pytest.approx(np.linalg.norm(d.ravel()))
    assert mse(a, b) == pytest.approx((d**2).mean())
    assert psnr(a, b) == pytest.approx(10 * np.log10(255**2 / (d**2).mean()))


def test_identical_images_have_infinite_psnr():
    a = np.zeros((3, 3), np.uint8)
    assert psnr(a, a) == math.inf and mse(a, a) == 0.0


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="differ in shape"):
        mse(np.zeros((2, 2)), np.zeros((2, 3)))


def test_palette_and_bilevel_images_are_compared_by_what_they_show(china_small):
    """A P image by its colours, not its palette indices (quantizing a P image keeps the indices and changes
    the colours: index-wise it would look lossless); "1" as 0/255, on the 0..255 scale of every other mode."""
    from PIL import Image

    from kquant_codec import KMeansQuantize

    pal = china_small.quantize(64)
    four = pal.filter(KMeansQuantize(4))
    assert np.array_equal(np.asarray(pal), np.asarray(four))  # same indices...
    expected = mse(pal.convert("RGB"), four.convert("RGB"))
    assert expected > 0 and mse(pal, four) == expected  # ...other colours
    assert mse(pal, pal.convert("RGB")) == 0
    rgba = pal.copy()
    rgba.info["transparency"] = 0
    assert np.asarray(rgba.convert("RGBA")).shape[2] == 4 and mse(rgba, rgba.convert("RGBA")) == 0
    assert mse(rgba, rgba.convert("RGB")) == 0  # compared in the other image's mode
    assert mse(pal, np.asarray(pal)) == 0  # with an array: both as np.asarray gives them
    black, white = Image.new("1", (4, 2), 0), Image.new("1", (4, 2), 1)
    assert mse(white, np.asarray(white)) == 0
    assert mse(black, white) == 255**2 and absolute_error(black, white) == 8 * 255
    assert psnr(black, white) == 0.0


def mean_squared_error(a, b):
    """The reference: numpy in float64 (what skimage.metrics computes)."""
    return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def peak_signal_noise_ratio(a, b, data_range):
    return float(10 * np.log10(data_range**2 / mean_squared_error(a, b)))


def test_float_samples_keep_their_fractions_and_need_a_peak():
    """Floats are compared in float64 (they were truncated to integers); numpy is the reference."""
    rng = np.random.default_rng(1)
    a = rng.random((20, 30, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    assert mse(a, b) == pytest.approx(mean_squared_error(a, b), rel=1e-12)
    assert absolute_error(a, b) == pytest.approx(np.abs(a - b).sum(), rel=1e-12)
    assert squared_error(a, b) == pytest.approx(((a - b) ** 2).sum(), rel=1e-12)
    assert psnr(a, b, peak=1.0) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), rel=1e-12)
    with pytest.raises(ValueError, match="needs peak="):
        psnr(a, b)
    from PIL import Image

    f1, f2 = Image.fromarray(a[:, :, 0].astype(np.float32)), Image.fromarray(b[:, :, 0].astype(np.float32))
    assert mse(f1, f2) == pytest.approx(mean_squared_error(np.asarray(f1), np.asarray(f2)), rel=1e-6)


def test_the_peak_follows_the_sample_type():
    from PIL import Image

    rng = np.random.default_rng(2)
    a = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
    b = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
    want = peak_signal_noise_ratio(a, b, data_range=65535)
    assert psnr(a, b) == pytest.approx(want, rel=1e-12)
    assert psnr(Image.fromarray(a), Image.fromarray(b)) == pytest.approx(want, rel=1e-12)  # I;16 images
    bits_a, bits_b = rng.random((8, 8)) < 0.5, rng.random((8, 8)) < 0.5
    assert psnr(bits_a, bits_b) == pytest.approx(10 * np.log10(1 / np.mean(bits_a != bits_b)), rel=1e-12)
    assert psnr(a.astype(np.int64), b.astype(np.int64), peak=65535) == pytest.approx(want, rel=1e-12)
    for x, y in [(a.astype(np.int64), b.astype(np.int64)), (a.astype(np.uint8), b), (bits_a, bits_a.astype(np.uint8))]:
        with pytest.raises(ValueError, match="needs peak="):
            psnr(x, y)
    for bad in (0, -1.0, math.inf, math.nan, "255", True):
        with pytest.raises(ValueError, match="peak must be"):
            psnr(a, b, peak=bad)
    with pytest.raises(ValueError, match="dtype"):
        mse(np.array(["a"]), np.array(["b"]))


def test_big_endian_16_bit_has_the_16_bit_peak():
    a = np.arange(64, dtype=">u2").reshape(8, 8) * 1000
    b = a[::-1].copy()
    assert psnr(a, b) == pytest.approx(psnr(a.astype(np.uint16), b.astype(np.uint16)), rel=1e-12)
