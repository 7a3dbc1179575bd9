"""Speed, memory and quality at scale (issue 5): kquant_codec next to pngquant, Pillow and MiniBatchKMeans.

    python benchmarks/speed.py [--quick] [--cap SECONDS] [--keep DIR] [--small-only K ...]   (or: make bench)

Test images are made here from the sample photos bundled with scikit-learn (china, flower), plus, when
scikit-image is installed, five of its bundled photos for the quality table: the photos at their own
size (about 0.27 MP) and china and flower upscaled (Pillow LANCZOS) to 1, 12 and 24 megapixels. Nothing
is downloaded; the images live in a temporary directory (``--keep DIR`` keeps them).

Every figure is measured in the same run, on the same machine, so ratios are side by side:

- kquant ``.kq`` encode: ``img.save(buf, format="KQ", k=k)`` (palette learning, assignment of every
  pixel, writing the file) in a fresh process, so it includes importing numba and loading its cached
  kernels (large images). Peak memory: the process's peak resident set during the encode (the peak is
  reset after the input image is loaded), minus its resident set after ``import kquant_codec``, so it
  includes the input image itself (Pillow keeps RGB at 4 bytes per pixel). "x RGB" divides by 3 bytes
  per pixel (the issue's budget: 4x).
- kquant ``.kq``, fallback=False: the same without the PNG-payload candidate (``img.save(..., fallback=False)``).
- kquant quantize: ``kquant_codec.fit_image(img, k)`` (palette learning and the label of every pixel, no
  file) in a fresh process, and again warm.
- decode: ``Image.open(kq).load()`` against Pillow decoding a palette PNG of the same pixels (when the
  image has at most 256 colours; else an RGB PNG); best of 3, in the encode's process.
- pngquant ``--speed 4 --nofs`` and ``--speed 1 --nofs`` (whole command: PNG in, PNG out; peak memory
  is its maximum resident set), when pngquant is on the PATH.
- Pillow ``Image.quantize(k, method=MEDIANCUT / FASTOCTREE, dither=NONE)`` (quantize only).
- The seed tutorial's method: scikit-learn ``MiniBatchKMeans(n_clusters=k, random_state=0, n_init=3)``
  fitted on every raw pixel, then ``predict``; stopped after ``--cap`` seconds.
- global and channel modes: ``img.filter(KMeansQuantize(k, mode=...))`` throughput (warm, best of 2) and
  the whole ``.kq`` encode.
- A k-means reference for the quality table (what the k-means objective itself reaches, at any cost):
  scikit-learn ``KMeans(k, n_init=4, random_state=0)`` on the photo's distinct colours weighted by their
  counts, centres rounded to integers, every pixel mapped to its nearest centre ("sk MSE"); run after all
  the timings of the quality table (``--no-reference`` skips it).

MSE is per sample (mean over H x W x 3), PSNR = 10 log10(255^2 / MSE). Ratios are kquant / other (time
ratios from the whole encode; below 1 means kquant is faster or better). Uses only kquant_codec's public
API. Linux is needed for the memory figures (/proc).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

PY = sys.executable
HERE = Path(__file__).resolve()
KS_QUALITY = (2, 4, 8, 16, 32, 64, 128, 256)
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry")


# -- measurement helpers (used by the children) --------------------------------------------------------


def _status(field: str) -> int | None:
    """A /proc/self/status memory field in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> None:
    """Reset VmHWM to the current resident set (Linux >= 4.0), so the peak covers what follows only."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _peak_above(base: int | None) -> int | None:
    hwm = _status("VmHWM")
    return None if hwm is None or base is None else hwm - base


def _best_of(n: int, fn) -> float:
    best = math.inf
    for _ in range(n):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def squared_error(a: np.ndarray, b: np.ndarray) -> int:
    """Total squared error between two (H, W, C) uint8 arrays, in row blocks (bounded memory)."""
    import kquant_codec as kq

    return sum(kq.squared_error(a[s : s + 256], b[s : s + 256]) for s in range(0, a.shape[0], 256))


def kmeans_reference_mse(arr: np.ndarray, k: int) -> float:
    """MSE per sample of scikit-learn's KMeans (4 k-means++ starts, best kept) on the weighted distinct colours of
    an (H, W, 3) uint8 photo: the k-means objective's reach, for comparison (seconds to tens of seconds)."""
    from sklearn.cluster import KMeans

    colours, counts = np.unique(arr.reshape(-1, 3), axis=0, return_counts=True)
    model = KMeans(min(k, len(colours)), n_init=4, random_state=0).fit(colours.astype(np.float64), sample_weight=counts)
    centres = np.clip(np.rint(model.cluster_centers_), 0, 255)
    sse = 0.0
    for s in range(0, len(colours), 8192):  # nearest rounded centre, in blocks (bounded memory)
        c = colours[s : s + 8192].astype(np.float64)
        d = ((c[:, None, :] - centres[None]) ** 2).sum(-1).min(1)
        sse += float((d * counts[s : s + 8192]).sum())
    return sse / arr.size


def palette_png(img: Image.Image, kq_bytes: bytes) -> bytes:
    """A PNG of exactly ``img``'s pixels: a palette PNG when it has <= 256 colours, else a PNG of its mode.

    An rgb ``.kq`` file gives the palette and indices directly; otherwise the colours are counted.
    """
    import kquant_codec as kq

    decoded = kq.read_kq(kq_bytes)
    if decoded.quant_mode == "rgb" and decoded.labels is not None and img.mode == "RGB":
        indices, table = decoded.labels, decoded.centroids
    else:
        arr = np.asarray(img.convert("RGB")).reshape(-1, 3).astype(np.uint32)
        keys, inverse = np.unique((arr[:, 0] << 16) | (arr[:, 1] << 8) | arr[:, 2], return_inverse=True)
        indices, table = inverse.astype(np.uint8), None
        if keys.size <= 256:
            table = np.stack([keys >> 16, (keys >> 8) & 255, keys & 255], 1).astype(np.uint8)
    if table is not None:
        out = Image.frombytes("P", img.size, np.ascontiguousarray(indices, dtype=np.uint8).tobytes())
        out.putpalette(np.ascontiguousarray(table).tobytes(), "RGB")
    else:
        out = img
    buf = io.BytesIO()
    out.save(buf, format="PNG")
    return buf.getvalue()


# -- children: one measurement per fresh process, printing one JSON line ----------------------------------


def child_kquant(path: str, k: int, mode: str, fallback: bool = True) -> dict:
    """One whole ``.kq`` encode in this fresh process, then decode timings and the error."""
    import kquant_codec  # noqa: F401 - registers the .kq format with Pillow (and sets the baseline)

    base = _status("VmRSS")
    img = Image.open(path)
    img.load()
    loaded = _status("VmRSS")
    _reset_peak()
    start = time.perf_counter()
    buf = io.BytesIO()
    img.save(buf, format="KQ", k=k, mode=mode, fallback=fallback)
    encode = time.perf_counter() - start
    peak = _peak_above(base)
    data = buf.getvalue()
    del buf
    out = {"encode": encode, "peak": peak, "input": None if base is None else loaded - base, "bytes": len(data)}
    start = time.perf_counter()
    back = Image.open(io.BytesIO(data))
    back.load()
    out["decode_first"] = time.perf_counter() - start
    out["decode"] = _best_of(3, lambda: Image.open(io.BytesIO(data)).load())
    png = palette_png(back, data)
    out["png_decode"] = _best_of(3, lambda: Image.open(io.BytesIO(png)).load())
    out["png_decode_rgb"] = _best_of(3, lambda: Image.open(io.BytesIO(png)).convert(back.mode))
    arr = np.asarray(img)
    dec = np.asarray(back)
    out["sse"] = squared_error(arr, dec)
    out["hash"] = hashlib.sha256(dec.tobytes()).hexdigest()[:16]
    return out


def child_quantize(path: str, k: int) -> dict:
    """``fit_image`` (palette learning and the label of every pixel) in this fresh process: time and peak
    memory of the first call (with numba's import and kernel loading on large images), then a warm call."""
    import kquant_codec as kq

    base = _status("VmRSS")
    img = Image.open(path)
    img.load()
    _reset_peak()
    start = time.perf_counter()
    fitted = kq.fit_image(img, k)
    seconds = time.perf_counter() - start
    peak = _peak_above(base)
    sse = squared_error(np.asarray(img), np.asarray(fitted.to_image()))
    del fitted
    return {"encode": seconds, "peak": peak, "sse": sse, "warm": _best_of(1, lambda: kq.fit_image(img, k))}


def child_filter_throughput(path: str, k: int, mode: str) -> dict:
    import kquant_codec as kq

    img = Image.open(path)
    img.load()
    return {"filter": _best_of(2, lambda: img.filter(kq.KMeansQuantize(k, mode=mode)))}


def child_pillow(path: str, k: int, method: str) -> dict:
    import kquant_codec  # noqa: F401 - the same baseline as kquant's children

    base = _status("VmRSS")
    img = Image.open(path)
    img.load()
    _reset_peak()
    start = time.perf_counter()
    q = img.quantize(k, method=getattr(Image.Quantize, method), dither=Image.Dither.NONE)
    seconds = time.perf_counter() - start
    peak = _peak_above(base)
    return {"encode": seconds, "peak": peak, "sse": squared_error(np.asarray(img), np.asarray(q.convert("RGB")))}


def child_minibatch(path: str, k: int) -> dict:
    """The seed tutorial's quantization (as in benchmarks/quantizers.py): MiniBatchKMeans on raw pixels."""
    from sklearn.cluster import MiniBatchKMeans

    base = _status("VmRSS")
    arr = np.asarray(Image.open(path).convert("RGB"))
    _reset_peak()
    start = time.perf_counter()
    samples = arr.reshape(-1, 3).astype(np.float64)
    model = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=3).fit(samples)
    centres = np.clip(np.rint(model.cluster_centers_), 0, 255).astype(np.uint8)
    out = centres[model.predict(samples)].reshape(arr.shape)
    seconds = time.perf_counter() - start
    return {"encode": seconds, "peak": _peak_above(base), "sse": squared_error(arr, out)}


def child_numba_cost(path: str) -> dict:
    """Costs of the compiled kernels in a fresh process: loading them (the install's build, or importing numba
    for the JIT), then two fits of an image above the numba threshold (the first one loads, or with the JIT and
    an empty cache compiles, the kernels)."""
    base = _status("VmRSS")
    start = time.perf_counter()
    from kquant_codec import kernel_backend

    backend = kernel_backend()
    load_kernels = time.perf_counter() - start
    after_import = _status("VmRSS")
    import kquant_codec as kq

    arr = np.asarray(Image.open(path).convert("RGB"))
    first = _best_of(1, lambda: kq.KMeansQuantizer(16).fit(arr))
    after_first = _status("VmRSS")
    second = _best_of(1, lambda: kq.KMeansQuantizer(16).fit(arr))

    def mb(a: int | None, b: int | None) -> float | None:
        return None if a is None or b is None else (a - b) / 2**20

    return {
        "backend": backend,
        "load_kernels": load_kernels,
        "first_fit": first,
        "second_fit": second,
        "rss_import_mb": mb(after_import, base),
        "rss_first_fit_mb": mb(after_first, base),
    }


def child_digest(path: str, k: int) -> dict:
    import kquant_codec as kq

    arr = np.asarray(Image.open(path).convert("RGB"))
    q = kq.KMeansQuantizer(k).fit(arr)
    labels = q.predict(arr)
    return {"hash": hashlib.sha256(q.centroids_.tobytes() + labels.tobytes()).hexdigest()[:16]}


CHILDREN = {
    "kquant": lambda a: child_kquant(a[0], int(a[1]), a[2], a[3] == "1"),
    "quantize": lambda a: child_quantize(a[0], int(a[1])),
    "filter": lambda a: child_filter_throughput(a[0], int(a[1]), a[2]),
    "pillow": lambda a: child_pillow(a[0], int(a[1]), a[2]),
    "minibatch": lambda a: child_minibatch(a[0], int(a[1])),
    "numba_cost": lambda a: child_numba_cost(a[0]),
    "digest": lambda a: child_digest(a[0], int(a[1])),
}


def run_child(*args: str, timeout: float | None = None, env: dict | None = None) -> dict | None:
    """Run one child measurement in a fresh interpreter; None when it exceeds ``timeout`` seconds."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    cmd = [PY, str(HERE), "--child", *map(str, args)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_peak(pid: int) -> int | None:
    """A running child's peak resident set in bytes: its VmHWM, read every 5 ms until it exits (Linux).

    Not ``wait4``'s ``ru_maxrss``: Linux carries the parent's resident set at the fork into the child's maximum
    across ``exec``, so pngquant was reported at this process's 264 MB whatever its image (README's old "8-9
    times the RGB size"). The last reading can miss at most the final 5 ms. None without /proc."""
    peak = None
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            return peak
        if "State:\tZ" in text:  # exited, not yet waited for: its memory is gone
            return peak
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak or 0, int(line.split()[1]) * 1024)
        time.sleep(0.005)


def run_pngquant(png: Path, k: int, speed: int, work: Path, reference: np.ndarray) -> dict:
    """pngquant as a command (PNG in, PNG out): wall time, maximum resident set, squared error."""
    out = work / f"pq_{speed}_{k}_{png.name}"
    cmd = ["pngquant", "--speed", str(speed), "--nofs", "--force", "--output", str(out), str(k), "--", str(png)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = _child_peak(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"pngquant failed ({proc.returncode}): {proc.stderr.read().decode(errors='replace')}")
    proc.stderr.close()
    back = np.asarray(Image.open(out).convert("RGB"))
    result = {"encode": seconds, "peak": peak, "sse": squared_error(reference, back)}
    out.unlink()
    return result


# -- images ----------------------------------------------------------------------------------------------


def sample_photos(quick: bool) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_sample_image

    photos = {name: load_sample_image(f"{name}.jpg") for name in ("china", "flower")}
    if quick:
        return photos
    try:
        import skimage.data as sd

        for name in SKIMAGE_PHOTOS:
            arr = getattr(sd, name)()
            if arr.ndim == 3 and arr.shape[2] == 3:
                photos[name] = arr
    except Exception as exc:  # not installed, or a photo not bundled: the two scikit-learn photos remain
        print(f"(scikit-image photos not used: {type(exc).__name__}: {exc})")
    return photos


def upscale(arr: np.ndarray, megapixels: float) -> np.ndarray:
    h, w = arr.shape[:2]
    s = (megapixels * 1e6 / (h * w)) ** 0.5
    return np.asarray(Image.fromarray(arr).resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS))


def save_png(arr: np.ndarray, path: Path) -> Path:
    Image.fromarray(arr).save(path, compress_level=1)
    return path


# -- report ------------------------------------------------------------------------------------------------


def mse_of(r: dict | None, pixels: int) -> float | None:
    return None if r is None else r["sse"] / (3 * pixels)


def psnr_of(mse: float | None) -> str:
    if mse is None:
        return "-"
    return "inf" if mse == 0 else f"{10 * math.log10(255 * 255 / mse):.2f}"


def fmt(x: float | None, spec: str, missing: str = "-") -> str:
    return missing if x is None else format(x, spec)


HEADER = (
    f"  {'method':24} {'time s':>8} {'MP/s':>7} {'peak MB':>8} {'x RGB':>6} {'MSE':>9} {'PSNR':>6} "
    f"{'decode s':>8} {'PNG dec s':>9} {'ours/this time':>14} {'ours/this MSE':>13}"
)


def print_row(name: str, r: dict | None, pixels: int, ours: dict | None, cap: float | None = None) -> None:
    if r is None:
        print(f"  {name:24} {'> ' + format(cap, '.0f') + ' s (stopped)':>17}")
        return
    mp = pixels / 1e6
    mse = mse_of(r, pixels)
    peak = r.get("peak")
    t_ratio = m_ratio = None
    if ours is not None and ours is not r:
        t_ratio = ours["encode"] / r["encode"]
        m_ours = mse_of(ours, pixels)
        m_ratio = m_ours / mse if mse else None
    print(
        f"  {name:24} {r['encode']:8.2f} {mp / r['encode']:7.1f} {fmt(peak and peak / 2**20, '8.0f'):>8} "
        f"{fmt(peak and peak / (3 * pixels), '6.2f'):>6} {fmt(mse, '9.3f'):>9} {psnr_of(mse):>6} "
        f"{fmt(r.get('decode'), '8.3f'):>8} {fmt(r.get('png_decode'), '9.3f'):>9} "
        f"{fmt(t_ratio, '14.2f'):>14} {fmt(m_ratio, '13.3f'):>13}"
    )


def scale_table(name: str, png: Path, arr: np.ndarray, k: int, args, have_pq: bool, work: Path) -> dict:
    pixels = arr.shape[0] * arr.shape[1]
    print(f"\n{name}: {arr.shape[1]}x{arr.shape[0]} = {pixels / 1e6:.1f} MP, rgb, k={k}")
    print(HEADER)
    ours = run_child("kquant", png, k, "rgb", "1")
    print_row("kquant .kq encode", ours, pixels, ours)
    native = run_child("kquant", png, k, "rgb", "0")
    print_row("kquant .kq, fallback=False", native, pixels, None)
    quant = run_child("quantize", png, k)
    print_row("kquant quantize only", quant, pixels, None)
    print(
        f"  {'':24} quantize = fit_image (learning + labels of every pixel), fresh process; warm:"
        f" {quant['warm']:.2f} s. .kq {ours['bytes'] / 1e6:.2f} MB; input image"
        f" {fmt(ours['input'] and ours['input'] / 2**20, '.0f')} MB of each peak."
    )
    print(
        f"  {'':24} decode / Pillow palette-PNG decode: {ours['decode'] / ours['png_decode']:.2f}"
        f" (to RGB: {ours['png_decode_rgb']:.3f} s, ratio {ours['decode'] / ours['png_decode_rgb']:.2f});"
        f" first decode in the process {ours['decode_first']:.3f} s"
    )
    results = {"ours": ours, "native": native, "quantize": quant, "pixels": pixels}
    if have_pq:
        for speed in (4, 1):
            results[f"pq{speed}"] = r = run_pngquant(png, k, speed, work, arr)
            print_row(f"pngquant --speed {speed}", r, pixels, ours)
    for method, label in (("MEDIANCUT", "Pillow median cut"), ("FASTOCTREE", "Pillow fast octree")):
        results[method] = r = run_child("pillow", png, k, method)
        print_row(label, r, pixels, ours)
    r = run_child("minibatch", png, k, timeout=args.cap)
    print_row("MiniBatchKMeans (seed)", r, pixels, ours, cap=args.cap)
    return results


SMALL_RUNS = 3  # timings per photo and k in the small-image table (kquant and pngquant --speed 4 alike)


def quality_table(photos: dict[str, np.ndarray], ks, have_pq: bool, work: Path, reference: bool = True) -> dict:
    """Sample photos at their own size: MSE against pngquant --speed 1 at every k; encode time against
    pngquant --speed 4. kquant runs warm in one process here (a fresh one per image would mostly time
    the interpreter starting). Both times are the best of SMALL_RUNS runs. ``reference``: then the k-means
    reference for every photo and k (seconds each; needs pngquant for its ratios)."""
    import kquant_codec as kq

    print("\n== Sample photos at their own size (about 0.27 MP): quality and speed at every k, rgb ==")
    print(
        f"  {'photo':22} {'k':>4} {'kq s':>6} {'quant s':>7} {'kq MSE':>9} {'pq4 s':>6} {'pq1 s':>6} {'pq1 MSE':>9}"
        f" {'median MSE':>10} {'octree MSE':>10} {'kq/pq4 time':>11} {'kq/pq1 MSE':>10}"
    )
    # per k: (photo, MSE / pngquant, time / pngquant, reference MSE / pngquant or None, kquant MSE, pngquant MSE)
    summary: dict[int, list[tuple[str, float, float, float | None, float, float]]] = {}
    img0 = Image.fromarray(next(iter(photos.values())))
    img0.save(io.BytesIO(), format="KQ", k=8)  # warm-up: imports, first calls
    for k in ks:
        for name, arr in photos.items():
            img = Image.fromarray(arr)
            png = work / f"{name}_small.png"
            if not png.exists():
                save_png(arr, png)
            pixels = arr.shape[0] * arr.shape[1]
            t_kq = float("inf")
            for _ in range(SMALL_RUNS):  # best of a few: single 0.1-0.5 s timings wander by 20-30% here
                buf = io.BytesIO()
                start = time.perf_counter()
                img.save(buf, format="KQ", k=k)
                t_kq = min(t_kq, time.perf_counter() - start)
            t_quant = _best_of(1, lambda arr=arr, k=k: kq.KMeansQuantizer(k).fit(arr).predict(arr))
            m_kq = squared_error(arr, np.asarray(Image.open(io.BytesIO(buf.getvalue())))) / (3 * pixels)
            med = np.asarray(img.quantize(k, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).convert("RGB"))
            octr = np.asarray(
                img.quantize(k, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).convert("RGB")
            )
            m_med = squared_error(arr, med) / (3 * pixels)
            m_oct = squared_error(arr, octr) / (3 * pixels)
            line = f"  {name:22} {k:4d} {t_kq:6.2f} {t_quant:7.2f} {m_kq:9.3f}"
            if have_pq:
                p4 = min((run_pngquant(png, k, 4, work, arr) for _ in range(SMALL_RUNS)), key=lambda r: r["encode"])
                p1 = run_pngquant(png, k, 1, work, arr)
                m_p1 = p1["sse"] / (3 * pixels)
                summary.setdefault(k, []).append((name, m_kq / m_p1, t_kq / p4["encode"], None, m_kq, m_p1))
                line += f" {p4['encode']:6.2f} {p1['encode']:6.2f} {m_p1:9.3f}"
            else:
                line += f" {'-':>6} {'-':>6} {'-':>9}"
            line += f" {m_med:10.3f} {m_oct:10.3f}"
            if have_pq:
                line += f" {t_kq / p4['encode']:11.2f} {m_kq / m_p1:10.3f}"
            print(line, flush=True)
    if summary and reference:
        # After every timing: scikit-learn's OpenMP threads must not run next to a timed encode.
        print("\n  k-means reference: scikit-learn KMeans (4 starts) on the weighted distinct colours")
        print(f"  {'photo':22} {'k':>4} {'sk MSE':>9} {'kq MSE':>9} {'sk/pq1 MSE':>10} {'kq/sk MSE':>9}")
        for k, rows in summary.items():
            for i, (name, r_mse, r_time, _, m_kq, m_p1) in enumerate(rows):
                m_sk = kmeans_reference_mse(photos[name], k)
                rows[i] = (name, r_mse, r_time, m_sk / m_p1, m_kq, m_p1)
                print(f"  {name:22} {k:4d} {m_sk:9.3f} {m_kq:9.3f} {m_sk / m_p1:10.3f} {m_kq / m_sk:9.3f}", flush=True)
        time.sleep(1.0)  # (OpenMP's idle threads spin for a while before they sleep)
    if summary:
        print("\n  per k over the photos: kquant MSE / pngquant --speed 1 MSE (target: median <= 0.92, max <= 1.0),")
        print("  kquant .kq encode time / pngquant --speed 4 time (target: <= 2 on small images),")
        print("  and the k-means reference (scikit-learn KMeans, 4 starts) MSE / pngquant --speed 1 MSE")
        for k, rows in summary.items():
            ratios = [r[1] for r in rows]
            worst = max(rows, key=lambda r: r[1])
            times = [r[2] for r in rows]
            print(
                f"  k={k:3d}  MSE ratio median {statistics.median(ratios):.3f}  max {worst[1]:.3f} ({worst[0]})"
                f"  time ratio median {statistics.median(times):.2f}  max {max(times):.2f}"
                + (
                    f"  reference median {statistics.median(r[3] for r in rows):.3f}  min {min(r[3] for r in rows):.3f}"
                    if rows[0][3] is not None
                    else ""
                )
            )
    return summary


def planar_table(images: dict[str, tuple[Path, np.ndarray]], encode_sizes: set[str], ks) -> list[tuple]:
    print("\n== global and channel modes (target: >= 30 MP/s) ==")
    print(f"  {'image':12} {'mode':8} {'k':>4} {'filter s':>8} {'MP/s':>6}", end="")
    print(f" {'.kq encode s':>12} {'MP/s':>6} {'peak MB':>8}")
    rows = []
    for label, (png, arr) in images.items():
        pixels = arr.shape[0] * arr.shape[1]
        for mode in ("global", "channel"):
            for k in ks:
                f = run_child("filter", png, k, mode)["filter"]
                line = f"  {label:12} {mode:8} {k:4d} {f:8.2f} {pixels / 1e6 / f:6.1f}"
                encode = None
                if label in encode_sizes:
                    r = run_child("kquant", png, k, mode, "1")
                    encode = r["encode"]
                    peak = fmt(r["peak"] and r["peak"] / 2**20, "8.0f")
                    line += f" {r['encode']:12.2f} {pixels / 1e6 / r['encode']:6.1f} {peak:>8}"
                print(line, flush=True)
                rows.append((label, mode, k, pixels / 1e6 / f, encode and pixels / 1e6 / encode))
    return rows


def print_targets(quality: dict, scale: dict, planar: list, import_s: tuple, numba_warm: dict) -> None:
    """The issue's targets against this run's figures (ratios: kquant / other)."""
    print("\n== Issue 5 targets, this run ==")
    if quality:
        medians = {k: statistics.median(r[1] for r in rows) for k, rows in quality.items()}
        worst = max((r[1], k, r[0]) for k, rows in quality.items() for r in rows)
        print(
            "  quality, MSE / pngquant --speed 1 (median <= 0.92 at every k, never > 1.0): medians "
            + ", ".join(f"k={k}: {m:.3f}" for k, m in medians.items())
            + f"; worst single {worst[0]:.3f} ({worst[2]}, k={worst[1]})"
        )
        reference = {k: statistics.median(r[3] for r in rows) for k, rows in quality.items() if rows[0][3] is not None}
        if reference:
            print(
                "  k-means reference (scikit-learn KMeans, 4 starts) MSE / pngquant --speed 1, medians: "
                + ", ".join(f"k={k}: {m:.3f}" for k, m in reference.items())
            )
        small = [r[2] for rows in quality.values() for r in rows]
        print(
            f"  small images (0.27 MP), .kq encode / pngquant --speed 4 (<= 2): median {statistics.median(small):.2f},"
            f" max {max(small):.2f}"
        )
    for (name, mp, k), r in scale.items():
        if mp < 12 or k != 256:
            continue
        ours, native, quant, pixels = r["ours"], r["native"], r["quantize"], r["pixels"]
        line = f"  {name} {mp} MP k=256:"
        if "pq4" in r:
            t4 = r["pq4"]["encode"]
            line += (
                f" time / pngquant --speed 4 (<= 1): .kq encode {ours['encode'] / t4:.2f},"
                f" fallback=False {native['encode'] / t4:.2f}, quantize only {quant['encode'] / t4:.2f};"
            )
        if ours["peak"] is not None:
            rgb = 3 * pixels
            line += (
                f" peak / RGB size (<= 4 at 24 MP): encode {ours['peak'] / rgb:.2f}, fallback=False"
                f" {native['peak'] / rgb:.2f}, quantize {quant['peak'] / rgb:.2f} (input image alone"
                f" {ours['input'] / rgb:.2f});"
            )
        line += f" decode / palette-PNG decode (<= 1): {ours['decode'] / ours['png_decode']:.2f}"
        print(line)
    if planar:
        print(
            "  global/channel (>= 30 MP/s), filter MP/s: "
            + ", ".join(f"{lbl} {m} k={k}: {f:.0f}" for lbl, m, k, f, _ in planar)
        )
        enc = [f"{lbl} {m} k={k}: {e:.1f}" for lbl, m, k, _, e in planar if e is not None]
        print("  global/channel whole .kq encode MP/s: " + ", ".join(enc))
    print(f"  import kquant_codec (< 0.3 s): best {import_s[0]:.3f} s, median {import_s[1]:.3f} s")
    print(
        f"  kernels ({numba_warm['backend']}): load {numba_warm['load_kernels']:.2f} s, first fit in a process"
        f" {numba_warm['first_fit']:.2f} s vs {numba_warm['second_fit']:.2f} s warm (2.2 MP, k=16)"
    )


def import_time() -> tuple[float, float]:
    code = "import time; t = time.perf_counter(); import kquant_codec; print(time.perf_counter() - t)"
    times = [
        float(subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout) for _ in range(5)
    ]
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run: fewer photos, sizes and k")
    parser.add_argument("--cap", type=float, default=30.0, help="seconds before MiniBatchKMeans is stopped")
    parser.add_argument("--keep", type=Path, help="directory to keep the test images in (default: temporary)")
    parser.add_argument(
        "--small-only",
        type=int,
        nargs="+",
        metavar="K",
        help="only the 0.27 MP photo table (quality and time against pngquant), at these k",
    )
    parser.add_argument(
        "--no-reference", action="store_true", help="skip the k-means reference (scikit-learn) of the quality table"
    )
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child[0]](args.child[1:])))
        return

    import kquant_codec as kq

    have_pq = shutil.which("pngquant") is not None
    pq_version = (
        subprocess.run(["pngquant", "--version"], capture_output=True, text=True).stdout.strip() if have_pq else None
    )
    versions = f"Python {sys.version.split()[0]}; numpy {np.__version__}; Pillow {Image.__version__}"
    print(f"kquant_codec {kq.__version__}; {versions}")
    print(f"cpus: {os.cpu_count()}; load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"pngquant: {pq_version}"
        if have_pq
        else "pngquant: MISSING from the PATH (apt-get install pngquant); its rows are skipped"
    )
    t_min, t_med = import_time()
    print(f"import kquant_codec: {t_min:.3f} s best, {t_med:.3f} s median of 5 fresh processes (target < 0.3 s)")

    work = args.keep or Path(tempfile.mkdtemp(prefix="kq_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        photos = sample_photos(args.quick)
        if args.small_only:
            quality_table(photos, tuple(args.small_only), have_pq, work, not args.no_reference)
            return
        quality = quality_table(
            photos, (2, 16, 256) if args.quick else KS_QUALITY, have_pq, work, not args.no_reference
        )

        plan = {1: (16, 256), 12: (256,)} if args.quick else {1: (16, 256), 12: (16, 256), 24: (256,)}
        names = ("china",) if args.quick else ("china", "flower")
        big: dict[str, tuple[Path, np.ndarray]] = {}
        scale: dict[tuple[str, int, int], dict] = {}
        print(
            "\n== Larger images (sample photos upscaled with Pillow LANCZOS), each kquant encode in a fresh process =="
        )
        for mp, ks in plan.items():
            for name in names:
                arr = upscale(photos[name], mp)
                png = work / f"{name}_{mp}mp.png"
                if not png.exists():
                    save_png(arr, png)
                big[f"{name} {mp} MP"] = (png, arr)
                for k in ks:
                    scale[name, mp, k] = scale_table(f"{name} {mp} MP", png, arr, k, args, have_pq, work)

        planar = {key: v for key, v in big.items() if key.startswith("china")}
        planar = planar_table(planar, {"china 1 MP"} if args.quick else {"china 1 MP", "china 12 MP"}, (16, 256))

        print("\n== kernel costs (fresh processes; china upscaled to 2.2 MP, above the numba threshold; k=16) ==")
        png = save_png(upscale(photos["china"], 2.2), work / "china_2mp.png")

        def costs(values: dict) -> str:
            return ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items() if v)

        warm = run_child("numba_cost", png)
        print("  default: " + costs(warm))
        with tempfile.TemporaryDirectory() as cache:
            cold = run_child("numba_cost", png, env={"NUMBA_CACHE_DIR": cache, "KQUANT_KERNELS": "jit"})
        print("  numba JIT, empty cache: " + costs(cold))
        print("  (seconds; _mb: resident MB above the process's start)")

        if not args.quick:
            print("\n== determinism: china 12 MP, k=256, one thread (BLAS, OpenMP, numba) vs the defaults ==")
            png = big["china 12 MP"][0]
            one = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
            h1 = run_child("digest", png, 256, env=one)["hash"]
            h2 = run_child("digest", png, 256)["hash"]
            print(f"  1 thread {h1}  default {h2}  {'IDENTICAL' if h1 == h2 else 'DIFFERENT'}")
        print_targets(quality, scale, planar, (t_min, t_med), warm)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
