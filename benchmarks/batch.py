"""Throughput of ``kquant batch`` (issue 7): images/s and MP/s with 1 and 2 worker processes.

    python benchmarks/batch.py [--count 100] [-k 64] [--jobs 1 2] [--keep DIR]     (or: make bench-batch)

The images are made here, nothing is downloaded: ``--count`` different photos of about 1 megapixel
(1156x866), each a crop of china.jpg or flower.jpg (bundled with scikit-learn) at its own offset and size,
upscaled with Pillow's LANCZOS filter and flipped for every other one, written as PNG (compress level 6)
into a temporary folder (``--keep DIR`` keeps them and the outputs there).

Each timed run is the whole command ``kquant batch IN OUT -k K --mode rgb --jobs N --no-progress`` in a
fresh process, start to exit (Python start-up, imports, spawning workers and the JSON summary included):
images/s = images / wall time, MP/s = megapixels encoded / wall time, speed-up = wall time of --jobs 1 /
wall time of --jobs N. Bytes in/out come from the run's summary. Before the timed runs, one untimed run on
two images warms the disk caches and numba's compiled-kernel cache. The outputs of every run are checked
to be byte-identical to those of the first.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (1156, 866)  # 1.001 megapixels, the photos' 3:2-ish aspect


def _kquant() -> list[str]:
    entry = Path(sys.executable).with_name("kquant")
    return [str(entry)] if entry.exists() else [sys.executable, "-m", "kquant_codec.cli"]


def make_images(folder: Path, count: int, seed: int = 0) -> float:
    """Write ``count`` different ~1 MP PNGs into ``folder``; returns their total megapixels."""
    from sklearn.datasets import load_sample_image

    photos = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % 2]
        w = int(rng.integers(200, 400))  # crop width in source pixels: 2.9x to 5.8x upscaling
        h = w * SIZE[1] // SIZE[0]
        x = int(rng.integers(0, photo.width - w))
        y = int(rng.integers(0, photo.height - h))
        img = photo.crop((x, y, x + w, y + h)).resize(SIZE, Image.Resampling.LANCZOS)
        if i % 4 >= 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img.save(folder / f"img{i:04d}.png", compress_level=6)
    return count * SIZE[0] * SIZE[1] / 1e6


def run(src: Path, out: Path, k: int, jobs: int) -> tuple[float, dict]:
    """Time one ``kquant batch`` command; returns (wall seconds, its JSON summary)."""
    summary_path = out.parent / f"{out.name}.json"
    argv = [*_kquant(), "batch", str(src), str(out), "-k", str(k), "--mode", "rgb", "--jobs", str(jobs)]
    argv += ["--no-progress", "--summary", str(summary_path)]
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"kquant batch failed ({proc.returncode}): {proc.stderr.strip()}")
    return wall, json.loads(summary_path.read_text())


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.kq"))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="number of ~1 MP images (default 100)")
    parser.add_argument("-k", type=int, default=64, help="colours (default 64)")
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 2], help="worker counts to time (default 1 2)")
    parser.add_argument("--keep", metavar="DIR", help="keep the images and outputs in DIR")
    args = parser.parse_args(argv)
    if args.count < 1:
        parser.error("--count must be at least 1")

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kquant-bench-batch-"))
    try:
        src = root / "images"
        t0 = time.perf_counter()
        megapixels = make_images(src, args.count)
        print(f"{args.count} images, {megapixels:.1f} MP, made in {time.perf_counter() - t0:.1f} s under {src}")
        print(f"k={args.k} rgb; {os.cpu_count()} CPUs; Python {sys.version.split()[0]}")

        warm = root / "warm-in"
        warm.mkdir(exist_ok=True)
        for path in sorted(src.glob("*.png"))[:2]:
            shutil.copy(path, warm / path.name)
        run(warm, root / "warm-out", args.k, 1)

        header = (
            f"{'jobs':>4} {'wall s':>8} {'images/s':>9} {'MP/s':>7} {'speed-up':>8} "
            f"{'bytes in':>12} {'bytes out':>11} {'ratio':>6}"
        )
        print(header)
        print("-" * len(header))
        first_wall = None
        reference = None
        for jobs in args.jobs:
            out = root / f"out-jobs{jobs}"
            shutil.rmtree(out, ignore_errors=True)  # a timed run starts empty (nothing to resume)
            wall, summary = run(src, out, args.k, jobs)
            if summary["encoded"] != args.count or summary["failed"]:
                sys.exit(f"--jobs {jobs}: encoded {summary['encoded']} of {args.count}, failed {summary['failed']}")
            got = outputs(out)
            if reference is None:
                reference = got
            elif got != reference:
                sys.exit(f"--jobs {jobs}: outputs differ from those of --jobs {args.jobs[0]}")
            first_wall = first_wall or wall
            print(
                f"{jobs:4d} {wall:8.2f} {args.count / wall:9.2f} {summary['megapixels'] / wall:7.2f} "
                f"{first_wall / wall:7.2f}x {summary['bytes_in']:12d} {summary['bytes_out']:11d} "
                f"{summary['bytes_in'] / summary['bytes_out']:5.2f}x"
            )
        print("wall time: the whole command in a fresh process; outputs of every run byte-identical")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
