"""Quantizer quality and time: kquant_codec's three modes next to scikit-learn's MiniBatchKMeans.

    python benchmarks/quantizers.py [--image china.jpg] [-k 2 8 32 256]

The reference is the seed tutorial's method: MiniBatchKMeans fitted on the raw samples (every pixel
for rgb, every channel value for global, each channel's values for channel), then ``predict``; its
float centres are rounded to uint8 for the reconstructed image. Uses only the public API.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image
from sklearn.cluster import MiniBatchKMeans
from sklearn.datasets import load_sample_image

import kquant_codec as kq


def minibatch_quantize(arr: np.ndarray, k: int, mode: str) -> np.ndarray:
    """The seed tutorial's quantization of a (H, W, 3) uint8 array; returns the quantized array."""

    def fit_predict(samples: np.ndarray) -> np.ndarray:
        model = MiniBatchKMeans(n_clusters=k, random_state=0, n_init=3).fit(samples)
        centres = np.clip(np.rint(model.cluster_centers_), 0, 255).astype(np.uint8)
        return centres[model.predict(samples)]

    h, w, c = arr.shape
    if mode == "rgb":
        return fit_predict(arr.reshape(-1, c).astype(np.float64)).reshape(h, w, c)
    if mode == "global":
        return fit_predict(arr.reshape(-1, 1).astype(np.float64)).reshape(h, w, c)
    out = np.empty_like(arr)
    for ch in range(c):
        out[:, :, ch] = fit_predict(arr[:, :, ch].reshape(-1, 1).astype(np.float64)).reshape(h, w)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="china.jpg", choices=["china.jpg", "flower.jpg"])
    parser.add_argument("-k", type=int, nargs="+", default=[2, 8, 32, 256])
    parser.add_argument("--modes", nargs="+", default=list(kq.MODES), choices=kq.MODES)
    args = parser.parse_args()

    arr = load_sample_image(args.image)
    img = Image.fromarray(arr)
    print(f"{args.image}: {img.size[0]}x{img.size[1]} RGB; MSE per sample; times in seconds")
    print(
        f"{'mode':8} {'k':>4} | {'kquant MSE':>10} {'time':>6} | {'MiniBatch MSE':>13} {'time':>6} | {'MSE ratio':>9}"
    )
    for mode in args.modes:
        for k in args.k:
            start = time.perf_counter()
            ours = img.filter(kq.KMeansQuantize(k, mode=mode))
            t_ours = time.perf_counter() - start
            start = time.perf_counter()
            ref = minibatch_quantize(arr, k, mode)
            t_ref = time.perf_counter() - start
            m_ours, m_ref = kq.mse(arr, ours), kq.mse(arr, ref)
            ratio = m_ours / m_ref if m_ref else float("nan")
            print(f"{mode:8} {k:4d} | {m_ours:10.2f} {t_ours:6.2f} | {m_ref:13.2f} {t_ref:6.2f} | {ratio:9.3f}")


if __name__ == "__main__":
    main()
