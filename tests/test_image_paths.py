"""Shortcuts taken for large images give exactly what the plain paths give.

- ``pixels._array`` copies large images out of Pillow in strips (less peak memory than ``np.asarray``);
- ``QuantizedImage.to_image`` builds rgb results through a palette image instead of an (H, W, 3) array;
- ``KMeansQuantizer.transform`` maps values through one table per channel in the 1-D modes.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import kquant_codec as kq
from kquant_codec import KMeansQuantizer, pixels
from kquant_codec.pixels import join_image

from .conftest import synthetic_images


@pytest.mark.parametrize("mode", ["1", "L", "LA", "RGB", "RGBA", "CMYK", "YCbCr"])
def test_strip_copy_equals_asarray(monkeypatch, china, mode):
    img = china.crop((11, 7, 104, 68)).convert(mode)  # 93 x 61: strips do not divide the height
    want = np.asarray(img)
    want = want[:, :, None] if want.ndim == 2 else want
    monkeypatch.setattr(pixels, "_STRIP_PIXELS", 200)  # every image is "large": 2 rows per strip
    got = pixels._array(img)
    assert got.dtype == np.uint8 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    parts = pixels.split_image(img)
    assert parts.colour.flags.c_contiguous


@pytest.mark.parametrize("alpha", ["keep", "quantize"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "L", "CMYK"])
def test_to_image_equals_the_centroid_lookup(china, mode, alpha):
    img = china.crop((200, 100, 330, 190)).convert(mode)
    if mode in ("RGBA", "LA"):
        img.putalpha(Image.fromarray(np.asarray(img.convert("L"))[:, ::-1].copy()))
    fitted = kq.fit_image(img, 9, alpha=alpha)
    want = join_image(fitted.quantizer.reconstruct(fitted.labels), fitted.alpha, fitted.mode)
    got = fitted.to_image()
    assert got.mode == want.mode == img.mode and got.size == img.size
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("name", sorted(synthetic_images()))
@pytest.mark.parametrize("mode", ["global", "channel"])
def test_one_dimensional_transform_equals_reconstruct_of_predict(name, mode):
    img = synthetic_images()[name]
    arr = pixels.split_image(img, alpha="quantize").colour
    q = KMeansQuantizer(5, mode=mode).fit(arr)
    np.testing.assert_array_equal(q.transform(arr), q.reconstruct(q.predict(arr)))
    two_d = arr[:, :, 0]
    q = KMeansQuantizer(3, mode=mode).fit(two_d)
    out = q.transform(two_d)
    assert out.shape == two_d.shape
    np.testing.assert_array_equal(out, q.reconstruct(q.predict(two_d))[:, :, 0])
