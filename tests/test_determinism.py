"""Same input and parameters give the same result: across runs, thread counts, processes and threads."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kquant_codec import KMeansQuantize, KMeansQuantizer

DIGEST_SCRIPT = """
import hashlib, numpy as np
from sklearn.datasets import load_sample_image
from kquant_codec import KMeansQuantizer, kmeans_colour
arr = load_sample_image("flower.jpg")[::2, ::2]
h = hashlib.sha256()
for mode in ("rgb", "global", "channel"):
    q = KMeansQuantizer(k=24, mode=mode, seed=5).fit(arr)
    h.update(q.predict(arr).tobytes())
    h.update(np.concatenate([np.ravel(t) for t in (q.centroids_ if mode == "channel" else [q.centroids_])]).tobytes())
# the numba path (large images), on the full photo: thresholds lowered so that the test stays fast
kmeans_colour.NUMBA_MIN_PIXELS = 0
big = load_sample_image("flower.jpg")
for k in (7, 200):
    q = KMeansQuantizer(k=k, seed=5).fit(big)
    h.update(q.centroids_.tobytes() + q.predict(big).tobytes())
    h.update(kmeans_colour.label_pixels(big, q.centroids_).tobytes())
print(h.hexdigest())
"""

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _digest_in_subprocess(threads: str | None) -> str:
    env = dict(os.environ)
    for var in THREAD_VARS:
        env.pop(var, None)
        if threads is not None:
            env[var] = threads
    out = subprocess.run([sys.executable, "-c", DIGEST_SCRIPT], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_same_labels_across_processes_and_thread_counts():
    """BLAS, OpenMP and numba thread counts 1 and 3 and the defaults: the same labels and tables."""
    one = _digest_in_subprocess("1")
    assert one == _digest_in_subprocess(None)
    assert one == _digest_in_subprocess("3")


def test_thread_pool_matches_serial(china, flower):
    images = [china.crop((i * 40, 0, i * 40 + 160, 120)) for i in range(4)] + [flower.crop((0, 0, 150, 150))] * 4
    filters = [
        KMeansQuantize(k, mode=m)
        for k, m in zip([4, 16, 64, 8, 32, 5, 7, 200], ["rgb", "global", "channel"] * 3, strict=False)
    ]

    def work(i: int) -> bytes:
        return images[i].filter(filters[i]).tobytes()

    serial = [work(i) for i in range(len(images))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(work, range(len(images))))
    assert [hashlib.sha256(b).digest() for b in parallel] == [hashlib.sha256(b).digest() for b in serial]


def test_refit_is_identical(china_small):
    arr = np.asarray(china_small)
    a = KMeansQuantizer(k=40, seed=1).fit(arr)
    b = KMeansQuantizer(k=40, seed=1).fit(arr)
    np.testing.assert_array_equal(a.centroids_, b.centroids_)
    np.testing.assert_array_equal(a.predict(arr), b.predict(arr))
