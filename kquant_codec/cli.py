"""The ``kquant`` command line. Uses only the package's public API."""

from __future__ import annotations

import argparse
import sys
import time

EXIT_OK = 0
EXIT_USAGE = 2


def _sample_image(name: str = "china.jpg"):
    """A photo that ships inside scikit-learn (no download), as a Pillow RGB image."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image(name))


def cmd_demo(args: argparse.Namespace) -> int:
    """Quantize a bundled photo in every mode and print k, mode, error and time."""
    import kquant_codec as kq

    img = _sample_image(args.image)
    print(f"{args.image}: {img.size[0]}x{img.size[1]} {img.mode} (bundled with scikit-learn)")
    print(f"{'mode':8} {'k':>4} {'colours':>8} {'MSE':>9} {'PSNR dB':>8} {'time s':>7}")
    for mode in kq.MODES:
        for k in args.k:
            start = time.perf_counter()
            out = img.filter(kq.KMeansQuantize(k, mode=mode))
            seconds = time.perf_counter() - start
            colours = len(out.getcolors(1 << 24))
            print(f"{mode:8} {k:4d} {colours:8d} {kq.mse(img, out):9.2f} {kq.psnr(img, out):8.2f} {seconds:7.2f}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kquant", description="k-means colour quantization and the .kq format")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="quantize a bundled sample photo in every mode and print the errors")
    demo.add_argument("--image", default="china.jpg", choices=["china.jpg", "flower.jpg"])
    demo.add_argument("-k", type=int, nargs="+", default=[2, 8, 32, 256])
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
