"""Compression benchmark for issue 4: ``.kq`` against PNG, oxipng, WebP lossless and JPEG XL on the same pixels.

    make bench-compression          (or: .venv/bin/python benchmarks/compression.py [--quick] [--no-jxl])

For each image (scikit-learn's china and flower, scikit-image's photos when installed, two synthetic
gradients) and k = 16, 64, 256, the image is quantized once in rgb mode; every coder then stores exactly
those pixels. Columns (bytes): ``kq`` (``img.save(..., format="KQ")`` of the quantized image), ``png``
(Pillow palette PNG, optimize=True), ``oxipng`` (pyoxipng, level 6, on that PNG), ``webp`` (Pillow
lossless, method 6, quality 100), ``jxl`` (``cjxl -d 0 -e 9``), ``H|left`` (bytes of an ideal static coder
of a label given its left neighbour). Ratios are kq / reference. Times are wall-clock seconds (encode: one
run; decode: best of 3). Then global and channel modes vs WebP, a 12-megapixel encode/decode timing against
the decode of the same pixels as Pillow's palette PNG, WebP lossless and JPEG XL (djxl, when installed), and
the first decode in a fresh process (with the kernels as installed, and with numba's JIT on an empty cache).
Only the public API (Pillow plugin, ``KMeansQuantize``, ``read_kq``) is used.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

import kquant_codec as kq

KS = (16, 64, 256)


def images() -> list[tuple[str, Image.Image]]:
    """The sample photos (RGB) and two synthetic gradients, as (name, image)."""
    from sklearn.datasets import load_sample_image

    out = [(n, Image.fromarray(load_sample_image(f"{n}.jpg"))) for n in ("china", "flower")]
    try:
        from skimage import data

        for n in ("astronaut", "coffee", "chelsea", "rocket"):
            out.append((n, Image.fromarray(getattr(data, n)()).convert("RGB")))
    except ImportError:
        print("note: scikit-image not installed (pip install scikit-image): its photos are skipped")
    y, x = np.mgrid[0:384, 0:512].astype(np.float64)
    linear = np.dstack([x / 2, y / 1.5, 255 - (x + y) / 3.6])
    r = np.hypot(x - 256, y - 192)
    radial = np.dstack([r, 255 - r * 0.8, 128 + 127 * np.sin(x / 40) * np.cos(y / 55)])
    out.append(("grad-lin", Image.fromarray(linear.clip(0, 255).astype(np.uint8))))
    out.append(("grad-rad", Image.fromarray(radial.clip(0, 255).astype(np.uint8))))
    return out


def kq_bytes(img: Image.Image, **options) -> tuple[bytes, float]:
    buf = io.BytesIO()
    t = time.perf_counter()
    img.save(buf, format="KQ", **options)
    return buf.getvalue(), time.perf_counter() - t


def best_of(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def load(data: bytes, fmt: str) -> None:
    with Image.open(io.BytesIO(data), formats=[fmt]) as im:
        im.load()


def exact_palette(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """Labels (H, W) uint8 and palette (m, 3) of an image with at most 256 colours."""
    arr = np.asarray(img.convert("RGB"))
    flat = arr.reshape(-1, 3).astype(np.int64)
    key = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    colours, inverse = np.unique(key, return_inverse=True)
    palette = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], 1).astype(np.uint8)
    return inverse.reshape(arr.shape[:2]).astype(np.uint8), palette


def palette_image(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    im = Image.fromarray(labels, "P")
    im.putpalette(palette.tobytes())
    return im


def png_of(labels: np.ndarray, palette: np.ndarray) -> bytes:
    buf = io.BytesIO()
    palette_image(labels, palette).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def oxipng_of(png: bytes) -> int | None:
    try:
        import oxipng
    except ImportError:
        return None
    return len(oxipng.optimize_from_memory(png, level=6))


def webp_of(img: Image.Image) -> int:
    buf = io.BytesIO()
    img.save(buf, "WEBP", lossless=True, method=6, quality=100)
    return len(buf.getvalue())


def cjxl(png: bytes, folder: str, effort: int) -> tuple[str, float]:
    """Write ``png`` into ``folder`` and code it with ``cjxl -d 0 -e effort``: (path of the .jxl, seconds)."""
    src, dst = os.path.join(folder, "in.png"), os.path.join(folder, "out.jxl")
    with open(src, "wb") as f:
        f.write(png)
    t = time.perf_counter()
    subprocess.run(["cjxl", src, dst, "-d", "0", "-e", str(effort)], check=True, capture_output=True)
    return dst, time.perf_counter() - t


def jxl_of(png: bytes) -> tuple[int, float] | None:
    if shutil.which("cjxl") is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        dst, seconds = cjxl(png, d, 9)
        return os.path.getsize(dst), seconds


def left_entropy(labels: np.ndarray) -> float:
    """Bytes of an ideal static coder of each label given its left neighbour (first column: order 0)."""
    lab = labels.astype(np.int64)
    joint = np.bincount((lab[:, :-1] * 256 + lab[:, 1:]).ravel(), minlength=65536).reshape(256, 256)
    joint = joint.astype(np.float64)
    rows = joint.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        bits = -(joint * np.log2(np.where(joint > 0, joint / rows, 1))).sum()
    first = np.bincount(lab[:, 0], minlength=256).astype(np.float64)
    first = first[first > 0]
    bits += -(first * np.log2(first / first.sum())).sum()
    return bits / 8


def jxl_decode_12mp(png: bytes, megapixels: float, kq_size: int, kq_dec: float) -> str | None:
    """One line on JPEG XL lossless of the 12 MP pixels: size and djxl's in-process decode time. Effort 7, not
    the table's 9: effort 9 takes minutes at this size, and the decoder's speed is what is measured here."""
    if shutil.which("cjxl") is None or shutil.which("djxl") is None:
        print("note: cjxl/djxl not found (Debian package libjxl-tools): JPEG XL decode is skipped")
        return None
    with tempfile.TemporaryDirectory() as d:
        dst, enc = cjxl(png, d, 7)
        run = subprocess.run(["djxl", dst, "--num_reps=3"], check=True, capture_output=True, text=True)
        size = os.path.getsize(dst)
    # djxl prints e.g. "4000 x 3000, geomean: 20.5 MP/s [19.9, 21.0], 3 reps, 2 threads."
    line = [x for x in (run.stdout + run.stderr).splitlines() if "MP/s" in x][-1]
    best_rate = float(line.split("[")[1].split(",")[1].rstrip("]"))
    seconds = megapixels / best_rate
    threads = line.split(", ")[-1].rstrip(".")
    return (
        f"JPEG XL lossless (cjxl -e 7, {enc:.1f} s) {size} bytes: djxl decode {seconds:.3f} s ({threads})"
        f" -> kq/JXL {kq_size / size:.3f} in size, {kq_dec / seconds:.2f} in decode time"
    )


def cold_decode_seconds(data: bytes, env: dict[str, str]) -> tuple[float, float]:
    """Decode time of ``data`` in a fresh process with an empty numba cache and ``env`` (first-ever call),
    then in a second fresh process (the cache filled)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "x.kq")
        with open(path, "wb") as f:
            f.write(data)
        code = (
            "import sys, time, kquant_codec as kq; t = time.perf_counter(); "
            f"kq.read_kq({path!r}); print(time.perf_counter() - t)"
        )
        env = dict(os.environ, NUMBA_CACHE_DIR=os.path.join(d, "cache"), **env)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        warm = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1]), float(warm.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="china and one gradient only, no 12 MP section")
    ap.add_argument("--only-12mp", action="store_true", help="only the 12-megapixel and first-call section")
    ap.add_argument("--no-jxl", action="store_true", help="skip JPEG XL even when cjxl is on the PATH")
    args = ap.parse_args()
    use_jxl = not args.no_jxl and shutil.which("cjxl") is not None
    try:
        import oxipng  # noqa: F401
    except ImportError:
        print("note: pyoxipng missing (pip install -e '.[bench]'): oxipng column empty")
    if not use_jxl:
        print("note: cjxl not on PATH (Debian package libjxl-tools) or --no-jxl: JPEG XL column empty")
    todo = images()
    if args.only_12mp:
        twelve_megapixels(todo[0][1])
        return
    if args.quick:
        todo = [t for t in todo if t[0] in ("china", "grad-lin")]
    # compile / load the numba kernels once, outside the timings (cold cost measured at the end)
    kq.read_kq(kq_bytes(Image.fromarray(np.zeros((64, 64, 3), np.uint8)), k=2)[0])

    cols = ("image", "k", "kq", "png", "oxipng", "webp", "jxl", "H|left", "kq/png", "kq/oxi", "kq/webp")
    print("\n## rgb mode (sizes in bytes; ratios kq / reference)\n")
    head = f"{cols[0]:10s} {cols[1]:>3s} " + " ".join(f"{c:>8s}" for c in cols[2:8])
    head += " " + " ".join(f"{c:>7s}" for c in cols[8:]) + f" {'kq/jxl':>7s} {'enc s':>6s} {'dec s':>6s} {'jxl s':>6s}"
    print(head)
    ratios: dict[int, dict[str, list[float]]] = {k: {"png": [], "webp": [], "jxl": [], "oxi": []} for k in KS}
    speed: list[float] = []
    planar: list[tuple[str, int, str, int, int]] = []
    for name, img in todo:
        for k in KS:
            quantized = img.filter(kq.KMeansQuantize(k, "rgb"))
            data, enc = kq_bytes(quantized)
            dec = best_of(lambda data=data: load(data, "KQ"))
            assert np.array_equal(np.asarray(kq.read_kq(data).to_image()), np.asarray(quantized)), "round trip"
            labels, palette = exact_palette(quantized)
            png = png_of(labels, palette)
            oxi = oxipng_of(png)
            webp = webp_of(quantized)
            jxl = jxl_of(png) if use_jxl else None
            n = len(data)
            r = ratios[k]
            r["png"].append(n / len(png))
            r["webp"].append(n / webp)
            if oxi:
                r["oxi"].append(n / oxi)
            if jxl:
                r["jxl"].append(n / jxl[0])
                speed.append(jxl[1] / enc)
            fmt = lambda v: f"{v:8d}" if isinstance(v, int) else f"{'-':>8s}"  # noqa: E731
            line = f"{name:10s} {k:3d} {n:8d} {len(png):8d} {fmt(oxi)} {webp:8d} {fmt(jxl and jxl[0])}"
            line += f" {left_entropy(labels):8.0f} {n / len(png):7.3f} " + (f"{n / oxi:7.3f}" if oxi else f"{'-':>7s}")
            line += f" {n / webp:7.3f} " + (f"{n / jxl[0]:7.3f}" if jxl else f"{'-':>7s}")
            line += f" {enc:6.2f} {dec:6.3f} " + (f"{jxl[1]:6.2f}" if jxl else f"{'-':>6s}")
            print(line, flush=True)
            for mode in ("global", "channel"):
                q = img.filter(kq.KMeansQuantize(k, mode))
                planar.append((name, k, mode, len(kq_bytes(q)[0]), webp_of(q)))
    print("\nmedian / worst kq ratio per k:")
    for k in KS:
        parts = []
        for ref in ("png", "oxi", "webp", "jxl"):
            if ratios[k][ref]:
                parts.append(f"{ref} {statistics.median(ratios[k][ref]):.3f} / {max(ratios[k][ref]):.3f}")
        print(f"  k={k:3d}: " + ", ".join(parts))
    if speed:
        print(
            f"encode speed vs cjxl -e 9: kq is {statistics.median(speed):.1f}x faster (median), {min(speed):.1f}x worst"
        )

    print("\n## global / channel modes vs WebP lossless (same quantized pixels)\n")
    print(f"{'image':10s} {'k':>3s} {'mode':8s} {'kq':>8s} {'webp':>8s} {'kq/webp':>7s}")
    for name, k, mode, n, webp in planar:
        print(f"{name:10s} {k:3d} {mode:8s} {n:8d} {webp:8d} {n / webp:7.3f}")
    worst = max(n / w for *_, n, w in planar)
    print(f"worst kq/webp over global/channel: {worst:.3f}")

    if not args.quick:
        twelve_megapixels(todo[0][1])


def twelve_megapixels(photo: Image.Image) -> None:
    """Encode and decode a 12 MP quantized photo; compare with the decode of the same pixels as Pillow's palette
    PNG (the issue's yardstick), WebP lossless and JPEG XL.

    The photo is upscaled (bicubic) to 4000 x 3000 and then quantized, so rows do not repeat (a tiled
    mosaic would let PNG's deflate, and .kq's PNG fallback, copy whole tiles). Decode times are the best of 3
    in this process (djxl: its own best of 3 repetitions, ``--num_reps``), on every core the decoder uses:
    ``.kq`` and djxl decode on all cores, Pillow's PNG and WebP decoders on one.
    """
    print("\n## 12 megapixels (china upscaled to 4000 x 3000, quantized at k = 256)\n")
    big = photo.resize((4000, 3000), Image.Resampling.BICUBIC)
    t = time.perf_counter()
    big_img = big.filter(kq.KMeansQuantize(256, "rgb"))
    quantize = time.perf_counter() - t
    data, enc = kq_bytes(big_img)
    labels, palette = exact_palette(big_img)
    png = png_of(labels, palette)
    kq_dec = best_of(lambda: load(data, "KQ"))
    png_dec = best_of(lambda: load(png, "PNG"))
    png_rgb = best_of(lambda: Image.open(io.BytesIO(png), formats=["PNG"]).convert("RGB"))
    info = kq.kq_info(data)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"{cores} cores; quantize {quantize:.2f} s; kq {len(data)} bytes ({info.payload}, codec {info.codec}), "
        f"encode {enc:.2f} s"
    )
    print(f"kq decode (Image.open + load, RGB) {kq_dec:.3f} s")
    print(f"Pillow palette PNG {len(png)} bytes: decode (P) {png_dec:.3f} s, decode + convert to RGB {png_rgb:.3f} s")
    print(f"kq decode / PNG decode = {kq_dec / png_dec:.2f} (P), {kq_dec / png_rgb:.2f} (RGB)")
    buf = io.BytesIO()
    t = time.perf_counter()
    big_img.save(buf, "WEBP", lossless=True, method=6, quality=100)
    webp_enc = time.perf_counter() - t
    webp = buf.getvalue()
    webp_dec = best_of(lambda: load(webp, "WEBP"))
    print(
        f"WebP lossless (method 6) {len(webp)} bytes, encode {webp_enc:.1f} s: decode (RGB) {webp_dec:.3f} s"
        f" -> kq/WebP {len(data) / len(webp):.3f} in size, {kq_dec / webp_dec:.2f} in decode time"
    )
    jxl = jxl_decode_12mp(png, big_img.width * big_img.height / 1e6, len(data), kq_dec)
    if jxl:
        print(jxl)
    small = kq_bytes(photo.filter(kq.KMeansQuantize(16, "rgb")))[0]
    print("\nfirst decode in a fresh process (empty numba cache), a 0.27 MP .kq, then a second process:")
    cold, warm = cold_decode_seconds(small, {})
    print(f"  kernels as installed ({kq.kernel_backend()}): {cold:.2f} s, then {warm:.2f} s")
    cold, warm = cold_decode_seconds(small, {"KQUANT_KERNELS": "jit"})
    print(f"  numba JIT (KQUANT_KERNELS=jit): {cold:.2f} s, then {warm:.2f} s")


if __name__ == "__main__":
    main()
