"""Shared test images: the real photos that ship inside scikit-learn, and small synthetic ones."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def china() -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg"))


@pytest.fixture(scope="session")
def flower() -> Image.Image:
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("flower.jpg"))


@pytest.fixture(scope="session")
def china_small(china) -> Image.Image:
    """china.jpg cropped to 96x64: a real photo small enough for brute-force references."""
    return china.crop((300, 200, 396, 264))


def synthetic_images() -> dict[str, Image.Image]:
    """Small images of every supported mode and awkward shape."""
    rng = np.random.default_rng(1234)
    grad = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (16, 1))
    rgb_noise = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    rgba = np.dstack([rgb_noise, rng.integers(0, 256, (17, 23), dtype=np.uint8)])
    images = {
        "flat_rgb": Image.new("RGB", (9, 7), (12, 200, 99)),
        "one_pixel": Image.new("RGB", (1, 1), (1, 2, 3)),
        "strip_1xN": Image.fromarray(rng.integers(0, 256, (1, 50, 3), dtype=np.uint8)),
        "strip_Nx1": Image.fromarray(rng.integers(0, 256, (50, 1, 3), dtype=np.uint8)),
        "gradient_L": Image.fromarray(grad),
        "gradient_rgb": Image.fromarray(np.dstack([grad, grad[:, ::-1], np.full_like(grad, 77)])),
        "noise_rgb": Image.fromarray(rgb_noise),
        "noise_rgba": Image.frombytes("RGBA", (23, 17), rgba.tobytes()),
        "noise_la": Image.frombytes("LA", (23, 17), rgba[:, :, 2:].tobytes()),
        "few_colours": Image.fromarray(np.array([[0, 50], [50, 200]], dtype=np.uint8).repeat(5, 0).repeat(5, 1)),
        "palette": Image.fromarray(rgb_noise).quantize(40),
        "bilevel": Image.fromarray(grad).convert("1"),
        "cmyk": Image.fromarray(rgb_noise).convert("CMYK"),
    }
    return images
