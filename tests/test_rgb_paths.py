"""The "rgb" learner's two engines (numpy; numba kernels for large images) and what uses them.

Both engines must label every pixel with its nearest palette colour exactly (ties to the lower index),
keep images with at most k colours lossless, and give the same result on every run and thread count.
The numba engine is forced on small images (``engine="numba"`` or a lowered ``NUMBA_MIN_PIXELS``) so
the tests stay fast; one test runs a 12-megapixel image through the default ("auto") engine.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import kquant_codec as kq
from kquant_codec import KMeansQuantize, KMeansQuantizer, kmeans_colour
from kquant_codec.kmeans_colour import fit_palette, label_pixels
from kquant_codec.pixels import as_palette_image

ENGINES = ["numpy", "numba"]


def reference_labels(samples: np.ndarray, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force nearest palette row of every pixel, exact float64 on integers; first minimum wins.

    Returns (labels (N,), squared distances (N,)); one search per distinct colour, in blocks.
    """
    flat = samples.reshape(-1, samples.shape[-1])
    keys = np.zeros(len(flat), np.uint64)
    for c in range(flat.shape[1]):
        keys = (keys << np.uint64(8)) | flat[:, c]
    distinct, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    p = flat[first].astype(np.float64)
    c = palette.astype(np.float64)
    index = np.empty(len(p), np.int64)
    dist = np.empty(len(p), np.int64)
    step = 1 << 16
    for s in range(0, len(p), step):
        blk = (p[s : s + step] ** 2).sum(1)[:, None] - 2 * p[s : s + step] @ c.T + (c**2).sum(1)[None]
        index[s : s + step] = np.argmin(blk, axis=1)  # exact: integers far below 2**53
        dist[s : s + step] = np.rint(blk.min(axis=1)).astype(np.int64)
    inverse = inverse.reshape(-1)
    return index[inverse], dist[inverse]


def check_exact(samples: np.ndarray, palette: np.ndarray, labels: np.ndarray) -> int:
    """Assert labels are the exact nearest rows (ties lower); return the total squared error."""
    want, dist = reference_labels(samples, palette)
    np.testing.assert_array_equal(labels.reshape(-1), want)
    return int(dist.sum())


def upscale(img: Image.Image, megapixels: float) -> np.ndarray:
    scale = (megapixels * 1e6 / (img.width * img.height)) ** 0.5
    size = (round(img.width * scale), round(img.height * scale))
    return np.asarray(img.resize(size, Image.Resampling.LANCZOS))


# --- exactness and losslessness, both engines -----------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("k", [1, 2, 16, 256])
def test_every_pixel_gets_its_nearest_colour(china, engine, k):
    arr = np.asarray(china)[::2, ::2]
    fit = fit_palette(arr, k, engine=engine)
    pal = fit.palette
    assert pal.dtype == np.uint8 and 1 <= pal.shape[0] <= k and pal.shape[1] == 3
    assert [tuple(r) for r in pal.tolist()] == sorted(set(map(tuple, pal.tolist())))  # sorted, distinct
    assert fit.sse == check_exact(arr, pal, fit.labels)
    np.testing.assert_array_equal(label_pixels(arr, pal, engine=engine), fit.labels)
    assert np.bincount(fit.labels.reshape(-1), minlength=len(pal)).min() > 0  # every entry used


@pytest.mark.parametrize("engine", ENGINES)
def test_ties_go_to_the_lower_index(engine):
    palette = np.array([[0, 0, 0], [2, 0, 0], [2, 2, 0], [0, 2, 0]], np.uint8)
    pixels = np.array([[[1, 0, 0], [1, 1, 0], [2, 1, 0], [1, 2, 0], [0, 1, 0], [1, 1, 9]]], np.uint8)
    labels = label_pixels(np.repeat(pixels, 3, axis=0), palette, engine=engine)
    np.testing.assert_array_equal(labels[0], [0, 0, 1, 2, 0, 0])


@pytest.mark.parametrize("engine", ENGINES)
def test_few_colours_are_kept_exactly(engine):
    rng = np.random.default_rng(7)
    colours = rng.integers(0, 256, (40, 3), dtype=np.uint8)
    arr = colours[rng.integers(0, 40, (60, 70))]
    for k in (40, 64, 256):
        fit = fit_palette(arr, k, engine=engine)
        np.testing.assert_array_equal(fit.palette, np.unique(colours, axis=0))
        np.testing.assert_array_equal(fit.palette[fit.labels], arr)
        assert fit.sse == 0


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "CMYK"])
def test_other_channel_counts_are_exact_and_lossless(china, mode):
    """C = 1, 2, 4: the general numpy path (alpha quantized with the colour for LA and RGBA)."""
    img = china.crop((0, 0, 200, 150)).convert(mode)
    arr = np.asarray(img).reshape(img.height, img.width, -1)
    for k in (3, 64):
        q = KMeansQuantizer(k).fit(arr)
        labels = q.predict(arr)
        assert q.centroids_.shape[1] == arr.shape[2] and len(q.centroids_) <= k
        assert q.inertia_ == check_exact(arr, q.centroids_, labels)
    few = arr[:5, :6]  # at most 30 colours
    q = KMeansQuantizer(32).fit(few)
    np.testing.assert_array_equal(q.reconstruct(q.predict(few)), few)


@pytest.mark.parametrize("moves", [0, 1, 3, 40, 120])
def test_assign_after_a_few_centres_moved_is_exact(moves):
    """``assign(..., previous=...)`` searches again only near the centres that changed; the labels and the
    error must be those of a full search (repeated centres and moves onto another centre: ties)."""
    K = kmeans_colour._kernels()
    fix = kmeans_colour.FIX
    rng = np.random.default_rng(moves)
    old = rng.integers(0, 256, (120, 3)) * fix
    old[60:70] = old[:10]
    P = (rng.integers(0, 256, (20000, 3)) * fix).astype(np.int32)
    W = rng.integers(1, 9, P.shape[0]).astype(np.int32)
    idx = np.zeros(P.shape[0], np.uint8)
    K.assign(P, old, idx, W)
    new = old.copy()
    which = rng.choice(120, moves, replace=False)
    new[which] += rng.integers(-40, 41, (moves, 3)) * fix
    new[which[: moves // 4]] = old[rng.integers(0, 120, moves // 4)]  # onto another centre
    new = np.clip(new, 0, 255 * fix)
    err = K.assign(P, new, idx, W, old)
    ref, d = kmeans_colour._nearest(P.astype(np.int64), new)
    np.testing.assert_array_equal(idx, ref)
    assert err == int((d * W).sum())


@pytest.mark.parametrize("k", [1, 5, 24, 25, 256])
def test_centre_neighbour_lists_match_a_sort_of_all_distances(k):
    """``centre_order`` (built on two threads): each centre's min(k, 24) nearest centres, by squared distance
    then index (repeated centres: ties), and their distances."""
    K = kmeans_colour._kernels()
    rng = np.random.default_rng(k)
    c = rng.integers(0, 64, (k, 3)) * kmeans_colour.FIX
    c[k // 2 :: 7] = c[0]
    order, dist = K.centre_order(np.ascontiguousarray(c, dtype=np.int64))
    d2 = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    near = min(k, 24)
    ref = np.lexsort((np.broadcast_to(np.arange(k), (k, k)), d2), axis=1)[:, :near]
    np.testing.assert_array_equal(order, ref)
    np.testing.assert_array_equal(dist, np.sqrt(np.take_along_axis(d2, ref, 1).astype(np.float64)))


def test_starting_guesses_are_the_nearest_centre_of_each_box_middle():
    """``guess_labels`` (the starting labels of compiled Lloyd runs): for each point, the nearest centre
    (ties to the lower index) of the middle of its 16^3 colour box; and ``assign`` from them is exact."""
    K = kmeans_colour._kernels()
    fix = kmeans_colour.FIX
    rng = np.random.default_rng(8)
    centres = rng.integers(0, 256, (200, 3)) * fix
    centres[50:60] = centres[:10]  # repeated centres: ties
    points = rng.integers(0, 256, (5000, 3))
    P = (points * fix).astype(np.int32)
    guess = K.guess_labels(P, centres, fix)
    middles = (points // 16 * 16) * fix + 8 * fix
    np.testing.assert_array_equal(guess, kmeans_colour._nearest(middles, centres)[0])
    W = np.ones(P.shape[0], np.int32)
    K.assign(P, centres, guess, W)
    np.testing.assert_array_equal(guess, kmeans_colour._nearest(P.astype(np.int64), centres)[0])


def test_numba_engine_matches_numpy_when_lossless_and_both_exact(flower):
    arr = np.asarray(flower)[::3, ::3]
    a, b = (fit_palette(arr, 64, engine=e) for e in ENGINES)
    for fit in (a, b):
        assert fit.sse == check_exact(arr, fit.palette, fit.labels)
    assert abs(a.sse - b.sse) < 0.05 * a.sse  # different polish, same quality


@pytest.mark.parametrize("k", [2, 5, 16, 64, 256])
def test_compiled_learning_steps_give_the_numpy_result_exactly(china, flower, k):
    """Small images, "auto": numba runs k-means++, Lloyd and the integer stage of the numpy path. They must
    give the very same palette, labels and error (only faster), so that the choice cannot change output."""
    K = kmeans_colour._kernels()
    rng = np.random.default_rng(k)
    clumps = rng.integers(0, 256, (9, 3))[rng.integers(0, 9, (90, 80))] + rng.integers(-3, 4, (90, 80, 3))
    images = [np.asarray(china)[::2, ::2], np.asarray(flower)[::3, ::2], np.clip(clumps, 0, 255).astype(np.uint8)]
    for arr in images:
        flat = arr.reshape(-1, 3)
        a = kmeans_colour._fit_small(flat, k, 0, kmeans_colour.LEARN_ITERS, None)
        b = kmeans_colour._fit_small(flat, k, 0, kmeans_colour.LEARN_ITERS, None, K)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
        assert a[2] == b[2]


def test_compiled_search_is_exact_when_it_must_look_past_the_near_list():
    """256 centres packed in one corner, points in the far corner: the pruning bound then covers more
    centres than each one's listed neighbours, and the search must fall back to checking all of them."""
    K = kmeans_colour._kernels()
    rng = np.random.default_rng(5)
    centres = np.unique(rng.integers(0, 40, (300, 3)), axis=0)[:256] * kmeans_colour.FIX
    points = np.concatenate([rng.integers(150, 256, (3000, 3)), rng.integers(0, 60, (3000, 3))])
    P = (points * kmeans_colour.FIX).astype(np.int32)
    W = rng.integers(1, 5, P.shape[0]).astype(np.int32)
    for guess in (np.zeros(P.shape[0], np.uint8), rng.integers(0, 256, P.shape[0]).astype(np.uint8)):
        idx = guess.copy()
        err = K.assign(P, centres, idx, W)
        ref, d = kmeans_colour._nearest(P.astype(np.int64), centres)
        np.testing.assert_array_equal(idx, ref)
        assert err == int((d * W).sum())


def test_twelve_megapixels_take_the_numba_path_and_stay_exact(china):
    arr = upscale(china, 12)
    assert arr.shape[0] * arr.shape[1] >= kmeans_colour.NUMBA_MIN_PIXELS
    q = KMeansQuantizer(256)
    q._engine = "auto"
    labels = q.fit(arr).predict(arr)
    assert sys.modules.get("kquant_codec._rgb_kernels") is not None
    assert q.inertia_ == check_exact(arr, q.centroids_, labels)
    fresh = label_pixels(arr, q.centroids_)  # the numba labelling without the fit's labels
    np.testing.assert_array_equal(fresh, labels)


def test_no_pixels_by_k_distance_matrix():
    """256k distinct colours, k = 256: a pixels x k float32 matrix alone would take 256 MB."""
    rng = np.random.default_rng(3)
    keys = rng.permutation(1 << 24)[: 1 << 18].astype(np.uint32)
    arr = np.stack([keys >> 16, (keys >> 8) & 255, keys & 255], 1).astype(np.uint8).reshape(512, 512, 3)
    tracemalloc.start()
    try:
        fit = fit_palette(arr, 256, engine="numpy")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 128 * 2**20, peak / 2**20  # about 50 MB: distances in blocks of at most 8 MB
    assert fit.sse == check_exact(arr, fit.palette, fit.labels)


# --- the fit's labels reused by predict ------------------------------------------------------------


def test_predict_after_fit_reuses_labels_only_for_the_unchanged_array(china):
    arr = np.array(china)[::2, ::2]
    q = KMeansQuantizer(16).fit(arr)
    first = q.predict(arr)
    np.testing.assert_array_equal(first, label_pixels(arr, q.centroids_))
    np.testing.assert_array_equal(q.predict(arr), first)  # the kept labels are used once, then recomputed

    q.fit(arr)
    arr[:10, :10] = 255 - arr[:10, :10]  # changed in place after fit: the kept labels must not be used
    np.testing.assert_array_equal(q.predict(arr), label_pixels(arr, q.centroids_))
    q.fit(arr)
    other = arr.copy()
    np.testing.assert_array_equal(q.predict(other), label_pixels(other, q.centroids_))
    back = pickle.loads(pickle.dumps(q.fit(arr)))
    assert "_fitted_labels" not in back.__dict__
    np.testing.assert_array_equal(back.predict(arr), q.predict(arr))


def test_weighted_fit_still_works_with_zero_weights():
    rng = np.random.default_rng(5)
    palette = rng.integers(0, 256, (1, 50, 3), dtype=np.uint8)
    counts = rng.integers(0, 5, (1, 50))
    counts[0, :10] = 0
    q = KMeansQuantizer(6).fit(palette, sample_weight=counts)
    expanded = np.repeat(palette[0], counts[0], axis=0)[None]
    labels = q.predict(expanded)
    assert q.inertia_ == check_exact(expanded, q.centroids_, labels)
    check_exact(palette, q.centroids_, q.predict(palette))  # zero-weight entries get their nearest too


# --- threads, processes, fork, missing numba ------------------------------------------------------


def test_numba_engine_from_many_threads(flower):
    arr = np.asarray(flower)
    crops = [np.ascontiguousarray(arr[i * 20 : i * 20 + 200]) for i in range(6)]

    def work(a):
        fit = fit_palette(a, 32, engine="numba")
        return fit.palette.tobytes() + fit.labels.tobytes()

    serial = [work(a) for a in crops]
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(work, crops)) == serial


def test_ranges_come_back_in_order_and_the_caller_works_alone_when_helpers_are_busy(monkeypatch):
    """``run_ranges``: results in range order covering 0..n; with every helper thread busy elsewhere the
    calling thread does all the ranges itself instead of waiting."""
    import threading

    from kquant_codec import _ranges as K

    monkeypatch.setattr(K, "_threads", lambda: 3)
    monkeypatch.setattr(K, "_HELPERS", [])  # a pool of 2 helpers, made under the patched thread count
    workers = []

    def part(tag, start, stop):
        workers.append(threading.get_ident())
        return tag, start, stop

    n = 5 * K.MIN_RANGE + 7
    out = K.run_ranges(part, n, "t")
    assert out[0][1] == 0 and out[-1][2] == n and len(out) == 12
    assert all(a[2] == b[1] for a, b in zip(out, out[1:], strict=False))
    gate = threading.Event()
    blockers = [K._helper_pool().submit(lambda: gate.wait(60)) for _ in range(2)]
    try:
        workers.clear()
        assert K.run_ranges(part, n, "t") == out
        assert set(workers) == {threading.get_ident()}
    finally:
        gate.set()
    assert all(b.result() for b in blockers)


def test_helper_threads_never_hold_up_the_exit_of_the_process(monkeypatch):
    """The helper pool's threads are daemon threads: with ThreadPoolExecutor's, a Ctrl-C landing while the
    pool started a thread left that thread unknown to the executor's exit hook, and a ``kquant batch`` worker
    then waited for it forever at exit."""
    from kquant_codec import _ranges as K

    monkeypatch.setattr(K, "_threads", lambda: 3)
    monkeypatch.setattr(K, "_HELPERS", [])
    K.run_ranges(lambda start, stop: stop - start, 5 * K.MIN_RANGE)
    threads = K._helper_pool()._threads
    assert len(threads) == 2 and all(t.daemon and t.is_alive() for t in threads)


def test_a_failing_range_fails_the_call_after_every_helper_has_stopped(monkeypatch):
    """An exception in one range (whichever thread runs it) comes out of ``run_ranges``, and only once no
    range is still running: the ranges write the caller's arrays."""
    import threading
    import time

    from kquant_codec import _ranges as K

    monkeypatch.setattr(K, "_threads", lambda: 3)
    monkeypatch.setattr(K, "_HELPERS", [])
    lock = threading.Lock()
    running = [0]

    def part(start, stop):
        with lock:
            running[0] += 1
        try:
            time.sleep(0.02)
            if start == 0:
                raise ValueError("range 0 failed")
        finally:
            with lock:
                running[0] -= 1

    with pytest.raises(ValueError, match="range 0 failed"):
        K.run_ranges(part, 6 * K.MIN_RANGE)
    assert running[0] == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_its_own_range_helpers():
    out = _run(
        """
        import os
        from kquant_codec import _ranges as K
        K._threads = lambda: 2
        part = lambda start, stop: (start, stop)
        n = 4 * K.MIN_RANGE
        parent = K.run_ranges(part, n)
        pid = os.fork()
        if pid == 0:
            same = K.run_ranges(part, n) == parent
            os._exit(0 if same and K._HELPERS[0][0] == os.getpid() else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0", out.stderr


def _run(script: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, env=full_env, timeout=300
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_numba_kernels_work_in_a_forked_child(flower):
    out = _run(
        """
        import os, numpy as np
        from sklearn.datasets import load_sample_image
        from kquant_codec.kmeans_colour import fit_palette
        arr = load_sample_image("flower.jpg")[::2, ::2]
        parent = fit_palette(arr, 16, engine="numba").labels
        pid = os.fork()
        if pid == 0:
            child = fit_palette(arr, 16, engine="numba").labels
            os._exit(0 if np.array_equal(child, parent) else 3)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0", out.stderr


def test_without_numba_large_images_fall_back_to_numpy_with_one_warning():
    out = _run(
        """
        import sys, warnings, hashlib
        sys.modules["numba"] = None  # as if numba were not installed (or failed to import)
        import numpy as np
        from sklearn.datasets import load_sample_image
        import kquant_codec
        from kquant_codec import kmeans_colour, KMeansQuantizer
        kmeans_colour.NUMBA_MIN_PIXELS = 0
        arr = load_sample_image("china.jpg")[::2, ::2]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = KMeansQuantizer(16).fit(arr)
            b = KMeansQuantizer(16).fit(arr)
        ref = kmeans_colour.fit_palette(arr, 16, engine="numpy").palette
        assert np.array_equal(a.centroids_, ref) and np.array_equal(b.centroids_, ref)
        print(sum("compiled kernels are unusable" in str(w.message) for w in caught))
        """,
        {"KQUANT_KERNELS": "jit"},  # no install-time kernels either
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_import_does_not_load_numba_or_scikit_learn():
    out = _run(
        """
        import sys
        import kquant_codec
        print(sorted(m for m in ("numba", "llvmlite", "sklearn", "scipy", "threadpoolctl") if m in sys.modules))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- the encoder uses the fit's palette and labels ------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "options"),
    [("RGB", {"k": 16}), ("RGBA", {"k": 8}), ("RGBA", {"k": 8, "alpha": "quantize"}), ("LA", {"k": 5}),
     ("L", {"k": 4}), ("CMYK", {"k": 12}), ("YCbCr", {"k": 7}), ("RGB", {"mode": "rgb"})],
)  # fmt: skip
def test_encoder_reuses_the_fit_and_writes_what_the_filter_makes(china, mode, options):
    from kquant_codec import encoder

    img = china.crop((100, 100, 260, 220)).convert(mode)
    if mode in ("RGBA", "LA"):
        img.putalpha(Image.fromarray(np.asarray(img.convert("L"))[::-1].copy()))
    data = encoder.encode_image(img, **options, fallback=False)
    want = img.filter(KMeansQuantize(options.get("k", 256), alpha=options.get("alpha", "keep")))
    back = Image.open(io.BytesIO(data))
    assert back.mode == want.mode and back.tobytes() == want.tobytes()
    # byte for byte what the slower path (recounting the quantized image's colours) writes
    fitted = kq.fit_image(img, options.get("k", 256), alpha=options.get("alpha", "keep"))
    quick = encoder._layouts(fitted.to_image(), "rgb", options.get("alpha", "keep"), fitted)
    slow = encoder._layouts(fitted.to_image(), "rgb", options.get("alpha", "keep"))
    assert len(quick) == len(slow) == 1
    for field in ("quant_mode", "alpha", "channels", "table_sizes", "tables"):
        assert getattr(quick[0], field) == getattr(slow[0], field), field
    np.testing.assert_array_equal(quick[0].labels, slow[0].labels)
    if slow[0].alpha_plane is None:
        assert quick[0].alpha_plane is None
    else:
        np.testing.assert_array_equal(quick[0].alpha_plane, slow[0].alpha_plane)
    palette = encoder._fitted_palette_image(fitted)  # the PNG fallback's palette version, from the fit
    if mode != "RGB":
        assert palette is None
    else:
        counted = as_palette_image(fitted.to_image())
        assert palette.mode == counted.mode == "P" and palette.tobytes() == counted.tobytes()
        assert palette.getpalette() == counted.getpalette()


# --- large images read in strips, labels relabelled in place ------------------------------------


def test_large_rgb_fit_reads_strips_and_matches_the_joined_array(flower, monkeypatch):
    """fit_image of an RGB image of >= NUMBA_MIN_PIXELS reads it in strips (no joined copy); same palette,
    labels and error as fitting the joined array."""
    from kquant_codec import quantize

    arr = upscale(flower, 2.3)
    img = Image.fromarray(arr)
    expected = KMeansQuantizer(64).fit(arr)
    expected_labels = expected.predict(arr)

    def no_join(*args, **kwargs):
        raise AssertionError("the strip path should not join the image")

    monkeypatch.setattr(quantize, "split_image", no_join)
    fitted = quantize.fit_image(img, 64)
    np.testing.assert_array_equal(fitted.quantizer.centroids_, expected.centroids_)
    np.testing.assert_array_equal(fitted.labels, expected_labels)
    assert fitted.quantizer.inertia_ == expected.inertia_ == check_exact(arr, expected.centroids_, expected_labels)


def test_strip_labelling_checks_the_pixel_count():
    K = kmeans_colour._kernels()
    strip = np.zeros((2, 5, 3), np.uint8)
    lut = np.zeros(1 << 24, np.uint8)
    assert K.label_strips(lambda: [strip, strip], 20, lut).shape == (20,)
    with pytest.raises(ValueError, match="more pixels"):
        K.label_strips(lambda: [strip, strip, strip], 20, lut)
    with pytest.raises(ValueError, match="fewer pixels"):
        K.label_strips(lambda: [strip], 20, lut)


def test_native_payload_relabels_the_fit_in_place_and_gives_it_back(china):
    from kquant_codec import encoder, quantize

    fitted = quantize.fit_image(china, 32)
    before = fitted.labels.copy()
    copied = encoder._native_candidates(encoder._Deferred(fitted), "rgb", "keep", fitted)
    in_place = encoder._native_candidates(encoder._Deferred(fitted), "rgb", "keep", fitted, in_place=True)
    assert copied == in_place
    np.testing.assert_array_equal(fitted.labels, before)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 200, (1100, 1000), dtype=np.uint8)  # more than one block of 2**20
    lut = rng.permutation(256).astype(np.uint8)
    want = lut[labels]
    encoder._relabel_in_place(lut, labels)
    np.testing.assert_array_equal(labels, want)
