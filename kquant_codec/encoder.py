"""Pillow image + options -> ``.kq`` bytes.

Two steps:

1. Quantize, only when ``k`` or ``mode`` is given: the image becomes ``img.filter(KMeansQuantize(k, mode,
   seed, alpha))`` (``k`` defaults to 256, ``mode`` to "rgb"). So ``img.save("x.kq", k=16)`` decodes to
   exactly the pixels of ``img.filter(KMeansQuantize(16))``.
2. Store that image losslessly, in the smallest of the candidate layouts: native payloads (centroid
   table(s) + labels, each stream with its best codec and packing) and, unless ``fallback=False``, a PNG
   payload (Pillow's writer, ``optimize=True``, a palette PNG when <= 256 colours). A PNG candidate is used
   only after decoding it back and finding the same pixels.

Deterministic: the same image and options give byte-identical files (for a given zlib and liblzma).
"""

from __future__ import annotations

import io
import lzma
import threading
import zlib
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from . import _native
from .container import (
    CODEC_CONTEXT,
    CODEC_LZMA2,
    CODEC_PREDICTIVE,
    CODEC_STORED,
    CODEC_ZLIB,
    MAX_PIXELS,
    MAX_SIDE,
    NATIVE_MODES,
    PNG_MODES,
    QUANT_MODES,
    STORABLE_MODES,
    KqHeader,
    compress,
    labels_to_context_stream,
    labels_to_predictive_stream,
    labels_to_stream,
    pack_file,
    plane_depth,
    png_payload_header,
    unpack_header,
)
from .decoder import png_payload_image
from .pixels import SUPPORTED_MODES, as_palette_image, colour_key, few_colours, split_image
from .quantize import QuantizedImage, check_alpha, fit_image
from .quantizer import check_k, check_mode, check_seed, value_histogram

__all__ = ["encode_image", "SAVE_OPTIONS"]

SAVE_OPTIONS = ("k", "mode", "quant_mode", "seed", "alpha", "fallback", "palette")
_CODECS = (CODEC_STORED, CODEC_ZLIB, CODEC_LZMA2)
# Above this many bytes of unpacked labels, zlib and LZMA2 are not tried next to codec 3: LZMA2 preset 9e
# costs about 1 s per 2 MB here and codec 3 beat both on every photo and gradient measured
# (benchmarks/compression.py). Below it, all codecs compete and the smallest wins.
_SLOW_CODECS_MAX_BYTES = 1 << 20


def _check_options(k: Any, mode: Any, seed: Any, alpha: Any, fallback: Any) -> None:
    if k is not None:
        check_k(k)
    if mode is not None:
        check_mode(mode)
    if alpha is not None:
        check_alpha(alpha)
    check_seed(seed)
    if not isinstance(fallback, bool):
        raise ValueError(f"fallback must be True or False, got {fallback!r}")


def encode_image(
    img: Image.Image,
    *,
    k: int | None = None,
    mode: str | None = None,
    seed: int = 0,
    alpha: str | None = None,
    fallback: bool = True,
    quant_mode: str | None = None,
    palette: Any = None,
) -> bytes:
    """Encode a Pillow image as a ``.kq`` file and return its bytes.

    k : 1..256 centroids (per channel in "channel" mode); None stores the pixels exactly (or at k=256 when
        ``mode`` is given).
    mode : "rgb", "global" or "channel"; None picks the smallest lossless layout among rgb (when the image
        has <= 256 colours), global and channel — or quantizes in "rgb" mode when ``k`` is given.
    seed : k-means++ seed ("rgb" mode).
    alpha : "keep" (alpha exact, its own plane) or "quantize" (alpha is one more centroid channel); None:
        "keep" when quantizing, else whichever is smaller. "P" images keep transparency in the palette.
    fallback : allow a PNG payload when it is smaller (or the only way to store the image).
    quant_mode : another name for ``mode``, for callers where ``mode`` means something else (imageio's
        ``imwrite`` takes ``mode`` as the Pillow image mode: use ``iio.imwrite(p, arr, quant_mode="channel")``).
    palette : a given (m, 3) RGB palette (1 <= m <= 256, e.g. from ``kquant_codec.read_palette``): the image
        becomes ``img.filter(KMeansQuantize(palette=palette))`` (every pixel its exact nearest palette colour)
        instead of learning colours; ``k`` and ``seed`` are ignored, ``mode`` must be None or "rgb".

    Raises ``ValueError`` for bad options, empty or oversized images, and modes that cannot be stored.
    """
    if not isinstance(img, Image.Image):
        raise TypeError(
            f"encode_image takes a Pillow image, not {type(img).__name__}: use Image.fromarray(array) for an "
            "array, Image.open(path) for a file"
        )
    if quant_mode is not None:
        check_mode(quant_mode, "quant_mode")
        if mode is not None and mode != quant_mode:
            raise ValueError(f"mode={mode!r} and quant_mode={quant_mode!r} disagree: give one of them")
        mode = quant_mode
    _check_options(k, mode, seed, alpha, fallback)
    fitted: QuantizedImage | None = None
    img.load()
    key = colour_key(img)
    width, height = img.size
    if width < 1 or height < 1:
        raise ValueError(f"cannot store an empty image ({width}x{height})")
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise ValueError(f"image {width}x{height} exceeds the .kq limits ({MAX_SIDE} per side, {MAX_PIXELS} pixels)")
    if k is not None or mode is not None or palette is not None:
        if img.mode not in SUPPORTED_MODES:
            raise ValueError(f"cannot quantize image mode {img.mode!r}; supported: {', '.join(SUPPORTED_MODES)}")
        from .filter import KMeansQuantize

        if palette is None:
            quantize = KMeansQuantize(256 if k is None else k, mode or "rgb", seed=seed, alpha=alpha or "keep")
        else:
            quantize = KMeansQuantize(k, mode or "rgb", alpha=alpha or "keep", palette=palette)
        if quantize.mode == "rgb" and img.mode not in ("P", "1"):
            # What the filter does, keeping the fit: its palette and labels are the rgb layout, so the
            # quantized image's colours need no second count. ("P" and "1" images: their filter differs.)
            # The label codec needs the compiled kernels anyway; loaded first, they also let the fit run its
            # learning steps compiled (the same palette, in about half the time on small images).
            try:
                _native.backend()
            except Exception:  # no usable kernels: the fit warns and takes numpy; the codecs report it themselves
                pass

            fitted = fit_image(img, quantize.k, "rgb", seed=seed, alpha=quantize.alpha, palette=quantize.palette)
            img = _Deferred(fitted)
        else:
            img = _alpha_in_palette(img).filter(quantize)
        mode = mode or "rgb"
        alpha = alpha or "keep"
    if key is not None and not _key_in_use(_pixels(img), key):
        key = None  # it changes nothing shown
    candidates: list[bytes] = []
    if fallback and img.mode in PNG_MODES and img.width * img.height <= _PNG_ALONGSIDE_MAX_PIXELS:
        candidates = _candidates_alongside(img, mode, alpha, fitted, key)
    else:
        if img.mode in NATIVE_MODES:
            # one thing at a time here, so the fit's labels can be relabelled in place and given back
            candidates.extend(_native_candidates(img, mode, alpha, fitted, in_place=True))
        if (fallback or not candidates) and img.mode in PNG_MODES:
            native = min(map(len, candidates), default=None)
            png = _png_candidate(img, native, _fitted_palette_image(fitted), key=key)
            if png is not None:
                candidates.append(png)
    if key is not None:  # a header fact: the native payloads are the same with it
        candidates = [_with_colour_key(file, key) for file in candidates]
    if not candidates:
        raise ValueError(
            f"cannot store image mode {img.mode!r} in a .kq file; convert it to one of "
            f"{', '.join(STORABLE_MODES)} first"
        )
    return min(candidates, key=len)  # first of equals: native before PNG


def _candidates_alongside(
    img: Image.Image | _Deferred,
    mode: str | None,
    alpha: str | None,
    fitted: QuantizedImage | None,
    key: int | tuple[int, int, int] | None,
) -> list[bytes]:
    """The native candidates and the PNG one, built at the same time: the native payload of a small image is
    one stripe on one core, and Pillow's PNG encoder releases the GIL.

    The bytes are the sequential path's: the PNG is dropped by the same rule (``_png_may_pay`` on the quick
    PNG), applied once both sizes are known. A dropped PNG is cancelled (its encoder stops at its
    next chunk written) and not waited for; it works on its own copy of the pixels by then.
    """
    quick: Future[tuple[int, int]] = Future()
    cancel = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kq-png")
    try:
        palette = _fitted_palette_image(fitted)
        job = pool.submit(_png_candidate, img, None, palette, quick=quick, cancel=cancel, key=key)
        candidates = _native_candidates(img, mode, alpha, fitted) if img.mode in NATIVE_MODES else []
        native = min(map(len, candidates), default=None)
        if native is not None:
            wait([quick, job], return_when=FIRST_COMPLETED)
            if quick.done() and not _png_may_pay(native, *quick.result()):
                return candidates
        png = job.result()
        return candidates + ([png] if png is not None else [])
    finally:
        cancel.set()  # a no-op once the job is done
        pool.shutdown(wait=False)


class _Deferred:
    """Stands in for ``fitted.to_image()``: its size and mode at once, its pixels (``.image``) only when a PNG
    candidate needs them. The native payload needs only the fit's labels, and a 24-megapixel RGB image is
    72 MB that the encode then never holds unless the PNG fallback is built."""

    def __init__(self, fitted: QuantizedImage) -> None:
        self._fitted = fitted
        self._image: Image.Image | None = None
        self.mode = fitted.mode
        self.height, self.width = fitted.labels.shape[:2]
        self.size = (self.width, self.height)

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            self._image = self._fitted.to_image()
        return self._image


def _pixels(img: Image.Image | _Deferred) -> Image.Image:
    return img.image if isinstance(img, _Deferred) else img


# -- native payloads -------------------------------------------------------------------------------


@dataclass
class _Layout:
    """One way of writing an image natively: quant mode, alpha kind, tables, labels, alpha plane."""

    quant_mode: str
    alpha: str
    channels: int
    table_sizes: tuple[int, ...]
    tables: bytes
    labels: np.ndarray
    alpha_plane: np.ndarray | None
    restore: np.ndarray | None = None  # set when ``labels`` is a fit's own array relabelled in place: the
    # table entry of each layout label, to give the fit its labels back (``_fitted_layout``)


def _order_key(colours: np.ndarray) -> np.ndarray:
    """Sort order for an rgb table: by luma (first three channels) then by the colour tuple.

    Neighbouring labels then mean similar colours, which the stream coders exploit a little.
    """
    c = colours.astype(np.int64)
    keys = [c[:, i] for i in range(c.shape[1] - 1, -1, -1)]
    if c.shape[1] >= 3:
        keys.append(299 * c[:, 0] + 587 * c[:, 1] + 114 * c[:, 2])
    return np.lexsort(keys)


def _rgb_layout(samples: np.ndarray) -> tuple[tuple[int, ...], bytes, np.ndarray] | None:
    h, w, channels = samples.shape
    palette = few_colours(samples)
    if palette is None:
        return None
    distinct, inverse = palette
    order = _order_key(distinct)
    rank = np.empty(order.size, dtype=np.uint8)
    rank[order] = np.arange(order.size, dtype=np.uint8)
    labels = rank[inverse].reshape(h, w)
    return (distinct.shape[0],), np.ascontiguousarray(distinct[order]).tobytes(), labels


def _level_labels(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ascending distinct levels of a uint8 array and each value's index among them."""
    present = np.bincount(values.reshape(-1), minlength=256) > 0
    levels = np.flatnonzero(present).astype(np.uint8)
    lut = np.zeros(256, dtype=np.uint8)
    lut[levels] = np.arange(levels.size, dtype=np.uint8)
    return levels, lut[values]


def _planar_layout(samples: np.ndarray, quant_mode: str) -> tuple[tuple[int, ...], bytes, np.ndarray]:
    if quant_mode == "global":
        levels, labels = _level_labels(samples)
        return (levels.size,), levels.tobytes(), labels
    tables, labels = [], np.empty_like(samples)
    for c in range(samples.shape[2]):
        levels, labels[:, :, c] = _level_labels(samples[:, :, c])
        tables.append(levels)
    return tuple(t.size for t in tables), b"".join(t.tobytes() for t in tables), labels


def _alpha_in_palette(img: Image.Image) -> Image.Image:
    """A "P" image whose transparency is ``info["transparency"]``, as a copy with that alpha in its palette
    (Pillow's ``apply_transparency``); any other image as it is. Pillow hands a filter only the pixels and the
    palette, so the filter took entries nobody sees for opaque and let them shape the palette (it leaves out
    what does not show, quantize.py); with the alpha in the palette it sees them. (Pillow itself moves the
    alpha there on some calls, ``convert`` among them, so the same image could quantize two ways.)"""
    if img.mode != "P" or "transparency" not in img.info:
        return img
    out = img.copy()
    try:
        out.apply_transparency()
    except IndexError:  # alpha for entries past the palette (Pillow's own limit): left as it is
        return img
    return out


def _palette_layout(img: Image.Image) -> _Layout:
    """A "P" image: its palette (plus alpha, when any entry is not opaque) is the table, indices the labels."""
    indices = np.asarray(img)
    pal_mode = img.im.getpalettemode()
    palette = img.im.getpalette(pal_mode, pal_mode)
    entries = max(len(palette) // len(pal_mode), int(indices.max()) + 1)
    probe = Image.frombytes("P", (entries, 1), bytes(range(entries)))
    probe.putpalette(palette, pal_mode)
    if "transparency" in img.info:
        probe.info["transparency"] = img.info["transparency"]
    rgba = np.asarray(probe.convert("RGBA")).reshape(entries, 4)
    opaque = bool((rgba[:, 3] == 255).all())
    table = rgba[:, :3] if opaque else rgba
    return _Layout(
        "rgb", "none" if opaque else "table", table.shape[1], (entries,), table.tobytes(), indices.copy(), None
    )


def _fitted_layout(fitted: QuantizedImage, in_place: bool = False) -> _Layout:
    """The rgb layout of a fit: its palette (the entries in use, in ``_order_key`` order) and its labels.

    The same table and labels ``_rgb_layout`` finds by counting the quantized image's colours. ``in_place``:
    the fit's labels are relabelled in place (no 24 MB copy at 24 MP) until ``_native_candidates`` gives them
    back through the layout's ``restore``; nothing else may read the fit meanwhile.
    """
    table = fitted.quantizer.centroids_
    used = np.flatnonzero(value_histogram(fitted.labels[:, :, None])[: table.shape[0]])  # row blocks: no 8 B/px
    order = used[_order_key(table[used])]
    rank = np.zeros(table.shape[0], dtype=np.uint8)
    rank[order] = np.arange(order.size, dtype=np.uint8)
    kind = "plane" if fitted.alpha is not None else "table" if fitted.mode in ("LA", "RGBA") else "none"
    tables = np.ascontiguousarray(table[order]).tobytes()
    if in_place and fitted.labels.flags.c_contiguous and fitted.labels.flags.writeable:
        _relabel_in_place(rank, fitted.labels)
        restore = order.astype(np.uint8)
        return _Layout("rgb", kind, table.shape[1], (order.size,), tables, fitted.labels, fitted.alpha, restore)
    return _Layout("rgb", kind, table.shape[1], (order.size,), tables, rank[fitted.labels], fitted.alpha)


def _relabel_in_place(lut: np.ndarray, labels: np.ndarray) -> None:
    """``labels[...] = lut[labels]`` in blocks of a megapixel: ``np.take`` with ``out`` would first widen the
    whole index array to 8 bytes a label (192 MB at 24 MP)."""
    flat = labels.reshape(-1)  # a view: the labels are C-contiguous
    for start in range(0, flat.size, 1 << 20):
        block = flat[start : start + (1 << 20)]
        block[...] = lut[block]


def _fitted_palette_image(fitted: QuantizedImage | None) -> Image.Image | None:
    """``as_palette_image`` of an RGB image quantized in rgb mode, straight from the fit, or None.

    The fit's table is sorted as tuples and its labels index it, which is exactly the palette image that
    counting the quantized image's colours would build (4 bytes per pixel of temporaries, 800 MB at 24 MP).
    """
    if fitted is None or fitted.mode != "RGB" or fitted.alpha is not None or fitted.quantizer.n_channels_ != 3:
        return None
    table = fitted.quantizer.centroids_
    if not value_histogram(fitted.labels[:, :, None])[: table.shape[0]].all():
        return None  # an unused entry: as_palette_image leaves it out
    height, width = fitted.labels.shape
    # shares the labels' memory (a bytes copy and the image's own would be 48 MB more at 24 MP); the labels are
    # not changed while the PNG candidate reads it
    out = Image.frombuffer("P", (width, height), np.ascontiguousarray(fitted.labels), "raw", "P", 0, 1)
    out.putpalette(np.ascontiguousarray(table).tobytes(), "RGB")
    return out


def _layouts(
    img: Image.Image,
    quant_pref: str | None,
    alpha_pref: str | None,
    fitted: QuantizedImage | None = None,
    in_place: bool = False,
) -> list[_Layout]:
    if fitted is not None:
        return [_fitted_layout(fitted, in_place)]
    if img.mode == "P":
        return [_palette_layout(img)]
    parts = split_image(img, alpha="keep")
    if parts.alpha is None:
        kinds = ["none"]
    else:
        kinds = {"keep": ["plane"], "quantize": ["table"], None: ["plane", "table"]}[alpha_pref]
    layouts = []

    def add(kind: str, quant: str) -> None:
        samples = parts.colour if kind != "table" else np.dstack([parts.colour, parts.alpha])
        plane = parts.alpha if kind == "plane" else None
        tables = _rgb_layout(samples) if quant == "rgb" else _planar_layout(samples, quant)
        if tables is not None:
            layouts.append(_Layout(quant, kind, samples.shape[2], *tables, plane))

    for kind in kinds:
        for quant in [quant_pref] if quant_pref else list(QUANT_MODES):
            add(kind, quant)
    if not layouts:
        raise ValueError("more than 256 colours: the image cannot be stored in rgb mode without quantizing")
    return layouts


def _best_stream(raw: bytes, narrow: bool) -> tuple[int, bytes]:
    """The smallest (codec, stored bytes) for an uncompressed stream; ties go to the lower codec id."""
    best = (CODEC_STORED, bytes(raw))
    for codec in _CODECS[1:]:
        out = compress(raw, codec, narrow_alphabet=narrow)
        if len(out) < len(best[1]):
            best = (codec, out)
    return best


# The slow codecs are tried only when a quick LZMA2 preset-1 probe comes within this factor of codec 3. Measured
# (scratch study of the sample photos, two gradients, a tiled photo and rendered text, k = 4..256): on photos and
# gradients LZMA2 9e never beat codec 3 and the probe was >= 1.14x codec 3's size; where LZMA2 wins (repeated
# tiles, text: 3-4x smaller than codec 3) the probe was <= 0.35x. A factor of 1.05 keeps a wide margin on both
# sides and spares photos the ~0.1 s of 9e + zlib 9 (the slowest part of a small image's encode).
_LZMA_GAIN = 1.05
# Global/channel layouts up to this many pixels run codecs 3 and 4 at the same time (1.3-1.75x quicker at 0.3-1
# MP on 2 cores); above it, each codec's 2-megapixel stripes already keep the cores busy.
_SIDE_BY_SIDE_MAX_PIXELS = 1 << 22
# Images up to this many pixels (one codec-3 stripe, so one busy core) build their PNG candidate alongside.
_PNG_ALONGSIDE_MAX_PIXELS = 1 << 21


def _lzma_probe(raw: bytes) -> int:
    """Size of a quick LZMA2 preset-1 pass (~10 ms per 0.3 MB), the yardstick for trying the slow codecs."""
    return len(lzma.compress(raw, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 1}]))


def _estimate(raw: bytes) -> int:
    """A quick stand-in for a stream's compressed size (zlib level 1), for ranking layouts and packings."""
    return len(zlib.compress(raw, 1))


def _raw_streams(img: Image.Image, layout: _Layout) -> dict[bool, bytes]:
    """A layout's uncompressed label streams: unpacked, and packed when that differs."""
    base = _with(_header_for(img, layout), packed=False)
    streams = {False: labels_to_stream(layout.labels, base)}
    if any(plane_depth(m) < 8 for m in layout.table_sizes):
        streams[True] = labels_to_stream(layout.labels, _with(base, packed=True))
    return streams


def _shortlist(img: Image.Image, layouts: list[_Layout]) -> list[tuple[_Layout, dict[bool, bytes] | None]]:
    """Each distinct layout with the uncompressed label streams worth compressing in earnest.

    Streams: unpacked, and packed when that differs (both kept: which one LZMA2 compresses better is not
    predicted well by quick estimates). Layouts: only those whose estimate (tables + labels + alpha plane)
    is within 10% of the best, so the slow LZMA2 passes are spent only where they can win. A single layout
    (a fit, a "P" image) needs no ranking: its streams are left to be built only if needed (None), which
    spares a 24-megapixel encode a 24 MB stream and its zlib estimate.
    """
    if len(layouts) == 1:
        return [(layouts[0], None)]
    entries, seen, alpha_estimate = [], set(), None
    for layout in layouts:
        streams = _raw_streams(img, layout)
        key = (layout.alpha, layout.tables, streams[False])
        if key in seen:  # e.g. rgb, global and channel of a one-channel image
            continue
        seen.add(key)
        estimate = _header_for(img, layout).stored_table_length + min(_estimate(raw) for raw in streams.values())
        if layout.alpha_plane is not None:
            if alpha_estimate is None:
                alpha_estimate = _estimate(np.ascontiguousarray(layout.alpha_plane).tobytes())
            estimate += alpha_estimate
        entries.append((estimate, layout, streams))
    best = min(e[0] for e in entries)
    return [(layout, streams) for estimate, layout, streams in entries if estimate <= best + best // 10 + 64]


def _header_for(img: Image.Image, layout: _Layout) -> KqHeader:
    return KqHeader(
        width=img.width,
        height=img.height,
        image_mode=img.mode,
        quant_mode=layout.quant_mode,
        alpha=layout.alpha,
        channels=layout.channels,
        table_sizes=layout.table_sizes,
        tables=layout.tables,
    ).with_compact_tables()


def _label_streams(layout: _Layout, header: KqHeader, side_by_side: bool) -> tuple[bytes, bytes | None]:
    """The layout's codec-3 stream and, for the sorted tables of global/channel layouts, its codec-4 stream
    (else None). ``side_by_side`` runs the two codecs at once: their kernels release the GIL, and an image of
    one or two stripes would otherwise leave a core idle (each codec codes its planes one after another)."""
    if layout.quant_mode not in ("global", "channel"):
        return labels_to_context_stream(layout.labels, header), None
    if not side_by_side:  # enough stripes to fill the cores: one codec at a time keeps one set of buffers
        return labels_to_context_stream(layout.labels, header), labels_to_predictive_stream(layout.labels, header)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kq-codec4") as pool:
        job = pool.submit(labels_to_predictive_stream, layout.labels, header)
        context = labels_to_context_stream(layout.labels, header)
        return context, job.result()


def _native_candidates(
    img: Image.Image,
    quant_pref: str | None,
    alpha_pref: str | None,
    fitted: QuantizedImage | None = None,
    in_place: bool = False,
) -> list[bytes]:
    """The native files of the shortlisted layouts. ``in_place``: a fit's labels may be relabelled in place
    meanwhile (``_fitted_layout``); they are the fit's own again when this returns."""
    layouts = _layouts(img, quant_pref, alpha_pref, fitted, in_place)
    try:
        return _native_files(img, layouts)
    finally:
        for layout in layouts:
            if layout.restore is not None:
                _relabel_in_place(layout.restore, layout.labels)


def _native_files(img: Image.Image, layouts: list[_Layout]) -> list[bytes]:
    alpha_streams: dict[int, tuple[int, bytes]] = {}  # an alpha plane shared by layouts is coded once
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="kq-probe") as pool:
        return [_native_file(img, layout, streams, pool, alpha_streams) for layout, streams in _shortlist(img, layouts)]


def _native_file(
    img: Image.Image,
    layout: _Layout,
    streams: dict[bool, bytes] | None,
    pool: ThreadPoolExecutor,
    alpha_streams: dict[int, tuple[int, bytes]],
) -> bytes:
    """The smallest native file of one layout: codec 3 or 4, or (small images) a stored, zlib or LZMA2 stream."""
    narrow = max(layout.table_sizes) <= 16
    header = _header_for(img, layout)
    unpacked_bytes = _with(header, packed=False).label_raw_length
    # zlib 9 and LZMA2 9e cost several times codec 3's time; try them only when a quick LZMA2 preset-1
    # probe of one packing (the packed one when there is one: its probe was the smaller in every case
    # measured, and it is the quicker) says they could win (``_LZMA_GAIN``). Then both packings get them:
    # 9e does not always prefer the packing preset 1 does (rendered text at k = 4: unpacked 17% smaller).
    # At this size the raw streams are always needed, and the probe runs while codec 3 codes (liblzma
    # releases the GIL): a tenth of a small image's encode time.
    probe = None
    if unpacked_bytes <= _SLOW_CODECS_MAX_BYTES:
        if streams is None:
            streams = _raw_streams(img, layout)
        if streams:
            probe = pool.submit(_lzma_probe, streams[max(streams)])
    context, predictive = _label_streams(layout, header, img.width * img.height <= _SIDE_BY_SIDE_MAX_PIXELS)
    best_labels = (False, CODEC_CONTEXT, context)
    if predictive is not None and len(predictive) < len(context):  # ties go to codec 3
        best_labels = (False, CODEC_PREDICTIVE, predictive)
    if streams is None:  # (larger images only)
        packable = any(plane_depth(m) < 8 for m in layout.table_sizes)
        stored_bytes = _with(header, packed=packable).label_raw_length
        if stored_bytes >= len(best_labels[2]):
            streams = {}  # only "stored" could compete here, and it is the larger
        else:
            streams = _raw_streams(img, layout)
    slow = probe is not None and _LZMA_GAIN * len(context) > probe.result()
    for packed, raw in streams.items():
        if not slow:
            codec, stream = CODEC_STORED, raw
        else:
            codec, stream = _best_stream(raw, narrow)
        if len(stream) < len(best_labels[2]):  # ties: codec 3, then the first found
            best_labels = (packed, codec, stream)
    packed, codec, stream = best_labels
    alpha_codec, alpha_stream = CODEC_STORED, b""
    if layout.alpha_plane is not None:
        key = id(layout.alpha_plane)
        if key not in alpha_streams:
            alpha_streams[key] = _best_stream(np.ascontiguousarray(layout.alpha_plane).tobytes(), False)
        alpha_codec, alpha_stream = alpha_streams[key]
    header = _with(
        header,
        packed=packed,
        label_codec=codec,
        label_length=len(stream),
        alpha_codec=alpha_codec,
        alpha_length=len(alpha_stream),
    )
    return pack_file(header, stream, alpha_stream)


def _with(header: KqHeader, **changes: Any) -> KqHeader:
    return replace(header, **changes)


# -- PNG payload ----------------------------------------------------------------------------------


def _clean_copy(img: Image.Image) -> Image.Image:
    """The same pixels with no metadata (no ICC profile, EXIF, text) to bloat the PNG."""
    if img.mode == "P":
        pal_mode = img.im.getpalettemode()
        out = Image.frombytes("P", img.size, img.tobytes())
        out.putpalette(img.im.getpalette(pal_mode, pal_mode), pal_mode)
        if "transparency" in img.info:
            out.info["transparency"] = img.info["transparency"]
        return out
    return Image.frombytes(img.mode, img.size, img.tobytes())


def _key_in_use(img: Image.Image, key: int | tuple[int, int, int]) -> bool:
    """Whether any pixel has the colour key: a key no pixel has changes nothing that is shown, and costs the
    native payload nothing to leave out (a PNG payload of a truecolour photo is about 3 times its size)."""
    arr = np.asarray(img)
    want = np.array(key, np.uint8)
    return bool((arr == want).all(axis=-1).any() if arr.ndim == 3 else (arr == want).any())


def _with_colour_key(file: bytes, key: int | tuple[int, int, int]) -> bytes:
    """A native candidate with an L or RGB image's colour key in its header (spec 7); a PNG candidate as it is
    (its key is in its tRNS chunk). The key applies to the pixels stored: the quantized ones when quantizing,
    as for the filter's output."""
    header = unpack_header(file)
    if header.payload != "native":
        return file
    keyed = replace(header, colour_key=(key,) if isinstance(key, int) else tuple(key))
    return keyed.to_bytes() + file[header.header_length :]


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    """Same mode, size and pixels (for "P": the same indices and the same colours). Compared in bands of rows,
    so that two 72 MB byte copies of a 24-megapixel image are never made at once."""
    if a.mode != b.mode or a.size != b.size:
        return False
    band = max(1, (1 << 20) // max(1, a.width))
    for top in range(0, a.height, band):
        box = (0, top, a.width, min(a.height, top + band))
        pa, pb = a.crop(box), b.crop(box)
        if pa.tobytes() != pb.tobytes():
            return False
        if a.mode == "P" and pa.convert("RGBA").tobytes() != pb.convert("RGBA").tobytes():
            return False
    return True


_SMALL_IMAGE = 1 << 16  # pixels up to which the PNG fallback also tries the truecolour PNG (a few ms)
_QUICK_LEVEL_6_MAX_PIXELS = 1 << 21  # above, the quick PNG that decides whether to build the full one is level 1


_ONE_BYTE_MODES = ("P", "L", "1")  # at most a byte per pixel: as cheap to deflate as a palette version


def _png_options(version: Image.Image) -> dict[str, Any]:
    """Pillow's PNG options for a fallback candidate: ``optimize=True`` (zlib level 9), except for truecolour
    images above ``_SMALL_IMAGE`` pixels, which get Pillow's default level 6: level 9 costs about 1.6 s per
    megapixel there (20 s at 12 MP) for a file a few percent smaller."""
    if version.mode in _ONE_BYTE_MODES or version.width * version.height <= _SMALL_IMAGE:
        return {"optimize": True}
    return {"compress_level": 6}


def _grey_over_palette(img: Image.Image | _Deferred, palette: Image.Image) -> bool:
    """Whether the large-image shortcut keeps a grey ("L", "1") image's own PNG rather than its palette version:
    the same byte per pixel, but deflate predicts grey values far better than palette indices (a noisy 0.1 MP
    grey ramp: 44.7 KB against 86 KB). The palette wins only by its lower bit depth, at 16 colours or fewer."""
    return img.mode == "1" or (img.mode == "L" and len(palette.getpalette() or ()) // 3 > 16)


def _png_may_pay(native_bytes: int, quick_png_bytes: int, quick_level: int) -> bool:
    """The rule for building the full PNG candidate: unless the native payload is under 1/2 of the quick
    level-1 PNG, or 2/3 of the quick level-6 one (measured heuristics; see ``_png_candidate``)."""
    if quick_level == 6:
        return native_bytes * 3 > quick_png_bytes * 2
    return native_bytes * 2 > quick_png_bytes


class _Cancelled(Exception):
    """Raised from a ``_StoppableBuffer`` write once its event is set."""


class _StoppableBuffer(io.BytesIO):
    """A BytesIO whose writes raise ``_Cancelled`` once ``cancel`` is set: Pillow's encoder writes every
    chunk it makes, so a PNG save into it stops within one chunk of being cancelled."""

    def __init__(self, cancel: threading.Event) -> None:
        super().__init__()
        self._cancel = cancel

    def write(self, data: Any) -> int:
        if self._cancel.is_set():
            raise _Cancelled
        return super().write(data)


def _png_candidate(
    img: Image.Image | _Deferred,
    native_bytes: int | None = None,
    palette: Image.Image | None = None,
    *,
    quick: Future[tuple[int, int]] | None = None,
    cancel: threading.Event | None = None,
    key: int | tuple[int, int, int] | None = None,
) -> bytes | None:
    """The smallest PNG payload file that decodes back to exactly ``img``, or None.

    Candidates: Pillow's PNG of the image itself and of its exact palette version (``_png_options``). Above
    ``_SMALL_IMAGE`` pixels, shortcuts keep the encode fast: only one version is built, the palette one when it
    exists (a truecolour image is three times the bytes to deflate) except for grey images
    (``_grey_over_palette``), and the full PNG is not built when the best native
    payload is well under a quick PNG of the one version left (``_png_may_pay``). Up to
    ``_QUICK_LEVEL_6_MAX_PIXELS`` the quick PNG is level 6 (1-27 ms at 0.27 MP, where level 9 took 10-95 ms), kept
    as a candidate, and the rule is 2/3 of it: level 9 was at most 1.12x smaller than level 6 on the sample photos
    at k = 2..256 and 1.48x on synthetic gradients, tiles and text (whose native payloads were under 0.37 of level
    6), and sometimes larger. Above, it is level 1 and half of it: level 9 was 1.02-1.44x smaller than level 1 on
    the sample photos, up to 3.4x on tiled synthetic images, whose native payload was smaller still. No case
    measured where a shortcut dropped a smaller PNG. Small images try both versions (a few ms): there the
    palette's own bytes can make the palette PNG the larger one (an 8x8 image of 64 colours).

    Built alongside the native payload (``encode_image``), the native size is not known yet: the quick PNG's
    size and level are handed to the caller through ``quick`` instead, and the caller sets ``cancel`` to stop the
    build.

    ``key``, an L or RGB image's colour key in use: only the image's own PNG, with the key as its tRNS (a
    palette version cannot hold a key, spec 9).
    """
    small = img.width * img.height <= _SMALL_IMAGE
    extra = {} if key is None else {"transparency": key}
    if key is not None:
        palette = None
    elif palette is None:  # (given when an rgb fit already knows it)
        palette = as_palette_image(_pixels(img))
    if small or palette is None:
        versions = [_clean_copy(_pixels(img)), palette]
    else:
        versions = [_clean_copy(_pixels(img))] if _grey_over_palette(img, palette) else [palette]
    versions = [v for v in versions if v is not None]
    streams = []
    if (native_bytes is not None or quick is not None) and not small and len(versions) == 1:
        level = 6 if img.width * img.height <= _QUICK_LEVEL_6_MAX_PIXELS else 1
        first = io.BytesIO()
        try:
            versions[0].save(first, format="PNG", compress_level=level, **extra)
        except (OSError, ValueError):
            return None
        if quick is not None:
            quick.set_result((first.tell(), level))
        if native_bytes is not None and not _png_may_pay(native_bytes, first.tell(), level):
            return None
        if level == 6:  # a candidate itself (level 9 is not always smaller), and the whole PNG when that is level 6
            streams.append(first.getvalue())
            if _png_options(versions[0]) == {"compress_level": 6}:
                versions = []
    for version in versions:
        buf = io.BytesIO() if cancel is None else _StoppableBuffer(cancel)
        try:
            version.save(buf, format="PNG", **_png_options(version), **extra)
        except _Cancelled:
            return None
        except (OSError, ValueError):
            continue
        streams.append(buf.getvalue())
    if cancel is not None and cancel.is_set():
        return None  # dropped while the last save finished: do not read the caller's image again
    for png in sorted(streams, key=len):
        header = png_payload_header(img.width, img.height, img.mode, len(png))
        try:
            header.validate()
            back = png_payload_image(header, png)
        except OSError:
            continue
        if _same_pixels(back, _pixels(img)) and (key is None or back.info.get("transparency") == key):
            return pack_file(header, png)
    return None
