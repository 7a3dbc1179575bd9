"""``kquant report``: a small HTML page with PNG figures for choosing k and the quantization mode.

    from kquant_codec.report import write_report
    index = write_report(img, "report/")        # report/index.html, report/*.png, report/numbers.csv

For every (mode, k) the image is quantized once, at full resolution: ``encode_image(img, k=k, mode=mode)``
gives the ``.kq`` bytes, and those bytes decoded give the quantized pixels (the encoder stores exactly
``img.filter(KMeansQuantize(k, mode))``). Every number and figure comes from that one fit: errors
(``kquant_codec.metrics``), the palette PNG (``kquant_codec.measure.png_bytes``), WebP lossless, histograms,
palettes and the thumbnails of the grid (downscaled after quantizing).

Figures need matplotlib (the ``plots`` extra), imported only inside ``write_report``; they are drawn on
``Figure`` objects with the Agg canvas, never through pyplot, so the caller's backend is left alone.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .decoder import read_kq
from .encoder import encode_image
from .measure import png_bytes
from .metrics import absolute_error, squared_error
from .quantizer import MODES, check_k, check_mode, check_seed
from .safe_write import OutputExistsError, atomic_output

__all__ = [
    "DEFAULT_KS",
    "REPORT_MODES",
    "REPORT_FILES",
    "WEBP_OPTIONS",
    "PLOTS_HINT",
    "PlotsMissingError",
    "ReportWriteError",
    "ReportRow",
    "measure_report",
    "write_report",
]

DEFAULT_KS = (2, 4, 8, 16, 32, 64)  # k = 1, one flat colour, only stretched the axes
REPORT_MODES = ("global", "channel", "rgb")
FIGURES = {
    "grid": "grid.png",
    "tradeoff": "tradeoff.png",
    "errors": "errors.png",
    "sizes": "sizes.png",
    "histograms": "histograms.png",
    "palettes": "palettes.png",
}
REPORT_FILES = ("index.html", "numbers.csv", *FIGURES.values())
# WebP lossless: method (0-6) and quality (in lossless mode: effort) chosen to fit the one-minute budget at
# 2 MP. method 6 / quality 100 took 10-36 s per image there for under 3% fewer bytes than this (2026-11-27).
WEBP_OPTIONS = {"lossless": True, "method": 4, "quality": 80}
THUMB_SIDE = 400  # longest side of the grid's thumbnails, pixels
PLOTS_HINT = 'kquant report draws its figures with matplotlib: pip install -e ".[plots]" in the project folder'

_MODE_COLOURS = {"global": "#1b9e77", "channel": "#d95f02", "rgb": "#7570b3"}
_MODE_NOTES = {
    "global": "k intensity levels shared by R, G and B",
    "channel": "k levels for each of R, G, B (up to k\u00b3 colours)",
    "rgb": "k colours (a palette)",
}
_CHANNELS = (("R", "#d62728"), ("G", "#2ca02c"), ("B", "#1f77b4"))
_KB = 1000.0


class PlotsMissingError(ImportError):
    """matplotlib (the ``plots`` extra) is not installed; the message names the pip command."""


class ReportWriteError(OSError):
    """A report file or the output folder could not be written."""


@dataclass
class ReportRow:
    """The numbers for one (mode, k), all measured on the full-resolution image.

    colours : centroid table entries in use ("rgb": colours; "global": levels; "channel": levels per channel,
        the largest of the three). kq_bytes : ``len(encode_image(img, k=k, mode=mode))``; payload : "native"
        or "png". png_quantized_bytes : PNG of the quantized image, a palette PNG up to 256 colours
        (``measure.png_bytes``).
        webp_bytes : WebP lossless of the quantized image (``WEBP_OPTIONS``). png_original_bytes : PNG of the
        input (truecolour, ``optimize=True``). ratio : png_original_bytes / kq_bytes. l1 : sum of |delta| over
        all samples (intensity levels, 0-255 scale). l2 : sqrt of the sum of delta**2 (levels). mse : mean of
        delta**2 per sample (levels squared). psnr : dB against a peak of 255 (``inf`` when exact).
    """

    mode: str
    k: int
    colours: int
    payload: str
    kq_bytes: int
    png_quantized_bytes: int
    webp_bytes: int
    png_original_bytes: int
    ratio: float
    l1: int
    l2: float
    mse: float
    psnr: float


@dataclass
class _Cell:
    """One (mode, k) fit: its numbers and what the figures need (all small)."""

    row: ReportRow
    table: Any  # "rgb": (m, 3) uint8; "global": (m,) uint8; "channel": tuple of 3 (m_c,) uint8
    histogram: np.ndarray  # (3, 256) int64 sample counts per channel of the quantized image
    thumb: Image.Image = field(repr=False)


@dataclass
class _Measured:
    img: Image.Image
    ks: tuple[int, ...]
    modes: tuple[str, ...]
    seed: int
    png_original_bytes: int
    histogram: np.ndarray  # (3, 256) of the input
    thumb: Image.Image
    cells: dict[tuple[str, int], _Cell]

    def rows(self) -> list[ReportRow]:
        return [self.cells[mode, k].row for mode in self.modes for k in self.ks]


# -- measuring -------------------------------------------------------------------------------------


def _as_rgb(img: Image.Image) -> Image.Image:
    img.load()
    return img if img.mode == "RGB" else img.convert("RGB")


def _histogram(arr: np.ndarray) -> np.ndarray:
    return np.stack([np.bincount(arr[:, :, c].reshape(-1), minlength=256) for c in range(3)]).astype(np.int64)


def _thumbnail(img: Image.Image) -> Image.Image:
    out = img.copy()
    out.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    return out


def _table_in_use(arr: np.ndarray, mode: str) -> Any:
    """The centroid table(s) the quantized pixels use, read off the pixels (so a PNG payload works too)."""
    if mode == "rgb":
        keys = (arr[:, :, 0].astype(np.uint32) << 16) | (arr[:, :, 1].astype(np.uint32) << 8) | arr[:, :, 2]
        found = np.unique(keys)
        colours = np.stack([(found >> 16) & 255, (found >> 8) & 255, found & 255], axis=1).astype(np.uint8)
        luma = colours.astype(np.int64) @ np.array([299, 587, 114])
        return colours[np.argsort(luma, kind="stable")]  # dark to light reads best as swatches
    if mode == "global":
        return np.flatnonzero(np.bincount(arr.reshape(-1), minlength=256)).astype(np.uint8)
    return tuple(_table_in_use(arr[:, :, c], "global") for c in range(3))


def _webp_bytes(img: Image.Image) -> int:
    buf = io.BytesIO()
    img.save(buf, format="WEBP", **WEBP_OPTIONS)
    return buf.tell()


def _measure_cell(img: Image.Image, mode: str, k: int, seed: int) -> _Cell:
    """Quantize once (inside ``encode_image``) and measure everything on the decoded pixels."""
    data = encode_image(img, k=k, mode=mode, seed=seed)
    kq = read_kq(data)
    quantized = kq.to_image()
    arr = np.asarray(quantized)
    l1 = absolute_error(img, arr)
    se = squared_error(img, arr)
    mse = se / arr.size  # metrics.mse, l2_error and psnr by their definitions, without three more passes
    table = _table_in_use(arr, mode)
    colours = max(t.size for t in table) if mode == "channel" else len(table)
    row = ReportRow(
        mode=mode,
        k=k,
        colours=colours,
        payload=kq.header.payload,
        kq_bytes=len(data),
        png_quantized_bytes=png_bytes(quantized),
        webp_bytes=_webp_bytes(quantized),
        png_original_bytes=0,  # filled in once the original's PNG is measured
        ratio=0.0,
        l1=l1,
        l2=math.sqrt(se),
        mse=mse,
        psnr=math.inf if se == 0 else 10.0 * math.log10(255.0 * 255.0 / mse),
    )
    return _Cell(row, table, _histogram(arr), _thumbnail(quantized))


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    try:
        values = tuple(ks)
    except TypeError:
        raise ValueError(f"ks must be a sequence of integers from 1 to 256, got {ks!r}") from None
    if not values:
        raise ValueError("ks must name at least one k")
    for k in values:
        check_k(k)
    return tuple(sorted(set(values)))


def _check_modes(modes: Iterable[str]) -> tuple[str, ...]:
    values = tuple(modes) if not isinstance(modes, str) else (modes,)
    if not values:
        raise ValueError(f"modes must name at least one of {', '.join(MODES)}")
    for mode in values:
        check_mode(mode)
    return tuple(dict.fromkeys(values))


def _check_seed_workers(seed: Any, workers: Any) -> None:
    check_seed(seed)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)  # each running job holds a few copies of the image: keep them few


def measure_report(
    img: Image.Image,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    modes: Sequence[str] = REPORT_MODES,
    seed: int = 0,
    workers: int | None = None,
    on_step: Callable[[str], None] | None = None,
) -> list[ReportRow]:
    """The report's table without the figures: one ``ReportRow`` per (mode, k), modes outer, k ascending."""
    return _measure(img, _check_ks(ks), _check_modes(modes), seed, workers, on_step).rows()


def _measure(
    img: Image.Image,
    ks: tuple[int, ...],
    modes: tuple[str, ...],
    seed: int,
    workers: int | None,
    on_step: Callable[[str], None] | None,
) -> _Measured:
    _check_seed_workers(seed, workers)
    img = _as_rgb(img)
    if workers is None:
        workers = _default_workers()
    # Threads, not processes: the codec's numba kernels, zlib and Pillow's PNG/WebP encoders release the GIL,
    # and nothing is pickled. Results are keyed by (mode, k), so the output does not depend on finishing order.
    # Expensive jobs (large k) first, so the last one to finish is short.
    jobs = sorted(((m, k) for m in modes for k in ks), key=lambda job: (-job[1], modes.index(job[0])))
    cells: dict[tuple[str, int], _Cell] = {}
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="kquant-report") as pool:
        original: Future = pool.submit(png_bytes, img, False)
        pending = {pool.submit(_measure_cell, img, m, k, seed): (m, k) for m, k in jobs}
        pending[original] = ("original", 0)
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: pending[f]):
                    mode, k = pending.pop(future)
                    if mode == "original":
                        png_original = future.result()
                        label = "PNG of the original"
                    else:
                        cells[mode, k] = future.result()
                        label = f"{mode} k={k}"
                    if on_step is not None:
                        on_step(label)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    for cell in cells.values():
        cell.row.png_original_bytes = png_original
        cell.row.ratio = png_original / cell.row.kq_bytes
    return _Measured(img, ks, modes, seed, png_original, _histogram(np.asarray(img)), _thumbnail(img), cells)


# -- figures ---------------------------------------------------------------------------------------


def _import_matplotlib() -> Any:
    """matplotlib's ``Figure`` and Agg canvas classes (no pyplot: no global state), or ``PlotsMissingError``."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotsMissingError(PLOTS_HINT) from exc
    return Figure, FigureCanvasAgg


_STYLE = {
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "legend.fontsize": 11,
    "xtick.labelsize": 11,
    "ytick.labelsize": 11,
    "figure.titlesize": 15,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.facecolor": "white",
}


def _png_of(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _k_axis(ax: Any, ks: Sequence[int]) -> None:
    """A log2 k axis with a tick at every k of the report, labelled plainly."""
    from matplotlib.ticker import NullLocator

    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks), labels=[str(k) for k in ks])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("k (centroids; per channel in channel mode), log\u2082 scale")
    if len(ks) == 1:
        ax.set_xlim(ks[0] / 1.5, ks[0] * 1.5)


def _short(value: float) -> str:
    """A tick label without exponents: 0.05, 3, 250, 20k, 6M."""
    if abs(value) >= 1e9:
        return f"{value / 1e9:g}G"
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e4:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def _plain_log_y(axis_owner: Any) -> None:
    """Log y scale with plain labels on major and minor ticks (minor ones appear when the range is short)."""
    axis_owner.set_yscale("log")
    _plain_labels(axis_owner.yaxis)


def _plain_labels(axis: Any) -> None:
    """Plain labels on a log axis: every decade, and as many minor ticks as fit without crowding."""
    from matplotlib.ticker import FuncFormatter

    def minor(value: float, _: Any) -> str:
        low, high = sorted(axis.get_view_interval())
        if value <= 0 or low <= 0:
            return ""
        span = high / low
        lead = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        shown = span < 6 or (span < 300 and lead in (2, 5))
        return _short(value) if shown else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: _short(v)))
    axis.set_minor_formatter(FuncFormatter(minor))


def _psnr_text(psnr: float) -> str:
    return "exact" if math.isinf(psnr) else f"{psnr:.1f} dB"


def _grid_figure(new_figure: Callable, m: _Measured) -> Any:
    ncols = len(m.ks) + 1
    # Cells at most 3:1 either way: a 1x2000 image made a 460x276,250-pixel figure. Thinner images are
    # stretched to fit (imshow's aspect "auto").
    true_aspect = m.thumb.height / m.thumb.width
    aspect = min(max(true_aspect, 1 / 3), 3.0)
    fit = "equal" if aspect == true_aspect else "auto"
    cell = 2.3
    fig = new_figure(figsize=(ncols * cell, len(m.modes) * (cell * aspect + 0.6) + 0.7))
    axes = fig.subplots(len(m.modes), ncols, squeeze=False)
    for r, mode in enumerate(m.modes):
        for c in range(ncols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if c == 0:
                if r == 0:
                    ax.imshow(np.asarray(m.thumb), aspect=fit)
                    ax.set_title(f"original\n{m.img.width}\u00d7{m.img.height} px", fontsize=13)
                else:
                    ax.axis("off")
                continue
            k = m.ks[c - 1]
            cell_ = m.cells[mode, k]
            ax.imshow(np.asarray(cell_.thumb), aspect=fit)
            ax.set_title(f"k = {k}\n{_psnr_text(cell_.row.psnr)}", fontsize=13)
            if c == 1:
                ax.set_ylabel(f"{mode}", fontsize=16, fontweight="bold", color=_MODE_COLOURS[mode])
    fig.suptitle("The image quantized in each mode (rows) at each k (columns); PSNR against the original")
    return fig


def _mark_exact(ax: Any, m: _Measured, key: str) -> None:
    """A log axis cannot show an error of 0: mark those (mode, k) with a triangle on the bottom edge instead."""
    from matplotlib.transforms import blended_transform_factory

    at_bottom = blended_transform_factory(ax.transData, ax.transAxes)
    labelled = False
    for i, mode in enumerate(m.modes):
        exact = [k for k in m.ks if getattr(m.cells[mode, k].row, key) == 0]
        if exact:
            nudge = 2 ** (0.1 * (i - (len(m.modes) - 1) / 2))  # side by side when several modes are exact
            label = None if labelled else "error 0 (exact), on the bottom edge"
            xs = [k * nudge for k in exact]
            ax.plot(xs, [0.02] * len(xs), "v", ms=8, color=_MODE_COLOURS[mode], transform=at_bottom, label=label)
            labelled = True


def _errors_figure(new_figure: Callable, m: _Measured) -> Any:
    samples = m.img.width * m.img.height * 3
    fig = new_figure(figsize=(14, 5.4))
    ax_l1, ax_l2 = fig.subplots(1, 2)
    specs = (
        (ax_l1, "l1", "Absolute error (L1)", "L1 = \u03a3|\u0394| over all samples (levels)", "mean |\u0394|", 1.0),
        (
            ax_l2,
            "l2",
            "L2 error (\u221a\u03a3\u0394\u00b2)",
            "L2 = \u221a(\u03a3\u0394\u00b2) over all samples (levels)",
            "RMSE",
            0.5,
        ),
    )
    for ax, key, title, ylabel, per_sample, power in specs:
        any_positive = False
        for mode in m.modes:
            values = [getattr(m.cells[mode, k].row, key) for k in m.ks]
            any_positive |= any(v > 0 for v in values)
            # a log axis clips a segment to 0 into a false vertical drop: break the line there (see _mark_exact)
            shown = [v if v > 0 else math.nan for v in values]
            ax.plot(m.ks, shown, marker="o", lw=2, color=_MODE_COLOURS[mode], label=mode)
        _k_axis(ax, m.ks)
        if any_positive:
            _plain_log_y(ax)
            _mark_exact(ax, m, key)
        scale = samples**power  # L1 / N is the mean |delta|; L2 / sqrt(N) is the RMSE
        right = ax.secondary_yaxis("right", functions=(lambda v, s=scale: v / s, lambda v, s=scale: v * s))
        _plain_labels(right.yaxis)
        right.set_ylabel(f"{per_sample} per sample (levels, 0\u2013255 scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(title="mode")
    fig.suptitle(f"Error against k ({samples:,} samples: {m.img.width}\u00d7{m.img.height} pixels \u00d7 3 channels)")
    return fig


_QPNG = "PNG (palette up to 256 colours)"


def _size_text(n: int) -> str:
    """Bytes as a short label: 498 bytes, 12.3 kB, 481 kB, 2.61 MB (1 kB = 1000 bytes)."""
    if n < 1000:
        return f"{n} bytes"
    if n < 100_000:
        return f"{n / 1e3:.3g} kB"
    if n < 1_000_000:
        return f"{n / 1e3:.0f} kB"
    return f"{n / 1e6:.3g} MB"


_LABEL_OFFSETS = ((5, -12), (-14, 5), (6, 3))  # points: where each mode's k labels sit from its markers


def _tradeoff_figure(new_figure: Callable, m: _Measured) -> Any:
    """PSNR against .kq bytes (rate-distortion): which mode and k give the best image for the bytes."""
    from matplotlib.transforms import blended_transform_factory

    fig = new_figure(figsize=(11, 6.4))
    ax = fig.subplots()
    at_top = blended_transform_factory(ax.transData, ax.transAxes)
    exact_labelled = False
    for mode in m.modes:
        rows = [m.cells[mode, k].row for k in m.ks]
        finite = [r for r in rows if math.isfinite(r.psnr)]
        colour = _MODE_COLOURS[mode]
        ax.plot([r.kq_bytes / _KB for r in finite], [r.psnr for r in finite], "o-", lw=2, color=colour, label=mode)
        dx, dy = _LABEL_OFFSETS[m.modes.index(mode) % len(_LABEL_OFFSETS)]  # modes' labels apart
        for r in finite:
            ax.annotate(
                f"{r.k}",
                (r.kq_bytes / _KB, r.psnr),
                textcoords="offset points",
                xytext=(dx, dy),
                fontsize=9,
                color=colour,
            )
        exact = [r for r in rows if not math.isfinite(r.psnr)]
        if exact:
            ax.plot(
                [r.kq_bytes / _KB for r in exact],
                [0.98] * len(exact),
                "^",
                ms=9,
                color=colour,
                transform=at_top,
            )
            for r in exact:
                ax.annotate(f"{r.k}", (r.kq_bytes / _KB, 0.98), xycoords=at_top, textcoords="offset points",
                            xytext=(6, -4), fontsize=9, color=colour)  # fmt: skip
            exact_labelled = True
    if exact_labelled:  # one legend entry for every mode's triangles, in no mode's colour
        ax.plot([], [], "^", ms=9, color="#555555", label="exact copy (PSNR \u221e), on the top edge")
    ax.axvline(
        m.png_original_bytes / _KB,
        color="black",
        ls="-.",
        lw=1.2,
        label=f"PNG of the original ({_size_text(m.png_original_bytes)})",
    )
    ax.set_xscale("log")
    _plain_labels(ax.xaxis)
    ax.set_xlabel(".kq file size (kB, 1 kB = 1000 bytes), log scale")
    ax.set_ylabel("PSNR (dB, higher is closer to the original)")
    ax.set_title("Quality against file size (numbers next to the points: k); up and to the left is better")
    ax.legend(title="mode", loc="upper left", fontsize=10)  # small and sharp: no curve goes there
    return fig


def _sizes_figure(new_figure: Callable, m: _Measured) -> Any:
    n = len(m.modes)
    fig = new_figure(figsize=(14, 5.2 * math.ceil((n + 1) / 2)))
    axes = fig.subplots(math.ceil((n + 1) / 2), 2, squeeze=False).reshape(-1)
    original_kb = m.png_original_bytes / _KB
    webp = f"WebP lossless (method {WEBP_OPTIONS['method']}, quality {WEBP_OPTIONS['quality']})"
    size_axes = axes[:n]
    for ax, mode in zip(size_axes, m.modes, strict=True):
        rows = [m.cells[mode, k].row for k in m.ks]
        ax.plot(m.ks, [r.kq_bytes / _KB for r in rows], "o-", lw=2.5, color=_MODE_COLOURS[mode], label=".kq")
        ax.plot(m.ks, [r.png_quantized_bytes / _KB for r in rows], "s--", color="#555555", label=_QPNG)
        ax.plot(m.ks, [r.webp_bytes / _KB for r in rows], "^:", lw=2, color="#8c564b", label=webp)
        ax.axhline(
            original_kb,
            color="black",
            ls="-.",
            lw=1.2,
            label=f"PNG of the original ({_size_text(m.png_original_bytes)})",
        )
        _k_axis(ax, m.ks)
        _plain_log_y(ax)
        ax.set_ylabel("file size (kB, 1 kB = 1000 bytes)")
        ax.set_title(f"{mode} mode: file size of the quantized image")
        ax.legend(loc="best", fontsize=10)
    low = min(min(r.kq_bytes, r.png_quantized_bytes, r.webp_bytes) for r in m.rows()) / _KB
    for ax in size_axes:  # one scale for all modes, so the panels compare at a glance
        ax.set_ylim(low / 2, original_kb * 2)
    ax = axes[n]
    for mode in m.modes:
        ax.plot(m.ks, [m.cells[mode, k].row.ratio for k in m.ks], "o-", lw=2, color=_MODE_COLOURS[mode], label=mode)
    ax.axhline(1.0, color="black", ls="-.", lw=1.2, label="same size as the original's PNG")
    _k_axis(ax, m.ks)
    _plain_log_y(ax)
    ax.set_ylabel("PNG of the original / .kq (times smaller)")
    ax.set_title("Compression ratio of .kq against the original's PNG")
    ax.legend(title="mode", loc="best", fontsize=10)
    for extra in axes[n + 1 :]:
        extra.axis("off")
    fig.suptitle("File size against k: .kq, PNG and WebP lossless of the quantized image")
    return fig


def _hist_k(ks: tuple[int, ...]) -> int:
    return 8 if 8 in ks else ks[len(ks) // 2]


def _histograms_figure(new_figure: Callable, m: _Measured) -> Any:
    k = _hist_k(m.ks)
    rows = [("original", m.histogram, None)]
    rows += [(f"{mode}, k = {k}", m.cells[mode, k].histogram, mode) for mode in m.modes]
    columns = [("all channels pooled", "#444444", None)]
    columns += [(f"{name} channel", colour, c) for c, (name, colour) in enumerate(_CHANNELS)]
    fig = new_figure(figsize=(15, 2.6 * len(rows) + 1.0))
    axes = fig.subplots(len(rows), len(columns), squeeze=False, sharex=True)
    values = np.arange(256)
    for r, (row_label, hist, mode) in enumerate(rows):
        for c, (col_label, colour, channel) in enumerate(columns):
            ax = axes[r][c]
            counts = hist.sum(axis=0) if channel is None else hist[channel]
            share = 100.0 * counts / max(int(counts.sum()), 1)
            if mode is None:  # the original: a continuous distribution
                ax.fill_between(values, share, step="mid", color=colour, alpha=0.55, lw=0)
                ax.step(values, share, where="mid", color=colour, lw=0.8)
            else:  # quantized: a few levels, drawn as spikes at their values
                levels = np.flatnonzero(counts)
                ax.vlines(levels, 0, share[levels], color=colour, lw=2)
                ax.plot(levels, share[levels], "o", color=colour, ms=4)
            ax.set_xlim(-3, 258)
            ax.set_ylim(0, None)
            ax.set_xticks([0, 64, 128, 192, 255])
            if r == 0:
                ax.set_title(col_label)
            if c == 0:
                ax.set_ylabel(f"{row_label}\n% of samples", color=_MODE_COLOURS.get(mode, "black"))
            if r == len(rows) - 1:
                ax.set_xlabel("intensity (0\u2013255)")
    fig.suptitle(f"Intensity histograms: the original (top row) and quantized at k = {k} in each mode")
    return fig


def _palette_rows(m: _Measured, mode: str) -> list[tuple[str, np.ndarray]]:
    """(label, (n, 3) uint8 swatch colours) for each row of the palette figure's panel for ``mode``."""
    rows = []
    for k in m.ks:
        table = m.cells[mode, k].table
        if mode == "rgb":
            rows.append((f"k = {k}", table))
        elif mode == "global":
            rows.append((f"k = {k}", np.repeat(table[:, None], 3, axis=1)))
        else:
            for c, (name, _) in enumerate(_CHANNELS):
                swatch = np.zeros((table[c].size, 3), dtype=np.uint8)
                swatch[:, c] = table[c]  # a level of channel c shown as that primary at that intensity
                rows.append((f"k = {k}  {name}" if c == 0 else name, swatch))
    return rows


def _palettes_figure(new_figure: Callable, m: _Measured) -> Any:
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    panels = [(mode, _palette_rows(m, mode)) for mode in m.modes]
    width = max(m.ks)
    gap = 0.6  # between the k groups of the channel panel (three rows each)

    def row_tops(mode: str, count: int) -> list[float]:
        step = 3 if mode == "channel" else count
        return [i + gap * (i // step) for i in range(count)]

    heights = [row_tops(mode, len(rows))[-1] + 2.5 for mode, rows in panels]
    fig = new_figure(figsize=(14, 0.34 * sum(heights) + 1.2))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    titles = {
        "rgb": "rgb mode: the palette (colours, dark to light)",
        "global": "global mode: the intensity levels shared by R, G and B",
        "channel": "channel mode: the levels of each channel (shown in that primary colour)",
    }
    for ax, (mode, rows) in zip(axes, panels, strict=True):
        tops = row_tops(mode, len(rows))
        patches, colours = [], []
        for y, (_, swatch) in zip(tops, rows, strict=True):
            for x, colour in enumerate(swatch):
                patches.append(Rectangle((x + 0.06, y + 0.08), 0.88, 0.84))
                colours.append(colour / 255.0)
            ax.text(width + 0.3, y + 0.5, f"{len(swatch)}", va="center", fontsize=10, color="#333333")
        if patches:
            ax.add_collection(PatchCollection(patches, facecolors=colours, edgecolors="#999999", linewidths=0.5))
        ax.set_xlim(0, width + 1.6)
        ax.set_ylim(tops[-1] + 1, 0)
        ax.set_yticks([y + 0.5 for y in tops], labels=[label for label, _ in rows])
        ax.set_xticks([])
        ax.grid(False)
        for side in ("top", "right", "bottom"):
            ax.spines[side].set_visible(False)
        ax.set_title(titles[mode], loc="left", color=_MODE_COLOURS[mode])
    fig.suptitle("Learned tables at each k (the number at the right of a row: entries used)")
    return fig


# -- HTML ------------------------------------------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; padding: 1.5em;
       max-width: 1240px; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
figure { margin: 1em 0; }
figure img { width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 0.95em; margin-top: 0.3em; }
table { border-collapse: collapse; font-size: 0.92em; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #e4e4e4; }
th { background: #f4f4f4; text-align: left; }
table.numbers td.n { text-align: right; font-variant-numeric: tabular-nums; }
table.numbers tr.first td { border-top: 2px solid #bbb; }
table.facts th { background: none; font-weight: 600; }
code { background: #f4f4f4; padding: 0 0.25em; }
"""


def _fmt_psnr(psnr: float) -> str:
    return "\u221e" if math.isinf(psnr) else f"{psnr:.2f}"


def _table_html(rows: list[ReportRow]) -> str:
    head = (
        "<tr><th>mode</th><th>k</th><th>colours / levels used</th><th>.kq bytes</th><th>payload</th>"
        "<th>ratio (PNG of original / .kq)</th><th>quantized PNG bytes</th><th>WebP lossless bytes</th>"
        "<th>L1 (levels)</th><th>L2 (levels)</th><th>MSE (levels\u00b2)</th><th>PSNR (dB)</th></tr>"
    )
    body = []
    previous = None
    for r in rows:
        cls = ' class="first"' if previous is not None and r.mode != previous else ""
        previous = r.mode
        cells = [
            f"<td>{r.mode}</td>",
            f'<td class="n">{r.k}</td>',
            f'<td class="n">{r.colours}</td>',
            f'<td class="n">{r.kq_bytes:,}</td>',
            f"<td>{r.payload}</td>",
            f'<td class="n">{r.ratio:.2f}</td>',
            f'<td class="n">{r.png_quantized_bytes:,}</td>',
            f'<td class="n">{r.webp_bytes:,}</td>',
            f'<td class="n">{r.l1:,}</td>',
            f'<td class="n">{r.l2:,.1f}</td>',
            f'<td class="n">{r.mse:.2f}</td>',
            f'<td class="n">{_fmt_psnr(r.psnr)}</td>',
        ]
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    rows_html = "\n".join(body)
    return f'<table class="numbers" id="numbers">\n<thead>{head}</thead>\n<tbody>\n{rows_html}\n</tbody></table>'


def _html(m: _Measured, title: str, input_name: str, input_bytes: int | None, source_mode: str, workers: int) -> str:
    e = html.escape
    mp = m.img.width * m.img.height / 1e6
    size = f"{m.img.width}\u00d7{m.img.height} px ({mp:.2f} MP), {source_mode}"
    if source_mode != "RGB":
        size += " (converted to RGB for the report)"
    facts = [
        ("input", e(input_name)),
        ("image", e(size)),
        ("file size", f"{input_bytes:,} bytes" if input_bytes is not None else "(not from a file)"),
        ("PNG of the original", f"{m.png_original_bytes:,} bytes (Pillow, <code>optimize=True</code>)"),
        ("k", ", ".join(map(str, m.ks))),
        ("modes", ", ".join(m.modes)),
        ("seed", str(m.seed)),
        ("WebP lossless", f"Pillow, method {WEBP_OPTIONS['method']}, quality (effort) {WEBP_OPTIONS['quality']}"),
        ("histograms", f"k = {_hist_k(m.ks)}"),
        ("worker threads", str(workers)),
    ]
    fact_rows = "\n".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in facts)
    webp = f"WebP lossless (method {WEBP_OPTIONS['method']})"
    figures = [
        (
            "Quantized images",
            "grid",
            "Each row is a quantization mode, each column a k. Every image was quantized at full resolution and "
            "downscaled for display; the PSNR (dB, higher is closer to the original) is of the full image.",
        ),
        (
            "Quality against file size",
            "tradeoff",
            "PSNR of each quantized image against the bytes of its <code>.kq</code> file, one line per mode, each "
            "point labelled with its k. Up and to the left is better: at a given file size, the highest line is "
            "the mode to use. Exact copies (PSNR \u221e) sit on the top edge.",
        ),
        (
            "Error against k",
            "errors",
            "Left: absolute error L1 = \u03a3|\u0394| over all samples; right: L2 = \u221a(\u03a3\u0394\u00b2). "
            "Errors are in intensity levels (0\u2013255); the right-hand axes give the same curves per sample "
            "(mean |\u0394| and RMSE). Log scales.",
        ),
        (
            "File size against k",
            "sizes",
            f"Bytes of the <code>.kq</code> file, a PNG (a palette PNG up to 256 colours) and {webp} of the same "
            "quantized pixels, and the PNG "
            "of the original as a reference line (kB = 1000 bytes). Last panel: how many times smaller the "
            "<code>.kq</code> file is than the original's PNG.",
        ),
        (
            "Intensity histograms",
            "histograms",
            f"Share of samples at each intensity, for all channels pooled and per channel: the original, then "
            f"the image quantized at k = {_hist_k(m.ks)} in each mode (its samples sit on a few levels).",
        ),
        (
            "Learned palettes",
            "palettes",
            "The colours (rgb) and intensity levels (global, channel) the quantizer learned at each k, as far as "
            "the image uses them.",
        ),
    ]
    parts = []
    for heading, key, caption in figures:
        parts.append(
            f'<h2>{heading}</h2>\n<figure><a href="{FIGURES[key]}"><img src="{FIGURES[key]}" alt="{e(heading)}"></a>'
            f"<figcaption>{caption} (Click for full size.)</figcaption></figure>"
        )
        if key == "sizes":
            parts.append(
                "<h2>Numbers</h2>\n<p>Measured on the full-resolution image. L1 = \u03a3|\u0394|, L2 = "
                "\u221a(\u03a3\u0394\u00b2) over all samples, in intensity levels; MSE per sample; PSNR against a peak "
                "of 255. ratio = bytes of the original's PNG / bytes of the <code>.kq</code> file. The same numbers, "
                'unformatted: <a href="numbers.csv">numbers.csv</a>.</p>\n' + _table_html(m.rows())
            )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{e(title)}</h1>
<p>How the image looks, how far it is from the original and how many bytes it takes when quantized with
k-means at each k, in the three modes of <code>kquant_codec</code>: <b>global</b> ({_MODE_NOTES["global"]}),
<b>channel</b> ({_MODE_NOTES["channel"]}) and <b>rgb</b> ({_MODE_NOTES["rgb"]}).</p>
<table class="facts">
{fact_rows}
</table>
{chr(10).join(parts)}
</body>
</html>
"""


def _csv(rows: list[ReportRow]) -> str:
    buf = io.StringIO()
    names = list(asdict(rows[0]))
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: repr(v) if isinstance(v, float) else v for key, v in asdict(row).items()})
    return buf.getvalue()


# -- writing ---------------------------------------------------------------------------------------


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} exists and is not a folder")
    for name in REPORT_FILES:  # found before any file is written: a half-replaced report would mislead
        target = out_dir / name
        if target.exists() and not target.is_file():
            raise OutputExistsError(f"{target} is in the way: it is not a file")
    if out_dir.is_dir() and not force:
        present = [name for name in REPORT_FILES if (out_dir / name).exists()]
        if present:
            raise OutputExistsError(
                f"{out_dir} already holds a report ({', '.join(present)}); use --force to overwrite"
            )


def _write(path: Path, data: bytes, force: bool) -> None:
    try:
        with atomic_output(path, force=force) as fh:
            fh.write(data)
    except OutputExistsError:
        raise
    except OSError as exc:
        raise ReportWriteError(f"{path}: cannot write: {exc.strerror or exc}") from exc


def write_report(
    img: Image.Image,
    out_dir: str | os.PathLike,
    *,
    title: str | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    modes: Sequence[str] = REPORT_MODES,
    seed: int = 0,
    input_name: str | None = None,
    input_bytes: int | None = None,
    force: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Measure ``img`` at every (mode, k) and write the report into ``out_dir``; returns the index.html path.

    Writes ``index.html``, ``numbers.csv`` and the figures ``grid.png``, ``errors.png``, ``sizes.png``,
    ``histograms.png``, ``palettes.png`` (``REPORT_FILES``), each atomically; the folder is created if needed.
    A non-RGB image is converted to RGB first (alpha dropped). ``ks``: 1..256 each; ``modes``: any of
    "global", "channel", "rgb". ``workers``: threads for the measurements (default: one per core, at most
    4); the results do not depend on it. ``progress``: a tqdm bar on stderr.

    Raises ``OutputExistsError`` when ``out_dir`` already holds report files and ``force`` is false (or is
    not a folder), ``PlotsMissingError`` without matplotlib, ``ReportWriteError`` when a file cannot be
    written, ``ValueError`` for bad parameters.
    """
    from tqdm import tqdm

    ks_ = _check_ks(ks)
    modes_ = _check_modes(modes)
    _check_seed_workers(seed, workers)
    out = Path(out_dir)
    _check_out_dir(out, force)
    Figure, FigureCanvasAgg = _import_matplotlib()
    from matplotlib import rc_context

    def new_figure(**kwargs: Any) -> Any:
        fig = Figure(layout="constrained", **kwargs)
        FigureCanvasAgg(fig)
        return fig

    source_mode = img.mode
    name = input_name or "image"
    threads = workers or _default_workers()
    steps = len(ks_) * len(modes_) + 1 + len(FIGURES) + 1
    with tqdm(total=steps, desc="kquant report", unit="step", file=sys.stderr, disable=not progress) as bar:

        def step(label: str) -> None:
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)

        measured = _measure(img, ks_, modes_, seed, threads, step)
        drawers = {
            "grid": _grid_figure,
            "tradeoff": _tradeoff_figure,
            "errors": _errors_figure,
            "sizes": _sizes_figure,
            "histograms": _histograms_figure,
            "palettes": _palettes_figure,
        }
        images: dict[str, bytes] = {}
        with rc_context(_STYLE):
            for key, draw in drawers.items():
                images[FIGURES[key]] = _png_of(draw(new_figure, measured))
                step(FIGURES[key])
        page = _html(measured, title or f"kquant report: {name}", name, input_bytes, source_mode, threads)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReportWriteError(f"{out}: cannot create the folder: {exc.strerror or exc}") from exc
        for filename, data in images.items():
            _write(out / filename, data, force)
        _write(out / "numbers.csv", _csv(measured.rows()).encode(), force)
        _write(out / "index.html", page.encode(), force)  # last: a complete index means a complete report
        step("index.html")
    return out / "index.html"
