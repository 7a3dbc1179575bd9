"""``.kq`` encoding and decoding from many threads at once, and byte-identical files across thread counts.

- A pool of 8 threads encodes 8 different images (``img.save(BytesIO, format="KQ", k=...)``, every
  quantization mode) and decodes them (``Image.open`` + ``load()``), twice over, in a shuffled order:
  every result must equal the serial one. Shared mutable state in the package would show up here.
- Fresh processes with ``OMP_NUM_THREADS=1`` (and the OpenBLAS/MKL equivalents) and with the libraries'
  default thread counts, and with different ``PYTHONHASHSEED`` values, must write byte-identical files.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

import kquant_codec

# (crop box, image mode, save options): eight different jobs, every quantization mode, alpha, palette.
JOBS = [
    ((0, 0, 160, 120), "RGB", {"k": 16}),
    ((200, 100, 330, 200), "RGB", {"k": 8, "mode": "global"}),
    ((300, 200, 420, 290), "RGB", {"k": 5, "mode": "channel"}),
    ((50, 250, 190, 350), "RGBA", {"k": 12}),
    ((400, 50, 520, 150), "L", {"k": 6}),
    ((100, 300, 220, 400), "P", {}),
    ((250, 0, 350, 80), "RGBA", {"k": 4, "alpha": "quantize"}),
    ((10, 10, 150, 110), "CMYK", {"k": 7, "mode": "channel"}),
]


def _image(source: Image.Image, box: tuple[int, int, int, int], mode: str, index: int) -> Image.Image:
    img = source.crop(box)
    if mode == "RGBA":
        alpha = Image.linear_gradient("L").resize(img.size).rotate(45 * index)
        img = img.convert("RGBA")
        img.putalpha(alpha)
        return img
    if mode == "P":
        return img.quantize(37)
    return img.convert(mode)


@pytest.fixture(scope="module")
def images(china, flower) -> list[Image.Image]:
    return [_image(china if i % 2 == 0 else flower, box, mode, i) for i, (box, mode, _) in enumerate(JOBS)]


def _encode(img: Image.Image, options: dict) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="KQ", **options)
    return buf.getvalue()


def _decode(data: bytes) -> tuple[str, tuple[int, int], bytes, bytes | None]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        palette = img.convert("RGBA").tobytes() if img.mode == "P" else None
        return img.mode, img.size, img.tobytes(), palette


def test_thread_pool_encode_and_decode_match_serial(images):
    serial_files = [_encode(img, options) for img, (_, _, options) in zip(images, JOBS, strict=True)]
    serial_pixels = [_decode(data) for data in serial_files]
    for data, img in zip(serial_files, images, strict=True):
        assert Image.open(io.BytesIO(data)).size == img.size

    order = list(range(len(JOBS))) * 2
    random.Random(5).shuffle(order)

    def encode(i: int) -> tuple[int, bytes]:
        return i, _encode(images[i], JOBS[i][2])

    def decode(i: int) -> tuple[int, tuple]:
        return i, _decode(serial_files[i])

    with ThreadPoolExecutor(max_workers=8) as pool:
        encoded = list(pool.map(encode, order))
        decoded = list(pool.map(decode, order))
        mixed = list(pool.map(lambda i: encode(i) if i % 2 else decode(i), order))
    for i, data in encoded:
        assert data == serial_files[i], f"job {i}: threaded encode differs from serial"
    for i, pixels in decoded:
        assert pixels == serial_pixels[i], f"job {i}: threaded decode differs from serial"
    for i, result in mixed:
        assert result == (serial_files[i] if i % 2 else serial_pixels[i]), f"job {i}: mixed pool differs"


def test_thread_pool_decodes_every_seed_file_like_serial():
    from pathlib import Path

    corpus = sorted((Path(__file__).resolve().parent.parent / "fuzz" / "corpus").glob("*.kq"))
    files = [p.read_bytes() for p in corpus]
    serial = [_decode(data) for data in files]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(_decode, files * 3))
    assert threaded == serial * 3


def test_concurrent_png_payload_decoding_leaves_warning_filters_alone():
    """Decoding must not touch global state: ``warnings.catch_warnings`` in the decoder once left the
    process ignoring ``DecompressionBombWarning`` after PNG payloads were decoded from several threads."""
    from pathlib import Path

    corpus = sorted((Path(__file__).resolve().parent.parent / "fuzz" / "corpus").glob("png-*.kq"))
    files = [p.read_bytes() for p in corpus]
    assert len(files) >= 8
    before = list(warnings.filters)

    def work(_: int) -> None:
        for _ in range(20):
            for data in files:
                kquant_codec.read_kq(data).to_image()
                _decode(data)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(8)))
    assert list(warnings.filters) == before


ENCODE_SCRIPT = """
import hashlib, io, sys
import numpy as np
from PIL import Image
import kquant_codec
rng = np.random.default_rng(11)
y, x = np.mgrid[0:120, 0:160]
smooth = np.dstack([x * 1.5, y * 2.0, (x + y) * 0.9]) + rng.normal(0, 12, (120, 160, 3))
photo = Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8))
rgba = photo.convert("RGBA")
rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
h = hashlib.sha256()
for img, options in [
    (photo, {"k": 24}),
    (photo, {"k": 9, "mode": "global"}),
    (photo, {"k": 6, "mode": "channel"}),
    (rgba, {"k": 10, "alpha": "quantize"}),
    (photo.quantize(50), {}),
    (photo.convert("L"), {}),
]:
    buf = io.BytesIO()
    img.save(buf, format="KQ", **options)
    h.update(hashlib.sha256(buf.getvalue()).digest())
print(h.hexdigest())
"""


def _digest(threads: str | None, hash_seed: str) -> str:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
        if threads is not None:
            env[var] = threads
    env["PYTHONHASHSEED"] = hash_seed
    out = subprocess.run(
        [sys.executable, "-c", ENCODE_SCRIPT], capture_output=True, text=True, env=env, timeout=300, check=True
    )
    return out.stdout.strip()


def test_kq_bytes_identical_across_thread_counts_and_hash_seeds():
    one_thread = _digest("1", "1")
    assert len(one_thread) == 64
    assert _digest(None, "2") == one_thread
