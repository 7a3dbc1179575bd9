"""The learner and the Pillow filter: modes, image modes, exactness, determinism, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import kquant_codec as kq
from kquant_codec import KMeansQuantize, KMeansQuantizer
from kquant_codec.filter import image_from_core

from .conftest import synthetic_images

SYNTHETIC = synthetic_images()


def colours(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img.convert("RGB")).reshape(-1, 3)
    return np.unique(arr, axis=0)


# --- rgb mode against scikit-learn ----------------------------------------------------------------


@pytest.mark.parametrize(("photo", "k"), [("china", 8), ("china", 32), ("flower", 16)])
def test_rgb_mse_no_worse_than_sklearn_kmeans_on_raw_pixels(request, photo, k):
    """The seed tutorial's way: scikit-learn KMeans on every raw pixel (its float centres, unrounded)."""
    from sklearn.cluster import KMeans

    img = request.getfixturevalue(photo)
    pixels = np.asarray(img).reshape(-1, 3).astype(np.float64)
    ref = KMeans(n_clusters=k, random_state=0, n_init=1).fit(pixels)
    ref_mse = ref.inertia_ / pixels.size
    ours = kq.mse(img, img.filter(KMeansQuantize(k)))
    assert ours <= ref_mse * 1.02, (ours, ref_mse)


def test_rgb_assigns_each_pixel_to_its_nearest_rounded_centroid(china_small):
    q = KMeansQuantizer(k=12).fit(np.asarray(china_small))
    labels = q.predict(np.asarray(china_small))
    pix = np.asarray(china_small).reshape(-1, 3).astype(np.int64)
    table = q.centroids_.astype(np.int64)
    d = ((pix[:, None, :] - table[None, :, :]) ** 2).sum(axis=2)
    assert q.centroids_.dtype == np.uint8 and table.shape == (12, 3)
    np.testing.assert_array_equal(labels.reshape(-1), np.argmin(d, axis=1))
    assert q.inertia_ == int(d.min(axis=1).sum())


def test_rgb_few_colours_is_lossless_and_exact_palette():
    img = SYNTHETIC["few_colours"].convert("RGB")
    out = img.filter(KMeansQuantize(8))
    assert out.tobytes() == img.tobytes()
    q = KMeansQuantizer(k=3).fit(np.asarray(img))
    assert sorted(map(tuple, q.centroids_.tolist())) == sorted(map(tuple, colours(img).tolist()))


def test_rgb_is_deterministic_and_seed_matters(china_small):
    arr = np.asarray(china_small)
    a = KMeansQuantizer(k=16, seed=3).fit(arr).centroids_
    b = KMeansQuantizer(k=16, seed=3).fit(arr).centroids_
    np.testing.assert_array_equal(a, b)


# --- 1-D modes -----------------------------------------------------------------------------------


def test_global_uses_at_most_k_levels_shared_by_channels(china):
    out = np.asarray(china.filter(KMeansQuantize(8, mode="global")))
    assert np.unique(out).size <= 8
    q = KMeansQuantizer(k=8, mode="global").fit(np.asarray(china))
    assert set(np.unique(out).tolist()) <= set(q.centroids_.tolist())


def test_channel_uses_at_most_k_levels_per_channel(china):
    out = np.asarray(china.filter(KMeansQuantize(4, mode="channel")))
    for c in range(3):
        assert np.unique(out[:, :, c]).size <= 4
    assert np.unique(out).size > 4  # the channels really have tables of their own


def test_channel_mode_is_exact_per_channel(china):
    from kquant_codec.kmeans1d import optimal_levels

    arr = np.asarray(china)
    q = KMeansQuantizer(k=5, mode="channel").fit(arr)
    for c in range(3):
        hist = np.bincount(arr[:, :, c].ravel(), minlength=256)
        np.testing.assert_array_equal(q.centroids_[c], optimal_levels(hist, 5))


def test_predict_reconstruct_roundtrip_shapes(china_small):
    arr = np.asarray(china_small)
    for mode, shape in [("rgb", arr.shape[:2]), ("global", arr.shape), ("channel", arr.shape)]:
        q = KMeansQuantizer(k=6, mode=mode).fit(arr)
        labels = q.predict(arr)
        assert labels.dtype == np.uint8 and labels.shape == shape
        np.testing.assert_array_equal(q.reconstruct(labels), q.transform(arr))


# --- image modes through the filter -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
@pytest.mark.parametrize("mode", kq.MODES)
def test_filter_keeps_mode_and_size(name, mode):
    img = SYNTHETIC[name]
    k = 3
    out = img.filter(KMeansQuantize(k, mode=mode))
    assert out.mode == img.mode and out.size == img.size
    if mode == "rgb":
        assert colours(out).shape[0] <= k
    if img.mode in ("RGBA", "LA"):
        np.testing.assert_array_equal(np.asarray(out)[:, :, -1], np.asarray(img)[:, :, -1])


def test_palette_image_keeps_indices_and_gets_k_colours():
    img = SYNTHETIC["palette"]
    out = img.filter(KMeansQuantize(5))
    assert out.mode == "P"
    np.testing.assert_array_equal(np.asarray(out), np.asarray(img))
    assert colours(out).shape[0] <= 5
    # the same as quantizing its RGB expansion: k-means on palette entries weighted by use
    direct = img.convert("RGB").filter(KMeansQuantize(5))
    np.testing.assert_array_equal(np.asarray(out.convert("RGB")), np.asarray(direct))


def test_alpha_quantize_option_puts_alpha_in_the_palette():
    img = SYNTHETIC["noise_rgba"]
    out = img.filter(KMeansQuantize(4, alpha="quantize"))
    assert np.unique(np.asarray(out).reshape(-1, 4), axis=0).shape[0] <= 4


def test_filter_class_without_arguments_works():
    img = SYNTHETIC["noise_rgb"]
    assert colours(img.filter(KMeansQuantize)).shape[0] <= 8


def test_empty_and_tiny_images():
    for size in [(0, 0), (0, 5), (5, 0), (1, 1)]:
        img = Image.new("RGB", size, (9, 8, 7))
        for mode in kq.MODES:
            out = img.filter(KMeansQuantize(4, mode=mode))
            assert out.size == size and out.mode == "RGB"
            assert out.tobytes() == img.tobytes()
    for size in [(0, 5), (5, 0)]:  # a palette image with a palette but no pixels: no colour weighs anything
        pal = Image.new("P", size)
        pal.putpalette(bytes(range(9)))
        for mode in kq.MODES:
            out = pal.filter(KMeansQuantize(2, mode=mode))
            assert out.size == size and out.mode == "P"


def test_image_from_core_wraps_pillow_core():
    img = SYNTHETIC["noise_rgb"]
    wrapped = image_from_core(img.im)
    assert wrapped.mode == "RGB" and wrapped.size == img.size
    assert wrapped.tobytes() == img.tobytes()


# --- bad parameters and modes --------------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 257, -1, 2.5, "8", True, None])
def test_bad_k_is_a_value_error_naming_k(k):
    with pytest.raises(ValueError, match="k must be an integer from 1 to 256"):
        KMeansQuantize(k)
    with pytest.raises(ValueError, match="k must be"):
        KMeansQuantizer(k=k).fit(np.zeros((2, 2, 3), np.uint8))


@pytest.mark.parametrize("seed", [-1, 2.5, "3", True, None])
def test_bad_seed_is_a_value_error_naming_seed(seed):
    """A negative seed too: numpy's own error ("expected non-negative integer") named no parameter."""
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        KMeansQuantize(8, seed=seed)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        KMeansQuantizer(k=4, seed=seed).fit(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        Image.new("RGB", (4, 4)).save(io.BytesIO(), format="KQ", k=4, mode="global", seed=seed)


def test_bad_mode_and_alpha_are_value_errors():
    with pytest.raises(ValueError, match="mode must be one of"):
        KMeansQuantize(8, mode="lab")
    with pytest.raises(ValueError, match="alpha must be one of"):
        KMeansQuantize(8, alpha="drop")


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_unsupported_image_modes_name_the_mode(mode):
    img = Image.new(mode, (4, 4))
    with pytest.raises(ValueError, match=f"image mode '{mode}' is not supported"):
        img.filter(KMeansQuantize(4))


@pytest.mark.parametrize("mode", ["PA", "RGBX", "RGBa", "La"])
def test_unsupported_8_bit_modes_are_not_called_16_bit(mode):
    with pytest.raises(ValueError, match=f"image mode '{mode}' is not supported") as caught:
        Image.new(mode, (4, 4)).filter(KMeansQuantize(4))
    assert "more than 256 levels" not in str(caught.value)


def test_k_1_and_k_256_everywhere(china_small):
    for mode in kq.MODES:
        for k in (1, 256):
            out = china_small.filter(KMeansQuantize(k, mode=mode))
            assert out.size == china_small.size
    assert colours(china_small.filter(KMeansQuantize(1))).shape[0] == 1


def test_scikit_learn_protocol_get_params_set_params_and_clone(china_small):
    from sklearn.base import clone

    q = KMeansQuantizer(k=5, mode="channel", seed=3, max_iter=7)
    assert q.get_params() == {"k": 5, "mode": "channel", "seed": 3, "max_iter": 7}
    arr = np.asarray(china_small)
    q.fit(arr)
    twin = clone(q)  # unfitted, same parameters
    assert twin.get_params() == q.get_params() and not hasattr(twin, "centroids_")
    assert np.array_equal(twin.fit(arr).predict(arr), q.predict(arr))
    assert q.set_params(k=2, mode="rgb") is q and q.get_params()["k"] == 2
    assert len(q.fit(arr).centroids_) == 2
    with pytest.raises(ValueError, match="invalid parameter 'colours'"):
        q.set_params(colours=4)


@pytest.mark.parametrize("name", ["china", "flower"])
def test_rgb_k_1_is_the_exact_uint8_optimum(name):
    """At k = 1 the best uint8 centre is the per-channel mean rounded once; the integer stage rounded the
    mean on its 1/4 grid first (china's green mean 145.469 -> 145.5 -> 146), a slightly larger error."""
    from sklearn.datasets import load_sample_image

    img = load_sample_image(f"{name}.jpg")
    flat = img.reshape(-1, 3).astype(np.int64)
    q = KMeansQuantizer(1).fit(img)
    best = np.floor(flat.mean(axis=0) + 0.5).astype(np.int64)
    assert q.centroids_.tolist() == [best.tolist()]
    assert q.inertia_ == int(((flat - best) ** 2).sum())
    for c in range(3):  # brute force: no other level does better in any channel
        errs = [int(((flat[:, c] - v) ** 2).sum()) for v in range(256)]
        assert errs[best[c]] == min(errs)


def test_palette_indices_past_the_palette_count_as_the_black_pillow_shows():
    """Indices 2 and 5 with a 2-entry palette show as black; k = 1 gave two colours (the centroid and that
    black), breaking "at most k colours"."""
    img = Image.fromarray(np.array([[0, 1, 2, 5]], np.uint8), "P")
    img.putpalette([255, 0, 0, 0, 255, 0])
    out = img.filter(KMeansQuantize(1))
    assert len(colours(out)) == 1
    assert np.array_equal(np.asarray(out), np.asarray(img))
    assert len(colours(img.filter(KMeansQuantize(2)))) == 2


@pytest.mark.parametrize("mode", ["rgb", "global", "channel"])
def test_fully_transparent_pixels_do_not_take_centroids(china, mode):
    """With alpha kept exact, the colour under alpha 0 is invisible, yet it was learned like the rest: on china
    cut to a disc (5% of the pixels showing) k=8 gave MSE 315 over the visible pixels, against 204 learned from
    them alone. The centroids are now those of the visible pixels; every pixel is still labelled, alpha exact."""
    from PIL import ImageDraw

    mask = Image.new("L", china.size, 0)
    ImageDraw.Draw(mask).ellipse((250, 150, 390, 280), fill=255)
    mask.putpixel((0, 0), 128)  # half-transparent pixels count as visible
    cut = china.copy()
    cut.putalpha(mask)
    out = cut.filter(KMeansQuantize(8, mode))
    shown = np.asarray(mask) > 0
    rgb = np.asarray(china)
    alone = KMeansQuantizer(8, mode).fit(rgb[shown][None])  # learned from the visible pixels only
    assert np.array_equal(np.asarray(out)[..., :3], alone.transform(rgb))  # the hidden pixels too: labelled
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(mask))
    everything = KMeansQuantizer(8, mode).fit(rgb).transform(rgb)
    mse_all = ((everything[shown].astype(float) - rgb[shown]) ** 2).mean()
    mse_shown = ((np.asarray(out)[..., :3][shown].astype(float) - rgb[shown]) ** 2).mean()
    assert mse_shown < 0.8 * mse_all
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(kq.encode_image(cut, k=8, mode=mode)))), np.asarray(out))
    clear = china.copy()
    clear.putalpha(0)  # nothing shows: every pixel is learned, as before
    assert np.array_equal(np.asarray(clear.filter(KMeansQuantize(8, mode)))[..., :3], everything)
    few = np.where(shown[..., None], np.uint8([10, 20, 30]), np.uint8([200, 100, 50]))  # one colour hidden
    few = Image.fromarray(np.dstack([few, np.asarray(mask)]))  # k=8 holds both: kept, as any lossless case
    assert np.array_equal(np.asarray(few.filter(KMeansQuantize(8, mode))), np.asarray(few))


def test_palette_entries_that_never_show_do_not_take_centroids():
    """The same for a P image whose palette carries alpha: entries of alpha 0 get no weight."""
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)
    rgba[:20, :, 3] = 0
    rgba[20:, :, 3] = 255
    p = Image.fromarray(rgba).quantize(64, method=Image.Quantize.FASTOCTREE)
    assert p.im.getpalettemode() == "RGBA"
    table = np.frombuffer(p.im.getpalette("RGBA", "RGBA"), np.uint8).reshape(-1, 4)
    used = np.bincount(np.asarray(p).reshape(-1), minlength=len(table))[: len(table)]
    visible = used * (table[:, 3] > 0)
    assert visible.any() and (used > visible).any()
    out = p.filter(KMeansQuantize(4))
    alone = KMeansQuantizer(4).fit(table[None, :, :3], sample_weight=visible[None])
    new = np.frombuffer(out.im.getpalette("RGBA", "RGBA"), np.uint8).reshape(-1, 4)
    assert np.array_equal(new[:, :3], alone.transform(table[None, :, :3])[0])
    assert np.array_equal(new[:, 3], table[:, 3])
    lossless = p.filter(KMeansQuantize(64))  # k holds every colour used, hidden ones too: nothing changes
    assert np.array_equal(np.asarray(lossless.convert("RGBA")), np.asarray(p.convert("RGBA")))


@pytest.mark.parametrize("k", [1, 2, 8, 32])
def test_rgb_mode_on_one_channel_is_the_exact_1d_optimum(china, k):
    """A one-channel image's colours are levels: rgb mode now finds them with the exact 1-D solver ("global"),
    not the colour learner (china as L, k=32: MSE 4.88 before, 4.69 now), for L, LA and (H, W, 1) arrays."""
    grey = china.convert("L")
    assert np.array_equal(
        np.asarray(grey.filter(KMeansQuantize(k))), np.asarray(grey.filter(KMeansQuantize(k, "global")))
    )
    la = grey.convert("LA")
    assert np.array_equal(np.asarray(la.filter(KMeansQuantize(k))), np.asarray(la.filter(KMeansQuantize(k, "global"))))
    arr = np.asarray(grey)[:, :, None]
    rgb, exact = KMeansQuantizer(k).fit(arr), KMeansQuantizer(k, "global").fit(arr)
    assert rgb.centroids_.shape == (exact.centroids_.size, 1) and rgb.inertia_ == exact.inertia_
    assert np.array_equal(rgb.centroids_[:, 0], exact.centroids_)
    assert np.array_equal(rgb.predict(arr), exact.predict(arr)[:, :, 0])
    weights = np.random.default_rng(k).integers(0, 3, arr.shape[:2])
    assert rgb.fit(arr, sample_weight=weights).inertia_ == exact.fit(arr, sample_weight=weights).inertia_


def test_using_an_unfitted_quantizer_raises_scikit_learns_not_fitted_error():
    """It raised RuntimeError; scikit-learn's estimators (and code written for them) use NotFittedError."""
    from sklearn.exceptions import NotFittedError

    arr = np.zeros((2, 2, 3), np.uint8)
    for call in (KMeansQuantizer().predict, KMeansQuantizer().transform):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            call(arr)
    with pytest.raises(NotFittedError):
        KMeansQuantizer().reconstruct(np.zeros((2, 2), np.uint8))


def test_saving_a_p_image_sees_the_transparency_in_its_info():
    """A P image's alpha given as info["transparency"] (a PNG's tRNS, a GIF's index) is not in what Pillow hands
    a filter, so saving with k let entries nobody sees shape the palette (MSE over the visible pixels 347.9
    here, against 19.3 with the alpha in the palette). The save now moves the alpha into the palette first."""
    rng = np.random.default_rng(2)
    greens = np.stack([np.zeros(32), np.linspace(50, 250, 32), np.zeros(32)], 1)
    palette = np.vstack([greens, rng.integers(0, 256, (200, 3))]).astype(np.uint8)
    indices = np.where(rng.random((100, 100)) < 0.3, rng.integers(0, 32, (100, 100)), rng.integers(32, 232, (100, 100)))
    p = Image.frombytes("P", (100, 100), indices.astype(np.uint8).tobytes())
    p.putpalette(palette.tobytes())
    p.info["transparency"] = bytes([255] * 32 + [0] * 200)
    saved = Image.open(io.BytesIO(kq.encode_image(p, k=8)))
    assert p.info["transparency"] == bytes([255] * 32 + [0] * 200)  # the caller's image is left as it was
    applied = p.copy()
    applied.apply_transparency()
    expected = np.asarray(applied.filter(KMeansQuantize(8)).convert("RGBA"))
    assert np.array_equal(np.asarray(saved.convert("RGBA")), expected)
    shown = indices < 32
    mse = ((expected[..., :3][shown].astype(float) - palette[indices][shown]) ** 2).mean()
    assert mse < 25
    short = Image.frombytes("P", (4, 4), bytes([0, 1, 2, 3] * 4))
    short.putpalette(bytes(range(12)))
    for past in (bytes([0, 255, 255, 255, 0, 0, 0, 0]), 200):  # alpha past the 4 entries: Pillow's IndexError
        short.info["transparency"] = past
        assert Image.open(io.BytesIO(kq.encode_image(short, k=2))).size == (4, 4)
