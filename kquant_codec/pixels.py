"""Pillow images to sample arrays and back: which bands are colour, which is alpha, which modes we take.

The learner sees only (H, W, C) uint8 colour samples; this module decides what those are for each
Pillow mode and rebuilds an image of the original mode afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .container import PNG_MODES

__all__ = [
    "SplitImage",
    "split_image",
    "rgb_strips",
    "join_image",
    "as_palette_image",
    "few_colours",
    "SUPPORTED_MODES",
    "check_image_mode",
]

# Pillow modes whose bands are all 8-bit; the alpha band, if any, is last.
_COLOUR_MODES = {"L": 1, "RGB": 3, "CMYK": 4, "YCbCr": 3, "LAB": 3, "HSV": 3}
_ALPHA_MODES = {"LA": 1, "RGBA": 3}
SUPPORTED_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV")


def check_image_mode(mode: str) -> None:
    """Raise a ``ValueError`` naming ``mode`` when it is not one the quantizer handles."""
    if mode not in SUPPORTED_MODES:
        why = _UNSUPPORTED_WHY.get(mode, "16-bit, 32-bit and float images have more than 256 levels per channel")
        raise ValueError(
            f"image mode {mode!r} is not supported ({why}); convert it to 'L', 'RGB' or 'RGBA' first. "
            f"Supported modes: {', '.join(SUPPORTED_MODES)}"
        )


# Pillow's 8-bit modes the quantizer does not take, and why (the 16-bit, 32-bit and float ones share a reason).
_UNSUPPORTED_WHY = {
    "PA": "a palette image with an alpha band",
    "RGBX": "an internal padded layout",
    "RGBa": "premultiplied alpha",
    "La": "premultiplied alpha",
}


@dataclass
class SplitImage:
    """An image taken apart for quantization.

    colour : (H, W, C) uint8, the channels to quantize.
    alpha : (H, W) uint8 or None, the alpha band kept aside (None when the mode has none, or when alpha
        is quantized with the colour channels).
    mode : the Pillow mode of the original image.
    """

    colour: np.ndarray
    alpha: np.ndarray | None
    mode: str


_STRIP_PIXELS = 1 << 20  # pixels per strip when copying a large image out of Pillow
_RAW_MODES = ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV")  # 8 bits per band, packed as stored


def _array(img: Image.Image) -> np.ndarray:
    """The image's samples as a (H, W, bands) uint8 array.

    ``np.asarray(img)`` goes through ``img.tobytes()``, which joins the encoder's chunks into one bytes
    object and so briefly holds the pixels twice; a large image is copied in strips of rows instead, which
    keeps the transient to one strip (72 MB less at peak for a 24-megapixel RGB image).
    """
    width, height = img.size
    if width * height <= 4 * _STRIP_PIXELS:
        arr = np.asarray(img)
        return arr[:, :, None] if arr.ndim == 2 else arr
    rows = max(1, _STRIP_PIXELS // width)
    out = np.empty((height, width, len(img.getbands())), dtype=np.uint8)
    for top in range(0, height, rows):
        strip = _rows(img, top, min(height, top + rows))
        out[top : top + rows] = strip[:, :, None] if strip.ndim == 2 else strip
    return out


def _rows(img: Image.Image, top: int, bottom: int) -> np.ndarray:
    """Rows top..bottom-1 of the image as an array (``np.asarray`` of that crop).

    Pillow's raw encoder packs the rows straight into one bytes object (as ``tobytes`` does, but without
    the crop's copy and the join of 64 kB chunks): 2-3x quicker, and a 12 MP encode reads its strips 3 times.
    """
    bands = len(img.getbands())
    if img.mode not in _RAW_MODES:
        return np.asarray(img.crop((0, top, img.width, bottom)))
    img.load()
    size = (bottom - top) * img.width * bands
    encoder = Image._getencoder(img.mode, "raw", (img.mode, 0, 1))
    encoder.setimage(img.im, (0, top, img.width, bottom))
    chunks = []
    while True:
        _, status, data = encoder.encode(size + 1)
        chunks.append(data)
        if status:
            break
    if status < 0:  # not expected for raw packing; the plain way then says what is wrong
        return np.asarray(img.crop((0, top, img.width, bottom)))
    flat = np.frombuffer(chunks[0] if len(chunks) == 1 else b"".join(chunks), dtype=np.uint8)
    shape = (bottom - top, img.width) + ((bands,) if bands > 1 else ())
    return flat.reshape(shape)


def rgb_strips(img: Image.Image) -> Callable[[], Iterator[np.ndarray]]:
    """A reader of an "RGB" image in strips of rows: each call returns a fresh iterator of (rows, W, 3) uint8
    arrays, top to bottom, about a megapixel each, copied out of Pillow one at a time."""
    if img.mode != "RGB":
        raise ValueError(f"rgb_strips takes RGB images, got {img.mode!r}")
    width, height = img.size
    rows = max(1, _STRIP_PIXELS // max(1, width))

    def strips() -> Iterator[np.ndarray]:
        for top in range(0, height, rows):
            yield _rows(img, top, min(height, top + rows))

    return strips


def split_image(img: Image.Image, alpha: str = "keep") -> SplitImage:
    """Take a Pillow image apart into colour samples and (optionally) an exact alpha band.

    alpha="keep": the alpha band (LA, RGBA) is set aside and restored exactly by ``join_image``.
    alpha="quantize": alpha is the last colour channel and is quantized with the others.
    Palette images are expanded to their colours (P -> RGB, or RGBA when the palette has transparency);
    "1" images become L (0 or 255).
    """
    mode = img.mode
    check_image_mode(mode)
    if mode == "1":
        work = img.convert("L")
    elif mode == "P":
        has_alpha = "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")
        work = img.convert("RGBA" if has_alpha else "RGB")
    else:
        work = img
    arr = _array(work)
    if work.mode in _ALPHA_MODES and alpha == "keep":
        return SplitImage(np.ascontiguousarray(arr[:, :, :-1]), np.ascontiguousarray(arr[:, :, -1]), mode)
    return SplitImage(np.ascontiguousarray(arr), None, mode)


def join_image(colour: np.ndarray, alpha: np.ndarray | None, mode: str) -> Image.Image:
    """Rebuild an image of Pillow ``mode`` from (H, W, C) uint8 colour samples and an optional alpha band.

    For "P" the result is a palette image whose palette holds exactly the colours used.
    """
    h, w, channels = colour.shape
    bands = colour if alpha is None else np.concatenate([colour, alpha[:, :, None]], axis=2)
    if mode == "P":
        return _to_palette(bands)
    if mode == "1":
        return Image.frombytes("L", (w, h), bands.tobytes()).convert("1", dither=Image.Dither.NONE)
    return Image.frombytes(mode, (w, h), np.ascontiguousarray(bands).tobytes())


def _to_palette(bands: np.ndarray, found: tuple[np.ndarray, np.ndarray] | None = None) -> Image.Image:
    """A "P" image from (H, W, 3 or 4) samples with at most 256 distinct colours (palette in tuple order).

    ``found`` is ``few_colours(bands)`` when the caller already has it.
    """
    h, w, channels = bands.shape
    found = found or few_colours(bands)
    if found is None:
        raise ValueError("a palette image holds at most 256 colours")
    colours, index = found
    out = Image.frombytes("P", (w, h), index.tobytes())
    out.putpalette(colours.tobytes(), "RGBA" if channels == 4 else "RGB")
    return out


def colour_key(img: Image.Image) -> int | tuple[int, int, int] | None:
    """An "L" or "RGB" image's transparent colour (``info["transparency"]``: a grey level, an (R, G, B) triple),
    as PNG's tRNS chunk holds it for greyscale and truecolour images; None when there is none."""
    key = img.info.get("transparency")
    if img.mode == "L" and isinstance(key, int) and not isinstance(key, bool) and 0 <= key <= 255:
        return key
    if img.mode == "RGB" and isinstance(key, tuple) and len(key) == 3:
        if all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in key):
            return key
    return None


def as_palette_image(img: Image.Image) -> Image.Image | None:
    """The same pixels as an exact "P" image (palette trimmed to the colours used), or None.

    None when the image has more than 256 distinct colours or a mode a palette cannot hold exactly
    (palette entries are RGB or RGBA). "P" images are returned as they are. An L or RGB image's colour key
    becomes the transparent palette entry, so the image shows the same.
    """
    if img.mode == "P":
        return img
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        return None
    target = "RGBA" if img.mode in ("LA", "RGBA") else "RGB"
    bands = _array(img.convert(target))
    found = few_colours(bands)
    if found is None:
        return None
    out = _to_palette(bands, found)
    key = colour_key(img)
    if key is not None:
        rgb = (key, key, key) if isinstance(key, int) else key
        hit = np.flatnonzero((found[0] == np.array(rgb, np.uint8)).all(axis=1))
        if hit.size:
            out.info["transparency"] = int(hit[0])
    return out


def few_colours(samples: np.ndarray, limit: int = 256) -> tuple[np.ndarray, np.ndarray] | None:
    """The distinct colours of (H, W, C) uint8 samples (C <= 4) when there are at most ``limit``, else None.

    Returns (colours (m, C) uint8, sorted as tuples; index (H * W,) uint8 with ``colours[index]`` equal to
    the pixels). Exact; fast on big images with few colours: the colours of a subsample are found first and
    every pixel is then looked up among them, with a second round for any colour the subsample missed.
    """
    h, w, channels = samples.shape
    flat = samples.reshape(-1, channels).astype(np.uint32)
    keys = np.zeros(flat.shape[0], dtype=np.uint32)
    for c in range(channels):
        keys = (keys << np.uint32(8)) | flat[:, c]
    found = np.unique(keys[:: max(1, keys.size // 65536)])
    for _ in range(2):
        if found.size > limit:
            return None
        index = np.minimum(np.searchsorted(found, keys), found.size - 1)
        missing = found[index] != keys
        if not missing.any():
            colours = np.empty((found.size, channels), dtype=np.uint8)
            for c in range(channels):
                colours[:, c] = (found >> np.uint32(8 * (channels - 1 - c))) & np.uint32(0xFF)
            return colours, index.astype(np.uint8)
        found = np.union1d(found, np.unique(keys[missing]))
    raise AssertionError("unreachable: the second round includes every key")


def frames_problem(img: Image.Image) -> str | None:
    """Why a file tool should not store ``img`` as one ``.kq`` image (an animation: every frame after the first
    would be dropped without a word), or None."""
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        return f"an animation of {frames} frames; a .kq file holds one image (save a frame as its own file first)"
    return None


def for_png(img: Image.Image) -> Image.Image:
    """``img`` as a PNG writer should get it: an exact indexed image whenever the pixels allow one (smaller),
    else the image itself, converted to RGB when PNG has no such mode (CMYK, YCbCr, LAB, HSV: as shown)."""
    if img.mode not in PNG_MODES:  # the modes a PNG holds
        img = img.convert("RGB")
    return as_palette_image(img) or img
