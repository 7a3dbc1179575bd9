"""Measurement: sizes against PNG, errors and times for a grid of k and modes (what ``kquant bench`` prints)."""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass

from PIL import Image

from .container import PNG_MODES
from .filter import KMeansQuantize
from .metrics import error_report
from .pixels import as_palette_image

__all__ = ["png_bytes", "colour_bands", "BenchRow", "bench_image"]


def png_bytes(img: Image.Image, palette: bool = True) -> int:
    """Bytes of Pillow's PNG of ``img`` (``optimize=True``); a palette PNG when ``palette`` and it fits. Modes PNG
    cannot hold (CMYK, YCbCr, LAB, HSV) are measured as their RGB conversion, the PNG one would make of them."""
    target = (as_palette_image(img) if palette else None) or img
    if target.mode not in PNG_MODES:
        target = target.convert("RGB")
    buf = io.BytesIO()
    target.save(buf, format="PNG", optimize=True)
    return buf.tell()


def colour_bands(img: Image.Image) -> Image.Image:
    """``img`` without its alpha band, a palette image as its RGB colours: what the error figures compare. Alpha
    is kept exact unless asked otherwise; counted as one more band, it would only dilute the colour error."""
    if img.mode in ("P", "PA"):
        return img.convert("RGB")
    if img.mode in ("RGBA", "LA"):
        return img.convert(img.mode[:-1])
    return img


@dataclass
class BenchRow:
    """One cell of the benchmark grid. Sizes in bytes, errors over the colour bands' samples (alpha, kept exact,
    left out; CMYK, YCbCr, LAB and HSV in their own samples), times in seconds."""

    mode: str
    k: int
    kq_bytes: int
    payload: str
    png_original_bytes: int
    png_quantized_bytes: int
    ratio_vs_original_png: float
    ratio_vs_quantized_png: float
    l1: int
    l2: float
    mse: float
    psnr: float
    seconds: float
    decode_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def bench_image(img: Image.Image, ks: list[int], modes: list[str], seed: int = 0) -> list[BenchRow]:
    """Quantize ``img`` at every k and mode, store it as ``.kq``, and compare against PNG.

    ``seconds`` covers quantization plus writing the ``.kq`` bytes; ``decode_seconds`` reading them back, which
    is checked to give exactly the quantized pixels. Ratios are PNG bytes / ``.kq`` bytes
    (above 1 means ``.kq`` is smaller).
    """
    from . import kq_info  # the container API, registered with Pillow on package import

    original_png = png_bytes(img, palette=False)
    rows = []
    for mode in modes:
        for k in ks:
            start = time.perf_counter()
            quantized = img.filter(KMeansQuantize(k, mode=mode, seed=seed))
            buf = io.BytesIO()
            quantized.save(buf, format="KQ", mode=mode)
            seconds = time.perf_counter() - start
            data = buf.getvalue()
            start = time.perf_counter()
            with Image.open(io.BytesIO(data)) as decoded:
                decoded.load()
                decode_seconds = time.perf_counter() - start
                if decoded.tobytes() != quantized.tobytes():
                    raise AssertionError(f"the .kq file does not decode to the quantized pixels ({mode}, k={k})")
            quantized_png = png_bytes(quantized)
            errors = error_report(colour_bands(img), colour_bands(quantized))
            rows.append(
                BenchRow(
                    mode=mode,
                    k=k,
                    kq_bytes=len(data),
                    payload=kq_info(data).payload,
                    png_original_bytes=original_png,
                    png_quantized_bytes=quantized_png,
                    ratio_vs_original_png=original_png / len(data),
                    ratio_vs_quantized_png=quantized_png / len(data),
                    **errors,
                    seconds=seconds,
                    decode_seconds=decode_seconds,
                )
            )
    return rows
