"""``kquant report`` / ``kquant_codec.report``: the files, the page, the numbers against independent
references, the CLI's exit codes and the missing-matplotlib message.

One report of a small crop of china.jpg is written once per module (figures cost a few seconds each run).
"""

from __future__ import annotations

import csv
import io
import math
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kquant_codec import absolute_error, encode_image, l2_error, mse, psnr, quantize_image
from kquant_codec.cli import main
from kquant_codec.measure import png_bytes
from kquant_codec.report import (
    FIGURES,
    PLOTS_HINT,
    REPORT_FILES,
    WEBP_OPTIONS,
    PlotsMissingError,
    measure_report,
    write_report,
)

pytest.importorskip("matplotlib")

KS = (2, 4, 8, 16, 32, 64)
MODES = ("global", "channel", "rgb")


@pytest.fixture(scope="module")
def small(china) -> Image.Image:
    """A 120x80 crop with sky, roof and trees: many colours, fast to measure."""
    return china.crop((260, 150, 380, 230))


@pytest.fixture(scope="module")
def report(small, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "r"
    index = write_report(small, out, input_name="crop <of> china.jpg", progress=False)
    assert index == out / "index.html"
    return out


class _Page(HTMLParser):
    """Collects every src/href, the <style>/<script>/<link> tags, and the cells of table#numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []
        self.rows: list[list[str]] = []
        self._in_numbers = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.refs += [attrs[a] for a in ("src", "href") if a in attrs]
        if tag == "table" and attrs.get("id") == "numbers":
            self._in_numbers = True
        elif self._in_numbers and tag == "tr":
            self.rows.append([])
        elif self._in_numbers and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_numbers = False
        elif tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _page(report: Path) -> tuple[str, _Page]:
    text = (report / "index.html").read_text(encoding="utf-8")
    parser = _Page()
    parser.feed(text)
    return text, parser


def _int(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_all_files_exist_and_figures_are_valid_pngs(report):
    assert sorted(p.name for p in report.iterdir()) == sorted(REPORT_FILES)  # no stray temporary files
    for name in FIGURES.values():
        with Image.open(report / name) as fig:
            assert fig.format == "PNG"
            fig.verify()
        with Image.open(report / name) as fig:
            fig.load()
            width, height = fig.size
            assert 900 <= width <= 2400 and 300 <= height <= 2400, (name, fig.size)
            extrema = fig.convert("L").getextrema()
            assert extrema[1] - extrema[0] > 100, f"{name} looks blank"


def test_html_references_every_figure_and_nothing_external(report):
    text, page = _page(report)
    for name in FIGURES.values():
        assert name in page.refs
    assert "numbers.csv" in page.refs
    for ref in page.refs:
        assert "/" not in ref and ":" not in ref, ref  # same folder, relative
        assert (report / ref).is_file(), ref
    assert not re.search(r"https?:|//[a-z]|url\(|@import", text, re.IGNORECASE)
    assert "script" not in page.tags and "link" not in page.tags
    assert "style" in page.tags
    assert "crop &lt;of&gt; china.jpg" in text  # the input's name, escaped
    assert "120\u00d780 px" in text
    assert f"method {WEBP_OPTIONS['method']}" in text


def test_table_numbers_equal_independent_references(report, small):
    _, page = _page(report)
    header, *rows = page.rows
    col = {name.split(" (")[0]: i for i, name in enumerate(header)}
    assert [(r[col["mode"]], int(r[col["k"]])) for r in rows] == [(m, k) for m in MODES for k in KS]
    original_png = png_bytes(small, palette=False)
    assert f"{original_png:,} bytes" in (report / "index.html").read_text(encoding="utf-8")
    for r in rows:
        mode, k = r[col["mode"]], int(r[col["k"]])
        kq = encode_image(small, k=k, mode=mode)
        quantized = quantize_image(small, k, mode)  # a second, independent fit: the single-image path
        assert _int(r[col[".kq bytes"]]) == len(kq)
        assert r[col["ratio"]] == f"{original_png / len(kq):.2f}"
        assert _int(r[col["quantized PNG bytes"]]) == png_bytes(quantized)
        buf = io.BytesIO()
        quantized.save(buf, format="WEBP", **WEBP_OPTIONS)
        assert _int(r[col["WebP lossless bytes"]]) == buf.tell()
        assert _int(r[col["L1"]]) == absolute_error(small, quantized)
        assert r[col["L2"]] == f"{l2_error(small, quantized):,.1f}"
        assert r[col["MSE"]] == f"{mse(small, quantized):.2f}"
        expected_psnr = psnr(small, quantized)
        assert r[col["PSNR"]] == ("\u221e" if math.isinf(expected_psnr) else f"{expected_psnr:.2f}")
        colours = len(quantized.getcolors(1 << 24)) if mode == "rgb" else None
        if colours is not None:
            assert int(r[col["colours / levels used"]]) == colours


def test_csv_holds_the_exact_numbers(report, small):
    with open(report / "numbers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(MODES) * len(KS)
    for row in rows:
        quantized = quantize_image(small, int(row["k"]), row["mode"])
        assert int(row["l1"]) == absolute_error(small, quantized)
        assert float(row["mse"]) == mse(small, quantized)  # exact: the same formula on the same integers
        assert float(row["psnr"]) == psnr(small, quantized)
        assert float(row["l2"]) == l2_error(small, quantized)


def test_results_do_not_depend_on_threads(small):
    one = measure_report(small, ks=(2, 5), workers=1)
    two = measure_report(small, ks=(5, 2), workers=2)
    assert one == two
    assert [(r.mode, r.k) for r in one] == [(m, k) for m in MODES for k in (2, 5)]


def test_bad_parameters_name_themselves(small, tmp_path):
    with pytest.raises(ValueError, match="k"):
        write_report(small, tmp_path / "a", ks=(0, 4), progress=False)
    with pytest.raises(ValueError, match="mode"):
        write_report(small, tmp_path / "b", modes=("hsv",), progress=False)
    with pytest.raises(ValueError, match="workers"):
        write_report(small, tmp_path / "c", workers=0, progress=False)
    assert not any(tmp_path.iterdir())


def test_missing_matplotlib_is_one_clear_message(small, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` sees when not installed
    with pytest.raises(PlotsMissingError, match=re.escape('pip install -e ".[plots]"')):
        write_report(small, tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
    small.save(tmp_path / "in.png")
    assert main(["report", str(tmp_path / "in.png"), "-o", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == f"kquant: error: {PLOTS_HINT}\n"
    assert not (tmp_path / "r").exists()


def test_cli_exit_codes(small, tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.png"), "-o", str(tmp_path / "r"), "--no-progress"]) == 3
    assert "missing.png: no such file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()

    src = tmp_path / "in.png"
    small.save(src)
    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "index.html").write_text("an earlier report")
    assert main(["report", str(src), "-o", str(existing), "--no-progress"]) == 4
    err = capsys.readouterr().err
    assert err.startswith("kquant: error: ") and "--force" in err and err.count("\n") == 1
    assert (existing / "index.html").read_text() == "an earlier report"
    assert sorted(p.name for p in existing.iterdir()) == ["index.html"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["report", str(src), "-o", str(a_file), "--no-progress"]) == 4
    assert "not a folder" in capsys.readouterr().err


def test_cli_writes_a_report_and_force_overwrites(small, tmp_path, capsys):
    src = tmp_path / "in.png"
    small.save(src)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a non-empty folder without report files is fine
    argv = ["report", str(src), "-o", str(out), "-k", "2", "8"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert "index.html" in printed.out
    assert "kquant report" in printed.err and "100%" in printed.err  # the progress bar, on stderr
    argv.append("--no-progress")
    assert sorted(p.name for p in out.iterdir()) == sorted([*REPORT_FILES, "notes.txt"])
    first = (out / "numbers.csv").read_bytes()
    assert main(argv) == 4  # now it holds a report
    capsys.readouterr()
    assert main([*argv, "--force"]) == 0
    assert (out / "numbers.csv").read_bytes() == first  # deterministic
    assert (out / "notes.txt").read_text() == "mine"
    assert capsys.readouterr().err == ""


def test_figures_plot_the_measured_numbers_and_break_lines_at_an_exact_zero(small):
    """The quality-size figure's points are (kq bytes / 1000, PSNR) of the table, exact copies off the line; an
    error of 0 breaks the error line (a log axis drew it as a false drop at the previous k)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from kquant_codec import report as rep

    def new_figure(**kwargs):
        fig = Figure(**kwargs)
        FigureCanvasAgg(fig)
        return fig

    ks = (2, 16, 256)
    m = rep._measure(small, ks, MODES, 0, 2, None)
    (ax,) = rep._tradeoff_figure(new_figure, m).axes
    lines = {line.get_label(): line for line in ax.lines}
    for mode in MODES:
        rows = [m.cells[mode, k].row for k in ks]
        finite = [r for r in rows if math.isfinite(r.psnr)]
        assert list(lines[mode].get_xdata()) == [r.kq_bytes / 1000 for r in finite]
        assert list(lines[mode].get_ydata()) == [r.psnr for r in finite]
    assert len(finite) == 3 and m.cells["global", 256].row.psnr == math.inf  # the crop is exact at k = 256 (global)
    ax_l1, _ = rep._errors_figure(new_figure, m).axes[:2]
    global_line = next(line for line in ax_l1.lines if line.get_label() == "global")
    ys = list(global_line.get_ydata())
    assert ys[:2] == [m.cells["global", k].row.l1 for k in (2, 16)] and math.isnan(ys[2])


def test_the_cli_default_ks_are_the_library_defaults():
    from kquant_codec.cli import build_parser
    from kquant_codec.report import DEFAULT_KS

    args = build_parser().parse_args(["report", "-o", "out"])
    assert tuple(args.k) == DEFAULT_KS


def test_thin_images_input_inside_the_folder_and_files_in_the_way(tmp_path, capsys):
    """A 1x2000 image drew a 460x276,250-pixel grid (2 GB); --force wrote the report over its own input when
    the input sat in the folder as grid.png; a folder named sizes.png failed the run halfway, leaving a mix
    of new and old files."""
    rng = np.random.default_rng(0)
    tall = tmp_path / "tall.png"
    Image.fromarray(rng.integers(0, 256, (2000, 1, 3), dtype=np.uint8)).save(tall)
    out = tmp_path / "r"
    assert main(["report", str(tall), "-o", str(out), "-k", "2", "--no-progress"]) == 0
    width, height = Image.open(out / "grid.png").size
    assert width * height < 2_000_000  # three rows of cells at most 3:1 (was 127 megapixels)
    inside = tmp_path / "r2"
    inside.mkdir()
    (inside / "grid.png").write_bytes(tall.read_bytes())
    assert main(["report", str(inside / "grid.png"), "-o", str(inside), "-k", "2", "--force", "--no-progress"]) == 4
    assert (inside / "grid.png").read_bytes() == tall.read_bytes()
    assert "it is the input file" in capsys.readouterr().err
    (out / "numbers.csv").unlink()
    (out / "numbers.csv").mkdir()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["report", str(tall), "-o", str(out), "-k", "4", "--force", "--no-progress"]) == 4
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written
    assert "in the way" in capsys.readouterr().err
