"""Shared palettes: learning one palette from many images (streamed), applying a given palette everywhere.

References are independent of the code under test: the learner on one concatenated image (unweighted, the
single-image path), brute-force histograms, and brute-force nearest colours over the full distance matrix.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

import kquant_codec as kq
from kquant_codec import KMeansQuantize, KMeansQuantizer, PaletteLearner, learn_palette
from kquant_codec import palette as palette_module
from kquant_codec.cli import main
from kquant_codec.kmeans_colour import fit_palette

PAL = np.array(
    [[0, 0, 0], [255, 255, 255], [200, 40, 40], [40, 180, 60], [30, 60, 200], [128, 128, 128], [250, 220, 90]],
    dtype=np.uint8,
)


def brute_nearest(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest palette row of each pixel (..., 3): full distance matrix, first minimum wins."""
    flat = pixels.reshape(-1, 3).astype(np.int64)
    d = ((flat[:, None, :] - palette[None, :, :].astype(np.int64)) ** 2).sum(axis=2)
    return d.argmin(axis=1).reshape(pixels.shape[:-1])


def colour_set(img: Image.Image) -> set:
    return set(map(tuple, np.asarray(img.convert("RGB")).reshape(-1, 3).tolist()))


@pytest.fixture(scope="module")
def frames(china, flower):
    """Six small 'frames' from two photos, of different sizes (a real animation's frames share a size)."""
    a = np.asarray(china.resize((160, 120)))
    b = np.asarray(flower.resize((128, 96)))
    return [a[:40], a[40:], b[:, :50], b[:, 50:], np.ascontiguousarray(a[::2, ::2]), np.ascontiguousarray(b[5:60])]


def concat(arrays) -> np.ndarray:
    """All pixels of several (H, W, 3) arrays as one (1, N, 3) image."""
    return np.concatenate([a.reshape(-1, 3) for a in arrays])[None]


# -- learning ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 5, 32, 256])
def test_streamed_equals_one_concatenated_image(frames, k):
    learner = PaletteLearner(k=k, seed=3)
    for f in frames:
        learner.partial_fit(f)
    whole = concat(frames)
    at_once = PaletteLearner(k=k, seed=3).partial_fit(whole)
    np.testing.assert_array_equal(learner.palette_, at_once.palette_)
    # The single-image learner (unweighted numpy path: its own np.unique counts) gives the very same palette.
    reference = fit_palette(whole, k, seed=3, engine="numpy")
    np.testing.assert_array_equal(learner.palette_, reference.palette)
    assert learner.inertia_ == reference.sse
    assert learner.palette_.dtype == np.uint8 and learner.palette_.shape[1] == 3 and len(learner.palette_) <= k
    assert learner.n_pixels_seen_ == whole.shape[1] and learner.n_images_seen_ == len(frames)


def test_fit_matches_quantizer_on_concatenation_and_order_does_not_matter(frames):
    pal = learn_palette(frames, k=24, seed=1)
    quantizer = KMeansQuantizer(k=24, seed=1)
    quantizer._engine = "numpy"
    np.testing.assert_array_equal(pal, quantizer.fit(concat(frames)).centroids_)
    np.testing.assert_array_equal(pal, learn_palette(frames[::-1], k=24, seed=1))
    np.testing.assert_array_equal(pal, PaletteLearner(24, 1).fit(iter(frames)).palette_)  # any iterable


@pytest.mark.parametrize("dense_at", [1 << 30, 20000])
def test_histogram_merge_is_exact_with_many_merges(frames, monkeypatch, dense_at):
    monkeypatch.setattr(palette_module, "_STRIP_PIXELS", 997)  # many strips per image ...
    monkeypatch.setattr(palette_module, "_MIN_MERGE", 1500)  # ... and many merges
    monkeypatch.setattr(palette_module, "_DENSE_AT", dense_at)  # sorted all along, or dense part of the way
    learner = PaletteLearner(k=16)
    for f in frames:
        learner.partial_fit(f)
    colours, counts = learner.histogram()
    ref_colours, ref_counts = np.unique(concat(frames)[0], axis=0, return_counts=True)
    np.testing.assert_array_equal(colours, ref_colours)
    np.testing.assert_array_equal(counts, ref_counts)
    assert counts.dtype == np.int64
    assert learner.n_colours_seen_ == len(ref_colours)
    assert len(learner._pending) == 0
    if dense_at > len(ref_colours):
        assert learner._dense is None and learner._keys.size == len(ref_colours)  # merged: one entry per colour
    else:
        assert learner._dense is not None and learner._keys.size == 0
    assert learner.inertia_ == fit_palette(concat(frames), 16, engine="numpy").sse
    monkeypatch.undo()
    np.testing.assert_array_equal(learner.palette_, learn_palette(frames, k=16))


def test_few_colours_are_kept_exactly():
    a = np.zeros((4, 5, 3), np.uint8)
    a[1] = (10, 20, 30)
    b = np.full((3, 3, 3), 200, np.uint8)
    pal = learn_palette([a, b], k=8)
    np.testing.assert_array_equal(pal, [[0, 0, 0], [10, 20, 30], [200, 200, 200]])


def test_pillow_modes_and_transparency(frames):
    rgb = frames[0]
    alpha = np.full(rgb.shape[:2], 255, np.uint8)
    alpha[:10] = 0  # fully transparent: not counted
    alpha[10:15] = 1  # barely visible: counted
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    learner = PaletteLearner(k=8).partial_fit(rgba)
    assert learner.n_pixels_seen_ == rgb.shape[1] * (rgb.shape[0] - 10)
    np.testing.assert_array_equal(learner.palette_, learn_palette([rgb[10:]], k=8))
    np.testing.assert_array_equal(learner.palette_, learn_palette([np.dstack([rgb, alpha])], k=8))  # RGBA array
    grey = Image.fromarray(rgb).convert("L")
    np.testing.assert_array_equal(learn_palette([grey], k=8), learn_palette([grey.convert("RGB")], k=8))
    p = Image.fromarray(rgb).quantize(12)
    np.testing.assert_array_equal(learn_palette([p], k=8), learn_palette([p.convert("RGB")], k=8))
    la = Image.fromarray(np.dstack([np.asarray(grey), alpha]), "LA")
    assert PaletteLearner(k=4).partial_fit(la).n_pixels_seen_ == learner.n_pixels_seen_
    p_rgba = rgba.quantize(16)  # a "P" image whose palette entries hold the alpha
    assert p_rgba.palette.mode == "RGBA" and "transparency" not in p_rgba.info
    deep = Image.fromarray(np.asarray(grey).astype(np.uint16) * 257)  # 16-bit grey: not clipped to 0/255
    for img in (deep, deep.convert("I"), deep.convert("F")):
        with pytest.raises(ValueError, match="more than 256 levels"):
            PaletteLearner(k=4).partial_fit(img)
    visible = np.count_nonzero(np.asarray(p_rgba.convert("RGBA"))[:, :, 3])
    assert 0 < visible < rgb.shape[0] * rgb.shape[1]
    assert PaletteLearner(k=4).partial_fit(p_rgba).n_pixels_seen_ == visible


def test_paths_are_refused_the_learner_knows_no_files(tmp_path, frames):
    path = tmp_path / "f.png"
    Image.fromarray(frames[0]).save(path)
    for given in (path, str(path)):
        with pytest.raises(TypeError, match="open it first"):
            learn_palette([given], k=4)


def test_learner_errors(frames):
    learner = PaletteLearner(k=4)
    assert not hasattr(learner, "palette_") and not hasattr(learner, "n_pixels_seen_")
    with pytest.raises(ValueError, match="no pixels"):
        learn_palette([], k=4)
    clear = Image.new("RGBA", (5, 5), (10, 20, 30, 0))
    with pytest.raises(ValueError, match="no pixels"):
        learn_palette([clear])
    with pytest.raises(ValueError, match="uint8"):
        PaletteLearner().partial_fit(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        PaletteLearner().partial_fit(np.zeros((4, 4), np.uint8))
    for k in (0, 257, 2.5, None):
        with pytest.raises(ValueError, match="k must be"):
            PaletteLearner(k=k).partial_fit(frames[0])
    with pytest.raises(ValueError, match="seed must be"):
        PaletteLearner(seed="x").fit(frames)


# -- applying a palette ------------------------------------------------------------------------------------


def test_filter_maps_every_pixel_to_its_nearest_palette_colour(china_small):
    out = china_small.filter(KMeansQuantize(palette=PAL))
    assert out.mode == "RGB" and out.size == china_small.size
    expect = PAL[brute_nearest(np.asarray(china_small), PAL)]
    np.testing.assert_array_equal(np.asarray(out), expect)
    np.testing.assert_array_equal(np.asarray(kq.quantize_image(china_small, palette=PAL)), expect)
    np.testing.assert_array_equal(np.asarray(china_small.filter(KMeansQuantize(palette=PAL.tolist()))), expect)


def test_ties_go_to_the_lower_index():
    img = Image.fromarray(np.array([[[0, 0, 0], [5, 5, 0]]], np.uint8))  # each equidistant from both rows
    pal = np.array([[10, 0, 0], [0, 10, 0]], np.uint8)
    np.testing.assert_array_equal(np.asarray(img.filter(KMeansQuantize(palette=pal)))[0, 0], [10, 0, 0])
    np.testing.assert_array_equal(np.asarray(img.filter(KMeansQuantize(palette=pal[::-1])))[0, 0], [0, 10, 0])
    q = KMeansQuantizer.from_palette(np.array([[9, 9, 9], [1, 1, 1], [9, 9, 9]]))  # duplicate rows: the first
    np.testing.assert_array_equal(q.predict(np.array([[[8, 8, 8], [0, 0, 0]]], np.uint8)), [[0, 1]])


def test_from_palette_is_a_fitted_exact_quantizer(china_small):
    pal = PAL[::-1].copy()  # not sorted: the given order is kept
    q = KMeansQuantizer.from_palette(pal)
    np.testing.assert_array_equal(q.centroids_, pal)
    assert q.mode_ == "rgb" and q.n_channels_ == 3 and q.k == len(pal)
    samples = np.asarray(china_small)
    np.testing.assert_array_equal(q.predict(samples), brute_nearest(samples, pal))
    np.testing.assert_array_equal(q.transform(samples), pal[brute_nearest(samples, pal)])


def test_from_palette_exact_on_the_numba_path_too():
    pytest.importorskip("numba")  # images of 2 MP and more are labelled by the numba kernels
    rng = np.random.default_rng(5)
    samples = rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)
    samples[0, :4] = [[5, 5, 0], [0, 0, 0], [255, 255, 255], [128, 128, 128]]
    pal = np.vstack([[[10, 0, 0], [0, 10, 0]], rng.integers(0, 256, (38, 3), dtype=np.uint8)]).astype(np.uint8)
    q = KMeansQuantizer.from_palette(pal)
    q._engine = "numba"
    np.testing.assert_array_equal(q.predict(samples), brute_nearest(samples, pal))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 3), np.uint8), "1 to 256 colours"),
        (np.zeros((257, 3), np.uint8), "1 to 256 colours"),
        (np.zeros((4, 4), np.uint8), r"shape \(m, 3\)"),
        (np.zeros(3, np.uint8), r"shape \(m, 3\)"),
        ([[0, 0, 256]], "0..255"),
        ([[0, 0, -1]], "0..255"),
        ([[0, 0, 1.5]], "0..255"),
        (np.ones((2, 3), bool), "integers"),
        ([["a", "b", "c"]], "integers"),
    ],
)
def test_bad_palettes_are_value_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        KMeansQuantize(palette=bad)
    with pytest.raises(ValueError, match=message):
        kq.encode_image(Image.new("RGB", (2, 2)), palette=bad)


def test_options_given_with_a_palette():
    assert KMeansQuantize(palette=PAL).k == len(PAL)
    assert KMeansQuantize(k=200, palette=PAL).k == len(PAL)  # k >= m: consistent, ignored
    assert KMeansQuantize(k=None, palette=PAL).k == len(PAL)
    with pytest.raises(ValueError, match="k=3 is fewer than the palette's 7 colours"):
        KMeansQuantize(k=3, palette=PAL)
    with pytest.raises(ValueError, match='mode="rgb"'):
        KMeansQuantize(mode="channel", palette=PAL)
    with pytest.raises(ValueError, match='alpha="keep"'):
        KMeansQuantize(alpha="quantize", palette=PAL)
    with pytest.raises(ValueError, match="k must be"):
        KMeansQuantize(None)  # without a palette, k is still required to be an integer


def test_modes(china_small):
    rgb = np.asarray(china_small)
    expect = PAL[brute_nearest(rgb, PAL)]
    alpha = np.arange(rgb.shape[0] * rgb.shape[1], dtype=np.uint8).reshape(rgb.shape[:2])
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA").filter(KMeansQuantize(palette=PAL))
    assert rgba.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(rgba)[:, :, 3], alpha)  # alpha kept exactly
    np.testing.assert_array_equal(np.asarray(rgba)[:, :, :3], expect)

    p = china_small.quantize(30)
    p.info["transparency"] = 4
    out = p.filter(KMeansQuantize(palette=PAL))
    assert out.mode == "P" and out.info.get("transparency") == 4
    np.testing.assert_array_equal(np.asarray(out), np.asarray(p))  # indices kept, entries mapped
    src = np.asarray(p.convert("RGBA"))
    got = np.asarray(out.convert("RGBA"))
    np.testing.assert_array_equal(got[:, :, :3], PAL[brute_nearest(src[:, :, :3], PAL)])
    np.testing.assert_array_equal(got[:, :, 3], src[:, :, 3])

    greys = np.array([[0, 0, 0], [90, 90, 90], [170, 170, 170], [255, 255, 255]], np.uint8)
    grey = china_small.convert("L")
    for img in (grey, Image.merge("LA", [grey, grey.point(lambda v: 255 - v)])):
        out = img.filter(KMeansQuantize(palette=greys))
        assert out.mode == img.mode
        g = np.asarray(img.convert("L"))
        np.testing.assert_array_equal(
            np.asarray(out.convert("L")), greys[brute_nearest(np.dstack([g] * 3), greys)][..., 0]
        )
    with pytest.raises(ValueError, match=r"convert the image first, e.g. img.convert\('RGB'\)"):
        grey.filter(KMeansQuantize(palette=PAL))
    for mode in ("1", "CMYK", "YCbCr", "I"):
        with pytest.raises(ValueError, match="convert the image to 'RGB'"):
            china_small.convert(mode).filter(KMeansQuantize(palette=PAL))


def test_palette_image_with_rgba_entries_keeps_its_alpha(china_small):
    """Image.quantize() of an RGBA image gives a "P" image whose palette entries hold the alpha."""
    rgba = np.asarray(china_small.convert("RGBA")).copy()
    rgba[:, : rgba.shape[1] // 3, 3] = 0
    rgba[:, rgba.shape[1] // 3 : rgba.shape[1] // 2, 3] = 128
    p = Image.fromarray(rgba, "RGBA").quantize(16)
    assert p.palette.mode == "RGBA"
    src = np.asarray(p.convert("RGBA"))
    assert set(np.unique(src[:, :, 3])) == {0, 128, 255}
    for f in (KMeansQuantize(palette=PAL), KMeansQuantize(4)):
        got = np.asarray(p.filter(f).convert("RGBA"))
        np.testing.assert_array_equal(got[:, :, 3], src[:, :, 3])
    got = np.asarray(p.filter(KMeansQuantize(palette=PAL)).convert("RGBA"))
    np.testing.assert_array_equal(got[:, :, :3], PAL[brute_nearest(src[:, :, :3], PAL)])
    back = np.asarray(Image.open(io.BytesIO(kq.encode_image(p, palette=PAL))).convert("RGBA"))
    np.testing.assert_array_equal(back, got)


def test_encode_and_save_hold_exactly_the_mapped_pixels(china_small, tmp_path):
    expect = china_small.filter(KMeansQuantize(palette=PAL))
    data = kq.encode_image(china_small, palette=PAL)
    back = Image.open(io.BytesIO(data))
    np.testing.assert_array_equal(np.asarray(back), np.asarray(expect))
    assert colour_set(back) <= set(map(tuple, PAL.tolist()))
    assert kq.encode_image(china_small, palette=PAL, fallback=False) != b""
    path = tmp_path / "x.kq"
    china_small.save(path, palette=PAL)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(expect))
    with pytest.raises(ValueError, match='mode="rgb"'):
        kq.encode_image(china_small, palette=PAL, mode="global")
    rgba = china_small.convert("RGBA")
    rgba.putalpha(77)
    got = Image.open(io.BytesIO(kq.encode_image(rgba, palette=PAL)))
    assert got.mode == "RGBA" and set(np.asarray(got)[:, :, 3].ravel().tolist()) == {77}
    np.testing.assert_array_equal(np.asarray(got)[:, :, :3], np.asarray(expect))
    p = china_small.quantize(20)
    got = Image.open(io.BytesIO(kq.encode_image(p, palette=PAL)))
    np.testing.assert_array_equal(
        np.asarray(got.convert("RGB")), np.asarray(p.filter(KMeansQuantize(palette=PAL)).convert("RGB"))
    )


def test_imageio_passes_the_palette_through(china_small, tmp_path):
    iio = pytest.importorskip("imageio.v3")
    path = tmp_path / "x.kq"
    iio.imwrite(path, np.asarray(china_small), palette=PAL)
    np.testing.assert_array_equal(iio.imread(path), PAL[brute_nearest(np.asarray(china_small), PAL)])


# -- CLI -------------------------------------------------------------------------------------------------


def test_cli_learn_counts_nothing_of_a_truncated_animation(tmp_path, frames, capsys):
    """A multi-frame file that fails on a later frame is a warning and adds none of its frames."""
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(frames[0]).save(folder / "a.png")
    gif = [Image.fromarray(f[:40, :40]).quantize(16) for f in frames[1:4]]
    buf = io.BytesIO()
    gif[0].save(buf, "GIF", save_all=True, append_images=gif[1:])
    (folder / "b.gif").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 4 // 5])
    out = tmp_path / "pal.gpl"
    assert main(["palette", "learn", str(folder), "-k", "6", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "b.gif" in captured.err and "from 1 images," in captured.out
    np.testing.assert_array_equal(kq.read_palette(out), learn_palette(frames[:1], k=6))


def test_cli_learn_show_convert_encode(tmp_path, frames, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    for i, f in enumerate(frames[:3]):
        Image.fromarray(f).save(folder / ("sub" if i else ".") / f"f{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    (folder / "notes.txt").write_text("not an image, not a warning")
    out = tmp_path / "pal.gpl"
    assert main(["palette", "learn", str(folder), "-k", "12", "-o", str(out), "--seed", "2"]) == 0
    captured = capsys.readouterr()
    assert "12 colours learned from 3 images" in captured.out
    assert captured.err.count("warning") == 1 and "broken.png" in captured.err
    pal = kq.read_palette(out)
    np.testing.assert_array_equal(pal, learn_palette(frames[:3], k=12, seed=2))

    dup = tmp_path / "dup.act"  # a file named again (it is also in the folder) counts once
    assert (
        main(
            ["palette", "learn", str(folder / "sub" / "f1.png"), str(folder), "-k", "12", "-o", str(dup), "--seed", "2"]
        )
        == 0
    )
    assert "from 3 images" in capsys.readouterr().out
    np.testing.assert_array_equal(kq.read_palette(dup), pal)
    assert main(["palette", "learn", str(folder), "-o", str(out)]) == 4  # exists, no --force
    assert main(["palette", "learn", str(tmp_path / "nothing"), "-o", str(tmp_path / "n.gpl")]) == 3
    assert main(["palette", "learn", str(folder), "-o", str(tmp_path / "n.txt")]) == 2
    capsys.readouterr()
    (tmp_path / "dir.gpl").mkdir()
    assert main(["palette", "show", str(tmp_path / "dir.gpl")]) == 3
    assert capsys.readouterr().err == f"kquant: error: {tmp_path / 'dir.gpl'}: Is a directory\n"

    assert main(["palette", "show", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(pal)
    r, g, b = pal[5].tolist()
    assert lines[5].split() == ["5", f"#{r:02x}{g:02x}{b:02x}", str(r), str(g), str(b)]
    assert main(["palette", "show", str(out), "--json"]) == 0
    import json

    shown = json.loads(capsys.readouterr().out)
    assert [e["rgb"] for e in shown["palette"]] == pal.tolist() and shown["colours"] == len(pal)

    act = tmp_path / "pal.act"
    assert main(["palette", "convert", str(out), str(act)]) == 0
    np.testing.assert_array_equal(kq.read_palette(act), pal)
    assert main(["palette", "convert", str(out), str(act)]) == 4
    assert main(["palette", "convert", str(out), str(act), "--force"]) == 0

    src = folder / "f0.png"
    kq_out = tmp_path / "f0.kq"
    assert main(["encode", str(src), str(kq_out), "--palette", str(act)]) == 0
    decoded = Image.open(kq_out)
    np.testing.assert_array_equal(np.asarray(decoded), pal[brute_nearest(np.asarray(Image.open(src)), pal)])
    gpl_back = tmp_path / "back.gpl"
    assert main(["palette", "convert", str(kq_out), str(gpl_back)]) == 0
    assert set(map(tuple, kq.read_palette(gpl_back).tolist())) == colour_set(decoded)
    capsys.readouterr()
    assert main(["encode", str(src), str(tmp_path / "k.kq"), "--palette", str(act), "-k", "3"]) == 2
    assert main(["encode", str(src), str(tmp_path / "m.kq"), "--palette", str(act), "--mode", "global"]) == 2
    assert main(["encode", str(src), str(tmp_path / "b.kq"), "--palette", str(tmp_path / "none.gpl")]) == 3
    err = capsys.readouterr().err
    assert "k=3 is fewer" in err
    assert not any((tmp_path / n).exists() for n in ("k.kq", "m.kq", "b.kq"))
    # A grey photo and a colour palette: the command line converts it (the user cannot), to RGB.
    grey = Image.open(src).convert("L")
    grey.save(tmp_path / "grey.png")
    assert main(["encode", str(tmp_path / "grey.png"), str(tmp_path / "g.kq"), "--palette", str(act)]) == 0
    with Image.open(tmp_path / "g.kq") as back:
        assert back.mode == "RGB"
        rgb = np.asarray(grey.convert("RGB"))
        np.testing.assert_array_equal(np.asarray(back), pal[brute_nearest(rgb, pal)])


def test_image_for_palette_converts_only_what_a_palette_cannot_take(china_small):
    colours = np.array([[0, 0, 0], [200, 30, 30], [255, 255, 255]], np.uint8)
    greys = np.array([[0, 0, 0], [128, 128, 128]], np.uint8)
    rgb = china_small
    for img in (rgb, rgb.convert("RGBA"), rgb.quantize(16)):
        assert kq.image_for_palette(img, colours) is img
    grey = rgb.convert("L")
    assert kq.image_for_palette(grey, greys) is grey  # a grey palette applies to L as it is
    expected = {"L": "RGB", "LA": "RGBA", "1": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "HSV": "RGB"}
    for mode, target in expected.items():
        out = kq.image_for_palette(rgb.convert(mode), colours)
        assert out.mode == target and out.size == rgb.size
        np.testing.assert_array_equal(np.asarray(out), np.asarray(rgb.convert(mode).convert(target)))
    with pytest.raises(ValueError, match="16-bit or float"):
        kq.image_for_palette(Image.new("I;16", (4, 4)), colours)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_colour_key_pixels_are_not_counted(mode):
    """An L or RGB image's colour-key pixels are transparent: they were counted, and took a palette colour."""
    arr = np.zeros((32, 64, 3), np.uint8)
    arr[:, :32] = (255, 0, 255) if mode == "RGB" else (200, 200, 200)
    arr[:16, 32:] = (0, 0, 200) if mode == "RGB" else (40, 40, 40)
    arr[16:, 32:] = (0, 128, 0) if mode == "RGB" else (120, 120, 120)
    img = Image.fromarray(arr).convert(mode)
    img.info["transparency"] = img.getpixel((0, 0))
    learner = kq.PaletteLearner(k=2).partial_fit(img)
    assert learner.n_pixels_seen_ == 32 * 32
    shown = np.asarray(img.convert("RGB"))[:, 32:].reshape(-1, 3)
    assert {tuple(c) for c in learner.palette_} == {tuple(c) for c in np.unique(shown, axis=0)}
