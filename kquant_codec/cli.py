"""The ``kquant`` command line: encode, decode, info, bench, demo, report, batch and palette.

Uses only the package's public API.

Exit codes: 0 success; 1 internal failure; 2 usage error; 3 input missing, unreadable or not a valid
image; 4 output refused (exists without --force, is the input) or cannot be written; 5 ``kquant batch``
finished but some files failed (the others were written); 130 interrupted (Ctrl-C); 143 ``kquant batch``
stopped by SIGTERM.
Errors are one line on stderr, never a traceback (set KQUANT_DEBUG=1 to see one).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_OUTPUT = 4
EXIT_INTERRUPTED = 130

MODES = ("rgb", "global", "channel")


class CliError(Exception):
    """An error to report in one line, with the exit code to leave with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        # a usage error prints the command's usage line first; a missing optional extra (also exit 2) does not
        self.show_usage = code == EXIT_USAGE and "pip install" not in message


def _sample_image(name: str = "china.jpg"):
    """A photo that ships inside scikit-learn (no download), as a Pillow RGB image."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(name))


def _check_input_path(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise CliError(f"{path}: no such file", EXIT_INPUT)
    if p.is_dir():
        raise CliError(f"{path}: is a directory", EXIT_INPUT)
    return p


def _read_input(path: str) -> bytes:
    """The whole input file (for a command that reads it more than once: a pipe can be read only once)."""
    p = _check_input_path(path)
    try:
        return p.read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}", EXIT_INPUT) from None


def _open_input(path: str, data: bytes | None = None):
    """Open and load an image (from ``data``, the file's bytes, when given), turning every failure into a
    one-line input error."""
    from PIL import Image, UnidentifiedImageError

    p = _check_input_path(path) if data is None else Path(path)
    try:
        img = Image.open(p if data is None else io.BytesIO(data))
        img.load()
    except UnidentifiedImageError:
        raise CliError(f"{path}: {_why_unreadable(p if data is None else io.BytesIO(data))}", EXIT_INPUT) from None
    except Image.DecompressionBombError as exc:
        raise CliError(f"{path}: {exc}", EXIT_INPUT) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CliError(f"{path}: cannot read image: {exc}", EXIT_INPUT) from None
    return img


def _check_quantizable(img, path: str) -> None:
    """An image mode the quantizer cannot take is an input problem (exit 3), said before any work."""
    from kquant_codec.pixels import SUPPORTED_MODES

    if img.mode not in SUPPORTED_MODES:
        raise CliError(
            f"{path}: cannot quantize image mode {img.mode!r}; supported: {', '.join(SUPPORTED_MODES)}", EXIT_INPUT
        )


def _why_unreadable(source: Path | io.BytesIO) -> str:
    """What to say of a file (or its bytes) no Pillow plugin accepted: for a ``.kq`` file (by its magic) whose
    header is bad, the container's own reason (Pillow only says that no plugin took it)."""
    from kquant_codec.container import MAGIC, KqFormatError
    from kquant_codec.decoder import read_kq

    try:
        with open(source, "rb") if isinstance(source, Path) else contextlib.nullcontext(source) as f:
            is_kq = f.read(len(MAGIC)) == MAGIC
            f.seek(0)
            if is_kq:
                read_kq(f)
    except (KqFormatError, OSError) as exc:
        return f"not a valid .kq file: {exc}"
    return "not an image format this tool can read"


def _write_image(img, output: str, *, force: bool, inputs: tuple, fmt: str | None = None, **options) -> int:
    """Save ``img`` atomically to ``output``; returns the bytes written."""
    from PIL import Image

    from kquant_codec.safe_write import OutputExistsError, atomic_output, check_output_path

    try:
        check_output_path(output, force=force, inputs=inputs)
    except OutputExistsError as exc:
        raise CliError(str(exc), EXIT_OUTPUT) from None
    except OSError as exc:  # e.g. a name too long for the file system
        raise CliError(f"{output}: cannot write: {exc.strerror or exc}", EXIT_OUTPUT) from None
    if fmt is None:
        ext = Path(output).suffix.lower()
        fmt = Image.registered_extensions().get(ext)
        if fmt is None:
            raise CliError(f"{output}: unknown output format {ext or '(no extension)'!r}", EXIT_USAGE)
    # Encode in memory first: a failing encoder then leaves nothing behind at all.
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt, **options)
    except (OSError, ValueError, KeyError) as exc:
        raise CliError(f"{output}: cannot write {fmt}: {exc}", EXIT_OUTPUT) from None
    try:
        with atomic_output(output, force=force) as fh:
            fh.write(buf.getbuffer())
    except OutputExistsError as exc:
        raise CliError(str(exc), EXIT_OUTPUT) from None
    except OSError as exc:
        raise CliError(f"{output}: cannot write: {exc.strerror or exc}", EXIT_OUTPUT) from None
    return buf.tell()


def _fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"


# --- commands ----------------------------------------------------------------------------------------


def cmd_encode(args: argparse.Namespace) -> int:
    import kquant_codec as kq
    from kquant_codec.batch import encode_options

    if Path(args.output).suffix.lower() != ".kq" and not Path(args.output).is_dir():
        raise CliError(f"{args.output}: kquant encode writes .kq files; name the output *.kq", EXIT_USAGE)
    from kquant_codec.pixels import frames_problem

    img = _open_input(args.input)
    problem = frames_problem(img)
    if problem is not None:
        raise CliError(f"{args.input}: {problem}", EXIT_INPUT)
    options = encode_options(args.k, args.mode, args.seed, args.alpha)
    if args.k is not None or args.mode is not None or args.palette is not None:
        _check_quantizable(img, args.input)
    else:  # stored exactly: any mode the container holds
        from kquant_codec.container import STORABLE_MODES

        if img.mode not in STORABLE_MODES:
            storable = ", ".join(STORABLE_MODES)
            raise CliError(f"{args.input}: cannot store image mode {img.mode!r}; storable: {storable}", EXIT_INPUT)
    start = time.perf_counter()
    if args.palette is not None:  # a shared palette: every pixel its nearest palette colour, nothing learned
        from kquant_codec.quantize import check_palette_options

        try:
            options["palette"] = kq.read_palette(args.palette)
        except (ValueError, OSError) as exc:
            raise CliError(f"--palette {args.palette}: {exc}", EXIT_INPUT) from None
        try:
            check_palette_options(options["palette"], args.k, args.mode or "rgb", args.alpha or "keep")
        except ValueError as exc:
            raise CliError(f"--palette: {exc}", EXIT_USAGE) from None
        try:
            img = kq.image_for_palette(img, options["palette"])  # e.g. a grey or CMYK photo, a colour palette
        except ValueError as exc:
            raise CliError(f"{args.input}: {exc}", EXIT_INPUT) from None
    size = _write_image(img, args.output, force=args.force, inputs=(args.input,), fmt="KQ", **options)
    seconds = time.perf_counter() - start
    info = kq.kq_info(args.output)
    in_size = Path(args.input).stat().st_size
    k = f"k={info.k}, " if info.k else ""
    print(
        f"{args.output}: {size} bytes ({in_size} bytes in), {info.width}x{info.height} {info.image_mode}, "
        f"{k}mode {info.quant_mode or '-'}, {info.payload} payload, {seconds:.2f} s"
    )
    return EXIT_OK


def cmd_decode(args: argparse.Namespace) -> int:
    from PIL import Image

    from kquant_codec.pixels import for_png

    ext = Path(args.output).suffix.lower()
    if ext == ".kq":
        raise CliError(f"{args.output}: kquant decode writes plain images (.png, .bmp, ...), not .kq", EXIT_USAGE)
    if not Image.registered_extensions().get(ext):  # a usage error, found before the input is read
        raise CliError(f"{args.output}: unknown output format {ext or '(no extension)'!r}", EXIT_USAGE)
    img = _open_input(args.input)
    if img.format != "KQ":  # as info does: a converter for any image is not what this command promises
        raise CliError(f"{args.input}: not a .kq file (a {img.format} image)", EXIT_INPUT)
    if ext == ".png":
        img = for_png(img)  # indexed whenever the pixels allow one; CMYK and the like as RGB
        size = _write_image(img, args.output, force=args.force, inputs=(args.input,), fmt="PNG", optimize=True)
    else:
        size = _write_image(img, args.output, force=args.force, inputs=(args.input,))
    print(f"{args.output}: {size} bytes, {img.size[0]}x{img.size[1]} {img.mode}")
    return EXIT_OK


def _finite(value: object) -> object:
    """``value`` with every infinite or NaN float as None (JSON has no Infinity: a PSNR of an exact copy)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json(value: object) -> str:
    """Strict JSON (RFC 8259) for ``--json``: infinities as null, anything else unusual as its string."""
    return json.dumps(_finite(value), indent=2, default=str, allow_nan=False)


def cmd_info(args: argparse.Namespace) -> int:
    import kquant_codec as kq
    from kquant_codec.measure import png_bytes
    from kquant_codec.pixels import colour_key

    data = _read_input(args.input)  # once: the path may be a pipe
    img = _open_input(args.input, data)  # proves the whole file decodes (CRC included) before we report on it
    if img.format != "KQ":
        raise CliError(f"{args.input}: not a .kq file (a {img.format} image)", EXIT_INPUT)
    info = kq.kq_info(data)
    facts = dataclasses.asdict(info)
    facts["k"] = info.k  # (a property: the largest table)
    if img.mode in ("L", "RGB"):  # decoded: a PNG payload's key too, which the header alone does not show
        facts["colour_key"] = colour_key(img)
    png = png_bytes(img)
    facts["png_bytes"] = png
    facts["ratio_vs_png"] = png / max(info.file_bytes, 1)
    if args.json:
        print(_json(facts))
        return EXIT_OK
    width = max(len(key) for key in facts)
    for key, value in facts.items():
        shown = f"{value:.3f}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    from kquant_codec.measure import bench_image

    img = _open_input(args.input) if args.input else _sample_image()
    name = args.input or "china.jpg (bundled with scikit-learn)"
    _check_quantizable(img, name)
    rows = bench_image(img, args.k, args.mode, seed=args.seed)
    if args.json:
        print(_json([r.as_dict() for r in rows]))
        return EXIT_OK
    print(f"{name}: {img.size[0]}x{img.size[1]} {img.mode}; PNG of the original: {rows[0].png_original_bytes} bytes")
    print(
        "ratio = PNG bytes / .kq bytes (above 1: .kq is smaller); qPNG = PNG of the quantized pixels (a palette PNG"
        " up to 256 colours); errors over the colour bands (alpha is kept exact)"
    )
    header = (
        f"{'mode':8} {'k':>4} {'.kq bytes':>10} {'payload':>7} {'qPNG bytes':>10} {'vs PNG':>7} {'vs qPNG':>7} "
        f"{'L1':>11} {'L2':>9} {'MSE':>8} {'PSNR dB':>7} {'enc s':>6} {'dec s':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.mode:8} {r.k:4d} {r.kq_bytes:10d} {r.payload:>7} {r.png_quantized_bytes:10d} "
            f"{_fmt_ratio(r.ratio_vs_original_png):>7} {_fmt_ratio(r.ratio_vs_quantized_png):>7} "
            f"{r.l1:11d} {r.l2:9.1f} {r.mse:8.2f} {r.psnr:7.2f} {r.seconds:6.2f} {r.decode_seconds:6.3f}"
        )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Quantize a bundled photo in every mode; print k, mode, error, .kq size and time."""
    from kquant_codec.measure import bench_image

    img = _sample_image(args.image)
    print(f"{args.image}: {img.size[0]}x{img.size[1]} {img.mode} (bundled with scikit-learn, no download)")
    rows = bench_image(img, args.k, list(MODES))
    print(f"PNG of the original: {rows[0].png_original_bytes} bytes; every .kq decoded back to the same pixels")
    print(f"{'mode':8} {'k':>4} {'MSE':>8} {'PSNR dB':>8} {'.kq bytes':>10} {'vs PNG':>7} {'enc s':>6} {'dec s':>6}")
    for r in rows:
        print(
            f"{r.mode:8} {r.k:4d} {r.mse:8.2f} {r.psnr:8.2f} {r.kq_bytes:10d} "
            f"{_fmt_ratio(r.ratio_vs_original_png):>7} {r.seconds:6.2f} {r.decode_seconds:6.3f}"
        )
    from kquant_codec import kernel_backend

    how = {"aot": "built at install", "jit": "compiled by numba on first use, cached"}[kernel_backend()]
    print(f"compiled kernels: {kernel_backend()} ({how})")
    return EXIT_OK


# --- report, batch, palette (issue 7) ---------------------------------------------------------------


def cmd_report(args: argparse.Namespace) -> int:
    """HTML page + PNG figures for choosing k and mode (kquant_codec.report).

    A missing matplotlib is exit 2, like the other commands' missing extras.
    """
    from kquant_codec.report import REPORT_FILES, PlotsMissingError, ReportWriteError, write_report
    from kquant_codec.safe_write import OutputExistsError

    if args.input:
        img = _open_input(args.input)
        _check_quantizable(img, args.input)  # (a 16-bit image would be clipped to white by its RGB conversion)
        for report_file in REPORT_FILES:
            target = Path(args.output) / report_file
            if target.exists() and os.path.samefile(target, args.input):
                raise CliError(f"refusing to write {target}: it is the input file", EXIT_OUTPUT)
        name, size = Path(args.input).name, Path(args.input).stat().st_size
    else:
        img, name, size = _sample_image(), "china.jpg (bundled with scikit-learn)", None
    start = time.perf_counter()
    try:
        index = write_report(
            img, args.output, ks=args.k, seed=args.seed, input_name=name, input_bytes=size, force=args.force,
            progress=not args.no_progress,
        )  # fmt: skip
    except OutputExistsError as exc:
        raise CliError(str(exc), EXIT_OUTPUT) from None
    except ReportWriteError as exc:
        raise CliError(str(exc), EXIT_OUTPUT) from None
    except PlotsMissingError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    print(f"{index}: report of {name}, {len(REPORT_FILES)} files, {time.perf_counter() - start:.1f} s")
    return EXIT_OK


def cmd_batch(args: argparse.Namespace) -> int:
    """Encode (or --decode) every image under a folder (kquant_codec.batch)."""
    from kquant_codec.batch import BatchError, run_batch

    exit_some_failed, exit_terminated = 5, 143  # see the exit codes at the top
    codes = {"usage": EXIT_USAGE, "input": EXIT_INPUT, "output": EXIT_OUTPUT}
    try:
        summary = run_batch(
            args.input_dir, args.output_dir, k=args.k, mode=args.mode, seed=args.seed, palette=args.palette,
            decode=args.decode, jobs=args.jobs, scheduler=args.scheduler, force=args.force,
            progress=not args.no_progress, summary_path=args.summary,
        )  # fmt: skip
    except BatchError as exc:
        raise CliError(str(exc), codes[exc.kind]) from None
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    for line in summary.lines():
        print(line)
    if summary.interrupted:
        print("kquant: interrupted", file=sys.stderr)
        return exit_terminated if summary.interrupted == "SIGTERM" else EXIT_INTERRUPTED
    return exit_some_failed if summary.failed else EXIT_OK


def cmd_palette(args: argparse.Namespace) -> int:
    """Shared palettes: learn one from many images, convert and show palette files (kquant_codec.palette).

    learn: INPUTs are image files or folders (searched recursively for files with an image extension Pillow
    knows; hidden files skipped); every frame of a multi-frame file counts. An input that cannot be read
    is one warning line on stderr; exit 3 only when nothing at all could be read.
    """
    from kquant_codec.palette_files import READ_EXTENSIONS, WRITE_EXTENSIONS, read_palette, write_palette
    from kquant_codec.safe_write import OutputExistsError, check_output_path

    def load(path: str):
        try:
            return read_palette(path)
        except FileNotFoundError:
            raise CliError(f"{path}: no such file", EXIT_INPUT) from None
        except (ValueError, OSError) as exc:
            text = f"{path}: {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise CliError(text if str(path) in text else f"{path}: {text}", EXIT_INPUT) from None

    def check_output(path: str, inputs: tuple = ()) -> None:
        ext = Path(path).suffix.lower()
        if ext not in WRITE_EXTENSIONS:
            raise CliError(f"{path}: palette output must end in {' or '.join(WRITE_EXTENSIONS)}", EXIT_USAGE)
        try:
            check_output_path(path, force=args.force, inputs=inputs)
        except OutputExistsError as exc:
            raise CliError(str(exc), EXIT_OUTPUT) from None

    def save(path: str, pal, inputs: tuple = ()) -> None:
        check_output(path, inputs)
        try:
            write_palette(path, pal, name=Path(path).stem, force=args.force)
        except OutputExistsError as exc:
            raise CliError(str(exc), EXIT_OUTPUT) from None
        except OSError as exc:
            raise CliError(f"{path}: cannot write: {exc.strerror or exc}", EXIT_OUTPUT) from None

    if args.palette_command == "show":
        pal = load(args.file)
        rows = [(i, f"#{r:02x}{g:02x}{b:02x}", r, g, b) for i, (r, g, b) in enumerate(pal.tolist())]
        if args.json:
            entries = [{"index": i, "hex": h, "rgb": [r, g, b]} for i, h, r, g, b in rows]
            print(json.dumps({"file": args.file, "colours": len(rows), "palette": entries}, indent=2))
        else:
            for i, h, r, g, b in rows:
                print(f"{i:3d}  {h}  {r:3d} {g:3d} {b:3d}")
        return EXIT_OK

    if args.palette_command == "convert":
        if Path(args.input).suffix.lower() not in READ_EXTENSIONS:
            raise CliError(f"{args.input}: palette input must end in one of {', '.join(READ_EXTENSIONS)}", EXIT_USAGE)
        check_output(args.output, (args.input,))
        pal = load(args.input)
        save(args.output, pal, (args.input,))
        print(f"{args.output}: {len(pal)} colours (from {args.input})")
        return EXIT_OK

    # learn
    from PIL import Image, ImageSequence

    from kquant_codec.palette import PaletteLearner

    check_output(args.output)
    start = time.perf_counter()
    image_exts = set(Image.registered_extensions())
    files: list[Path] = []
    for name in args.inputs:
        p = Path(name)
        if p.is_dir():
            found = (f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in image_exts)
            files.extend(sorted(f for f in found if not any(part.startswith(".") for part in f.relative_to(p).parts)))
        elif p.exists():
            files.append(p)
        else:
            print(f"kquant: warning: {name}: no such file or folder", file=sys.stderr)
    unique = {f.resolve(): f for f in reversed(files)}  # a file named twice (or via two folders) counts once
    files = [f for f in files if unique.get(f.resolve()) is f]
    learner = PaletteLearner(k=args.k, seed=args.seed)
    read = 0
    for path in files:
        try:
            with Image.open(path) as img:
                if getattr(img, "n_frames", 1) > 1:  # every frame must read before any is counted
                    for frame in ImageSequence.Iterator(img):
                        frame.load()
                for frame in ImageSequence.Iterator(img):
                    frame.load()
                    learner.partial_fit(frame)
            read += 1
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            print(f"kquant: warning: {path}: cannot read image: {exc}", file=sys.stderr)
    if not read:
        raise CliError(f"no image could be read from {' '.join(args.inputs)}", EXIT_INPUT)
    try:
        pal = learner.palette_
    except ValueError as exc:  # every pixel of every image fully transparent
        raise CliError(str(exc), EXIT_INPUT) from None
    save(args.output, pal)
    frames = learner.n_images_seen_
    shown = f"{read} images" + (f" ({frames} frames)" if frames != read else "")
    print(
        f"{args.output}: {len(pal)} colours learned from {shown}, {learner.n_pixels_seen_} pixels "
        f"({learner.n_colours_seen_} distinct colours), {time.perf_counter() - start:.2f} s"
    )
    return EXIT_OK


# --- parser ------------------------------------------------------------------------------------------


def _k_value(text: str) -> int:
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"k must be an integer from 1 to 256, got {text!r}") from None
    if not 1 <= k <= 256:
        raise argparse.ArgumentTypeError(f"k must be an integer from 1 to 256, got {k}")
    return k


def _seed_value(text: str) -> int:
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed must be a non-negative integer, got {text!r}") from None
    if seed < 0:
        raise argparse.ArgumentTypeError(f"seed must be a non-negative integer, got {seed}")
    return seed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kquant", description="k-means colour quantization and the compact .kq palette image format"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enc = sub.add_parser("encode", help="quantize an image and write a .kq file")
    enc.add_argument("input", help="any image Pillow can read")
    enc.add_argument("output", help="the .kq file to write")
    enc.add_argument(
        "-k", type=_k_value, default=None, help="number of centroids, 1..256 (default: lossless; 256 with --mode)"
    )
    enc.add_argument(
        "--mode", choices=MODES, default=None, help="quantization mode (default: rgb when -k is given; else lossless)"
    )
    enc.add_argument("--seed", type=_seed_value, default=0, help="k-means++ seed (default: 0)")
    enc.add_argument(
        "--alpha", choices=("keep", "quantize"), default=None, help="alpha kept exact or quantized (default: exact)"
    )
    enc.add_argument("--force", action="store_true", help="overwrite an existing output")
    enc.add_argument("--palette", metavar="FILE", help="map to this palette (.gpl, .act, .kq, ...) instead of learning")
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser("decode", help="decode a .kq file to another format (indexed PNG when possible)")
    dec.add_argument("input", help="the .kq file")
    dec.add_argument("output", help="output image; the format follows the extension")
    dec.add_argument("--force", action="store_true", help="overwrite an existing output")
    dec.set_defaults(func=cmd_decode)

    info = sub.add_parser("info", help="describe a .kq file: size, mode, k, payload, ratio against PNG")
    info.add_argument("input")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=cmd_info)

    bench = sub.add_parser("bench", help="size against PNG, error and time for each mode and k")
    bench.add_argument("input", nargs="?", help="image to measure (default: china.jpg from scikit-learn)")
    bench.add_argument(
        "-k", type=_k_value, nargs="+", default=[2, 4, 8, 16, 32, 64, 128, 256], help="values of k (default: 2 .. 256)"
    )
    bench.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES), help="modes (default: all three)")
    bench.add_argument("--seed", type=_seed_value, default=0, help="k-means++ seed (default: 0)")
    bench.add_argument("--json", action="store_true", help="print JSON")
    bench.set_defaults(func=cmd_bench)

    demo = sub.add_parser("demo", help="quantize a bundled sample photo in every mode and print the results")
    demo.add_argument(
        "--image", default="china.jpg", choices=["china.jpg", "flower.jpg"], help="bundled photo (default: china.jpg)"
    )
    demo.add_argument("-k", type=_k_value, nargs="+", default=[2, 8, 32, 256], help="values of k (default: 2 8 32 256)")
    demo.set_defaults(func=cmd_demo)

    report = sub.add_parser("report", help="HTML report with figures for choosing k and mode")
    report.add_argument("input", nargs="?", help="image to report on (default: china.jpg from scikit-learn)")
    report.add_argument("-o", "--output", required=True, help="folder for index.html and the figures")
    report.add_argument(
        "-k", type=_k_value, nargs="+", default=[2, 4, 8, 16, 32, 64], help="the k values (default: 2 4 8 16 32 64)"
    )
    report.add_argument("--seed", type=_seed_value, default=0, help="k-means++ seed (default: 0)")
    report.add_argument("--force", action="store_true", help="overwrite the report files of an earlier run")
    report.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    report.set_defaults(func=cmd_report)

    batch = sub.add_parser("batch", help="encode or decode every image under a folder, in parallel")
    batch.add_argument("input_dir", help="folder of images (searched recursively)")
    batch.add_argument("output_dir", help="folder for the outputs, same tree (a/b.png -> a/b.kq)")
    batch.add_argument("-k", type=_k_value, default=None, help="number of centroids, 1..256 (as kquant encode)")
    batch.add_argument(
        "--mode", choices=MODES, default=None, help="quantization mode (default: rgb when -k is given; else lossless)"
    )
    batch.add_argument("--seed", type=_seed_value, default=0, help="k-means++ seed (default: 0)")
    batch.add_argument("--jobs", type=int, default=1, help="worker processes (default 1; 0: one per core)")
    batch.add_argument("--palette", metavar="FILE", help="apply this shared palette instead of learning one")
    batch.add_argument("--decode", action="store_true", help="the other way: every .kq under INPUT_DIR -> PNG")
    batch.add_argument("--scheduler", metavar="ADDRESS", help="run on this Dask scheduler (pip extra: dask)")
    batch.add_argument("--summary", metavar="PATH", help="JSON summary (default: OUTPUT_DIR/kquant-batch.json)")
    batch.add_argument("--force", action="store_true", help="convert everything again, even finished outputs")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.set_defaults(func=cmd_batch)

    palette = sub.add_parser("palette", help="shared palettes: learn from many images, convert, show")
    pal_sub = palette.add_subparsers(dest="palette_command", required=True, metavar="ACTION")
    pal_learn = pal_sub.add_parser("learn", help="learn one palette from many images (files or folders)")
    pal_learn.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    pal_learn.add_argument("-k", type=_k_value, default=64, help="most palette colours, 1..256 (default: 64)")
    pal_learn.add_argument("-o", "--output", required=True, help="palette file to write: .gpl or .act")
    pal_learn.add_argument("--seed", type=_seed_value, default=0, help="k-means++ seed (default: 0)")
    pal_learn.add_argument("--force", action="store_true", help="overwrite an existing output")
    pal_show = pal_sub.add_parser("show", help="list a palette's colours: index, hex, r g b")
    pal_show.add_argument("file", help="palette file: .gpl, .act, .kq (rgb mode), palette .png/.gif")
    pal_show.add_argument("--json", action="store_true", help="print JSON")
    pal_convert = pal_sub.add_parser("convert", help="convert a palette file to .gpl or .act")
    pal_convert.add_argument("input", help="palette file: .gpl, .act, .kq (rgb mode), palette .png/.gif")
    pal_convert.add_argument("output", help="palette file to write: .gpl or .act")
    pal_convert.add_argument("--force", action="store_true", help="overwrite an existing output")
    palette.set_defaults(func=cmd_palette)
    # Usage errors found after parsing (CliError with EXIT_USAGE) print the command's usage line too, as
    # argparse does for the ones it finds.
    for parsers in (sub.choices, pal_sub.choices):
        for command in parsers.values():
            command.set_defaults(usage=command.format_usage())
    return parser


def _warn_in_one_line(message: Warning | str, category: type, *args: object, **kwargs: object) -> None:
    """Warnings (Pillow's DecompressionBombWarning, a first compile) as one line, like the errors."""
    print(f"kquant: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with 2 and a usage line on bad arguments
    shown, warnings.showwarning = warnings.showwarning, _warn_in_one_line
    try:
        return _run_command(args)
    finally:  # (main may run inside another program: its tests)
        warnings.showwarning = shown


def _run_command(args: argparse.Namespace) -> int:
    from kquant_codec import kernel_backend
    from kquant_codec.interrupts import interrupt_seen, noting_sigint

    try:  # a bad KQUANT_KERNELS is a setting to fix, not a failure to write some output later
        kernel_backend()
    except ValueError as exc:
        print(f"kquant: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ImportError, RuntimeError):
        pass  # no usable kernels: commands that need none (info, palette show) still work; the others say why

    try:
        with noting_sigint():
            return args.func(args)
    except CliError as exc:
        if exc.show_usage and getattr(args, "usage", None):
            print(args.usage, end="", file=sys.stderr)
        print(f"kquant: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("kquant: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except Exception as exc:  # a bug: still one line, unless debugging
        if interrupt_seen():  # a Ctrl-C that numba turned into an error ("returned a result with an exception set")
            print("kquant: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if os.environ.get("KQUANT_DEBUG"):
            raise
        print(f"kquant: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_INTERNAL


def run() -> None:
    """The ``kquant`` command: ``main``, then exit with its code.

    Once the work is done, Python still waits at exit for worker threads that are winding down; a Ctrl-C
    landing then used to print a ``KeyboardInterrupt`` traceback from ``threading._shutdown``. From here on,
    Ctrl-C ends the process at once with the exit code already decided (the outputs are complete)."""
    code: int | None = None

    def leave(signum: int, frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(EXIT_INTERRUPTED if code is None else code)

    try:
        code = main()
        signal.signal(signal.SIGINT, leave)
    except KeyboardInterrupt:  # before main's own handling began (imports, parsing) or just after it returned
        signal.signal(signal.SIGINT, leave)
        if code is None:
            print("kquant: interrupted", file=sys.stderr)
            code = EXIT_INTERRUPTED
    sys.exit(code)


if __name__ == "__main__":
    run()
