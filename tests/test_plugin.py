"""The .kq format through Pillow and imageio, as a user meets it: lossless saves of every filter output,
lazy opening, decompression-bomb protection, Pillow's error conventions, imageio with no plugin= argument.
References are the filter's own output, Pillow's PNG codec and numpy."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image, ImageFile, UnidentifiedImageError

import kquant_codec as kq
from kquant_codec import container as c
from kquant_codec.encoder import _png_candidate, encode_image
from kquant_codec.pixels import as_palette_image, few_colours
from kquant_codec.quantizer import lookup

from .conftest import synthetic_images

ALPHA_MODES = ("LA", "RGBA")


def images() -> dict[str, Image.Image]:
    out = dict(synthetic_images())
    rgb = out["noise_rgb"]
    for mode in ("YCbCr", "LAB", "HSV"):
        out[f"noise_{mode.lower()}"] = (
            rgb.convert(mode) if mode != "LAB" else Image.frombytes("LAB", rgb.size, rgb.tobytes())
        )
    p_int = out["palette"].copy()
    p_int.info["transparency"] = 3
    out["palette_transparent_index"] = p_int
    p_bytes = out["palette"].copy()
    p_bytes.info["transparency"] = bytes(range(0, 250, 7))
    out["palette_transparent_bytes"] = p_bytes
    short = Image.frombytes("P", (6, 2), bytes([0, 1, 2, 3, 1, 0] * 2))  # indices past a 2-entry palette
    short.putpalette(bytes([10, 20, 30, 40, 50, 60]))
    out["palette_short"] = short
    return out


IMAGES = images()


def roundtrip(img: Image.Image, **options) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="KQ", **options)
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    assert out.format == "KQ"
    return out


def assert_same_image(got: Image.Image, want: Image.Image) -> None:
    assert got.mode == want.mode
    assert got.size == want.size
    assert got.tobytes() == want.tobytes()
    if want.mode == "P":
        assert got.convert("RGBA").tobytes() == want.convert("RGBA").tobytes()
        n = len(want.getpalette())
        assert got.getpalette()[:n] == want.getpalette()


def filter_cases():
    for name, img in IMAGES.items():
        for mode in kq.MODES:
            for alpha in ("keep", "quantize") if img.mode in ALPHA_MODES else ("keep",):
                yield pytest.param(name, mode, alpha, id=f"{name}-{mode}-{alpha}")


@pytest.mark.parametrize(("name", "mode", "alpha"), list(filter_cases()))
@pytest.mark.parametrize("fallback", [True, False], ids=["any", "native"])
def test_saving_filter_output_is_lossless(name, mode, alpha, fallback):
    """Every image mode the filter supports x every quant mode x alpha option: same pixels, same mode."""
    q = IMAGES[name].filter(kq.KMeansQuantize(5, mode=mode, alpha=alpha))
    got = roundtrip(q, fallback=fallback)
    assert_same_image(got, q)
    if not fallback:
        assert got.kq_header.payload == "native"
    # quantizing while saving gives exactly the filter's pixels (of a P image with its info["transparency"] moved
    # into its palette first, which a filter cannot see: spec 13)
    source = IMAGES[name]
    if source.mode == "P" and "transparency" in source.info:
        source = source.copy()
        source.apply_transparency()
        q = source.filter(kq.KMeansQuantize(5, mode=mode, alpha=alpha))
    assert_same_image(roundtrip(IMAGES[name], k=5, mode=mode, alpha=alpha, fallback=fallback), q)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_saving_without_options_stores_the_input_exactly(name):
    img = IMAGES[name]
    assert_same_image(roundtrip(img), img)
    assert_same_image(roundtrip(img, fallback=False), img)
    for fallback in (True, False):  # and without Pillow's plugin machinery
        assert_same_image(kq.read_kq(encode_image(img, fallback=fallback)).to_image(), img)


@pytest.mark.parametrize("name", ["noise_rgb", "gradient_L", "noise_rgba", "cmyk"])
@pytest.mark.parametrize("mode", ["global", "channel"])
def test_mode_without_k_is_lossless_for_1d_modes(name, mode):
    img = IMAGES[name]
    got = roundtrip(img, mode=mode, fallback=False)
    assert_same_image(got, img)
    assert got.kq_header.quant_mode == mode


def test_mode_rgb_without_k_quantizes_to_256_colours():
    img = Image.fromarray(np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    got = roundtrip(img, mode="rgb", fallback=False)
    assert_same_image(got, img.filter(kq.KMeansQuantize(256)))


def test_palette_png_payload_keeps_indices_palette_and_transparency():
    img = IMAGES["palette_transparent_bytes"]
    data = _png_candidate(img)
    assert kq.kq_info(data).payload == "png"
    got = Image.open(io.BytesIO(data))
    assert got.mode == "P"
    got.load()
    assert_same_image(got, img)
    assert "transparency" in got.info


def test_palette_native_payload_keeps_palette_alpha():
    img = IMAGES["palette_transparent_index"]
    got = roundtrip(img, fallback=False)
    assert got.kq_header.alpha == "table"
    assert got.info["transparency"] == 3
    assert_same_image(got, img)


def test_png_fallback_is_pillows_png_and_never_larger():
    for name, img in IMAGES.items():
        data = encode_image(img)
        native = encode_image(img, fallback=False) if img.mode in c.NATIVE_MODES else None
        png = _png_candidate(img) if img.mode in c.PNG_MODES else None
        sizes = [len(x) for x in (native, png) if x is not None]
        assert len(data) == min(sizes), name
        if kq.kq_info(data).payload == "png":
            info = kq.kq_info(data)
            stream = data[info.header_bytes : info.header_bytes + info.payload_bytes - 4]
            assert Image.open(io.BytesIO(stream)).format == "PNG"


@pytest.mark.parametrize("noise", [2.0, 4.0])
def test_a_large_grey_image_is_never_larger_than_pillows_grey_png(noise):
    """Above 65,536 pixels the fallback builds one PNG version; for a grey image with many levels it must be the
    grey PNG, not the palette one (which was 86 KB against 44.7 KB here, and the .kq 1.4% above Pillow's PNG)."""
    rng = np.random.default_rng(0)
    w, h = 386, 265
    ramp = np.tile(np.arange(w) / (w - 1) * 255, (h, 1)) + rng.normal(0, noise, (h, w))
    img = Image.fromarray(ramp.clip(0, 255).astype(np.uint8), "L")
    png = io.BytesIO()
    img.save(png, "PNG", optimize=True)
    data = encode_image(img)
    assert len(data) <= len(png.getvalue()) + 64  # the container's header and CRCs
    assert Image.open(io.BytesIO(data)).tobytes() == img.tobytes()


def test_i16_images_go_through_the_png_payload():
    img = Image.new("I;16", (7, 5))
    img.putpixel((3, 2), 60000)
    got = roundtrip(img)
    assert got.kq_header.payload == "png"
    assert_same_image(got, img)


@pytest.mark.parametrize("mode", ["F", "I", "RGBX"])
def test_unstorable_modes_raise_value_error_and_leave_no_file(tmp_path, mode):
    path = tmp_path / "x.kq"
    with pytest.raises(ValueError, match="cannot"):
        Image.new(mode, (4, 4)).save(path)
    assert not path.exists()


@pytest.mark.parametrize(
    "options",
    [{"k": 0}, {"k": 300}, {"mode": "lab"}, {"alpha": "drop"}, {"seed": 1.5}, {"fallback": "no"}],
)
def test_bad_save_options_raise_value_error(options):
    with pytest.raises(ValueError):
        IMAGES["noise_rgb"].save(io.BytesIO(), format="KQ", **options)


def test_empty_image_cannot_be_saved():
    with pytest.raises(ValueError, match="empty"):
        Image.new("RGB", (0, 3)).save(io.BytesIO(), format="KQ")


def test_same_image_and_options_give_identical_bytes(china_small):
    a = encode_image(china_small, k=16, mode="rgb", seed=3)
    b = encode_image(china_small.copy(), k=16, mode="rgb", seed=3)
    assert a == b
    script = (
        "import sys, kquant_codec as kq; from PIL import Image; "
        "img = Image.open(sys.argv[1]); sys.stdout.buffer.write(kq.encode_image(img, k=16, mode='rgb', seed=3))"
    )
    src = io.BytesIO()
    china_small.save(src, format="PNG")
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"kq_determinism_{os.getpid()}.png")
    with open(path, "wb") as fp:
        fp.write(src.getvalue())
    try:
        out = subprocess.run([sys.executable, "-c", script, path], capture_output=True, check=True, timeout=120)
    finally:
        os.unlink(path)
    assert out.stdout == a


@pytest.mark.parametrize(
    ("channels", "n_colours"), [(ch, n) for ch in (1, 2, 3, 4) for n in (1, 7, 256, 257) if (ch, n) != (1, 257)]
)
def test_few_colours_matches_numpy_unique(channels, n_colours):
    rng = np.random.default_rng(channels * 1000 + n_colours)
    if channels == 1:
        palette = rng.permutation(256).astype(np.uint8)[:n_colours, None]
    else:
        palette = np.unique(rng.integers(0, 256, (n_colours * 3, channels), dtype=np.uint8), axis=0)[:n_colours]
    assert palette.shape[0] == n_colours
    picks = rng.integers(0, n_colours, 300 * 200)
    picks[:n_colours] = np.arange(n_colours)  # every colour at least once
    picks[-1] = n_colours - 1
    samples = palette[rng.permutation(picks)].reshape(300, 200, channels)
    samples[123, 45] = palette[0]
    out = few_colours(samples)
    if n_colours > 256:
        assert out is None
        return
    colours, index = out
    assert np.array_equal(colours, np.unique(samples.reshape(-1, channels), axis=0))
    assert np.array_equal(colours[index].reshape(samples.shape), samples)


def test_few_colours_finds_colours_the_subsample_misses():
    samples = np.zeros((512, 512, 3), dtype=np.uint8)
    samples[7, 11] = (1, 2, 3)  # off the subsample grid (every 4th pixel)
    colours, index = few_colours(samples)
    assert colours.tolist() == [[0, 0, 0], [1, 2, 3]] and index.sum() == 1
    samples[range(0, 512, 2), 1] = np.arange(256, dtype=np.uint8)[:, None]
    assert few_colours(samples) is None  # 258 colours


# -- the issue's user story ---------------------------------------------------------------------


def test_issue_example(tmp_path, china_small):
    photo = tmp_path / "photo.jpg"
    china_small.save(photo, quality=90)
    q = Image.open(photo).filter(kq.KMeansQuantize(16))
    q.save(tmp_path / "photo.kq")
    assert Image.open(tmp_path / "photo.kq").tobytes() == q.tobytes()
    opened = Image.open(tmp_path / "photo.kq")
    flat = "get_flattened_data" if hasattr(q, "get_flattened_data") else "getdata"  # Pillow 13 renamed it
    assert list(getattr(opened, flat)()) == list(getattr(q, flat)())

    Image.open(photo).save(tmp_path / "small.kq", k=32)
    small = Image.open(tmp_path / "small.kq")
    assert len(small.getcolors(1 << 24)) <= 32
    arr = iio.imread(tmp_path / "small.kq")
    assert np.array_equal(arr, np.asarray(small))
    iio.imwrite(tmp_path / "again.kq", arr)
    assert np.array_equal(iio.imread(tmp_path / "again.kq"), arr)


def test_decoded_file_exposes_centroids_and_labels(china_small):
    data = encode_image(china_small, k=12, mode="rgb", fallback=False)
    img = Image.open(io.BytesIO(data))
    assert img.kq_header.table_sizes == (12,)
    decoded = img.kq  # loads
    assert decoded.centroids.shape == (12, 3) and decoded.labels.shape == (64, 96)
    assert np.array_equal(lookup("rgb", decoded.centroids, decoded.labels), np.asarray(img))
    same = kq.read_kq(data)
    assert np.array_equal(same.centroids, decoded.centroids) and np.array_equal(same.labels, decoded.labels)
    ch = kq.read_kq(encode_image(china_small, k=6, mode="channel", fallback=False))
    assert [t.size for t in ch.centroids] == [6, 6, 6] and ch.labels.shape == (64, 96, 3)
    assert np.array_equal(ch.samples(), np.asarray(ch.to_image()))


def test_kq_info_reports_header_facts(tmp_path, china_small):
    path = tmp_path / "x.kq"
    china_small.save(path, k=16)
    info = kq.kq_info(path)
    assert (info.width, info.height, info.image_mode, info.quant_mode) == (96, 64, "RGB", "rgb")
    assert info.payload == "native" and info.table_sizes == (16,) and info.k == 16
    assert info.file_bytes == path.stat().st_size == info.header_bytes + info.payload_bytes
    assert info.codec in ("stored", "zlib", "lzma2", "context")
    with open(path, "rb") as fp:
        assert kq.kq_info(fp) == info


def test_repetitive_labels_get_lzma2_photos_codec_3(china):
    """The encoder's slow-codec gate: a tiled image (LZMA2 finds the repeats, codec 3 does not) is stored with
    LZMA2 and is smaller than its codec-3 layout; a photo keeps codec 3, which beat LZMA2 9e on every photo."""
    tile = np.asarray(china)[:48, :40]
    tiled = Image.fromarray(np.tile(tile, (5, 7, 1))).filter(kq.KMeansQuantize(16))
    data = encode_image(tiled, fallback=False)
    info = kq.kq_info(data)
    assert info.codec == "lzma2"
    decoded = kq.read_kq(data)
    assert len(c.labels_to_context_stream(decoded.labels, decoded.header)) > decoded.header.label_length
    photo = china.filter(kq.KMeansQuantize(16))
    assert kq.kq_info(encode_image(photo)).codec == "context"


# -- Pillow conventions --------------------------------------------------------------------------


def test_registration():
    assert Image.registered_extensions()[".kq"] == "KQ"
    assert Image.MIME["KQ"] == "image/x-kq"
    assert "KQ" in Image.SAVE and "KQ" in Image.SAVE_ALL
    kq.register()
    kq.register()
    assert Image.ID.count("KQ") == 1
    img = Image.open(io.BytesIO(encode_image(IMAGES["flat_rgb"])))
    assert img.get_format_mimetype() == "image/x-kq"


def test_save_all_single_frame_and_refusing_many(tmp_path):
    IMAGES["noise_rgb"].save(tmp_path / "a.kq", save_all=True)
    assert_same_image(Image.open(tmp_path / "a.kq"), IMAGES["noise_rgb"])
    with pytest.raises(ValueError, match="one image"):
        IMAGES["noise_rgb"].save(tmp_path / "b.kq", save_all=True, append_images=[IMAGES["noise_rgb"]])


class CountingReader(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.furthest = 0

    def read(self, n: int | None = -1) -> bytes:
        out = super().read(n)
        self.furthest = max(self.furthest, self.tell())
        return out


def test_open_is_lazy_header_on_open_pixels_on_load(china_small):
    data = encode_image(china_small, k=8)
    fp = CountingReader(data)
    img = Image.open(fp)
    header_end = kq.kq_info(data).header_bytes
    assert img.size == (96, 64) and img.mode == "RGB"
    assert fp.furthest <= header_end
    img.load()
    assert fp.furthest == len(data)


def bomb_file(width: int, height: int) -> bytes:
    header = c.KqHeader(
        width=width,
        height=height,
        image_mode="L",
        channels=1,
        label_codec=c.CODEC_ZLIB,
        label_length=16,
        table_sizes=(1,),
        tables=b"\0",
    )
    return c.pack_file(header, bytes(16))


def test_huge_declared_size_raises_decompression_bomb_error_before_reading_payload():
    data = bomb_file(16000, 16000)  # 256 M pixels: within the format, beyond 2 x MAX_IMAGE_PIXELS
    fp = CountingReader(data)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(fp)
    assert fp.furthest <= kq.kq_info(data).header_bytes
    with pytest.raises(Image.DecompressionBombError):
        kq.read_kq(data)


def test_max_image_pixels_is_honoured(monkeypatch, china_small):
    data = encode_image(china_small, k=4)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(data))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    with pytest.warns(Image.DecompressionBombWarning):
        Image.open(io.BytesIO(data))
    with pytest.warns(Image.DecompressionBombWarning):
        kq.read_kq(data)


def test_not_a_kq_file_and_bad_headers_are_unidentified():
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(b"hello world, not an image at all"))
    data = bytearray(encode_image(IMAGES["flat_rgb"]))
    data[8] = 9  # version
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(bytes(data)))
    data = bytearray(encode_image(IMAGES["flat_rgb"]))
    data[20] ^= 1  # height, caught by the header CRC
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(bytes(data)))


def test_corrupt_payload_is_an_oserror_on_load():
    data = bytearray(encode_image(IMAGES["noise_rgb"], k=4, fallback=False))
    data[-6] ^= 0x10
    img = Image.open(io.BytesIO(bytes(data)))  # the header is fine
    with pytest.raises(OSError, match="payload CRC mismatch"):
        img.load()


def test_truncated_payload_at_every_length():
    data = encode_image(IMAGES["noise_rgba"], k=4, fallback=False)
    header_end = kq.kq_info(data).header_bytes
    for n in range(len(data)):
        if n < header_end:
            with pytest.raises(UnidentifiedImageError):
                Image.open(io.BytesIO(data[:n]))
            continue
        img = Image.open(io.BytesIO(data[:n]))
        with pytest.raises(OSError, match="truncated"):
            img.load()


def test_load_truncated_images_gives_a_blank_image(monkeypatch):
    data = encode_image(IMAGES["noise_rgb"], k=4, fallback=False)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    img = Image.open(io.BytesIO(data[:-10]))
    img.load()
    assert img.size == IMAGES["noise_rgb"].size and not any(img.tobytes())


def test_trailing_bytes_are_an_error_on_load():
    img = Image.open(io.BytesIO(encode_image(IMAGES["noise_rgb"]) + b"extra"))
    with pytest.raises(OSError, match="unexpected bytes"):
        img.load()


# -- imageio -------------------------------------------------------------------------------------


def test_imageio_paths_and_bytes_without_plugin_argument(tmp_path):
    arr = np.asarray(IMAGES["noise_rgb"])
    iio.imwrite(tmp_path / "x.kq", arr, k=6)
    back = iio.imread(tmp_path / "x.kq")
    assert back.shape == arr.shape and len(np.unique(back.reshape(-1, 3), axis=0)) <= 6
    assert kq.kq_info(tmp_path / "x.kq").table_sizes == (6,)
    blob = iio.imwrite("<bytes>", arr, extension=".kq")
    assert blob[:8] == c.MAGIC
    assert np.array_equal(iio.imread(blob, extension=".kq"), arr)
    props = iio.improps(blob, extension=".kq")
    assert props.shape == arr.shape and props.dtype == np.uint8
    assert iio.immeta(tmp_path / "x.kq")["mode"] == "RGB"
    # imageio keeps ``mode`` for the Pillow image mode; ``quant_mode`` reaches the encoder
    iio.imwrite(tmp_path / "y.kq", arr, k=4, quant_mode="channel")
    assert kq.kq_info(tmp_path / "y.kq").quant_mode == "channel"
    with pytest.raises(ValueError, match="disagree"):
        encode_image(IMAGES["noise_rgb"], mode="rgb", quant_mode="global")


def test_imageio_registration_is_idempotent():
    from imageio.config import known_extensions

    kq.register()
    assert [e.name for e in known_extensions[".kq"]].count("KQ") == 1
    assert known_extensions[".kq"][0].priority == ["kquant", "pillow"]


# -- cost and size -------------------------------------------------------------------------------


def test_import_is_cheap_and_does_not_import_scikit_learn():
    code = (
        "import sys, time; t = time.perf_counter(); import kquant_codec; t = time.perf_counter() - t; "
        "print(t, 'sklearn' in sys.modules, 'scipy' in sys.modules)"
    )
    best = None
    for _ in range(3):  # the best of three, so that a busy machine does not fail the test
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
        seconds, sklearn, scipy = out.stdout.split()
        assert sklearn == "False" and scipy == "False"
        best = float(seconds) if best is None else min(best, float(seconds))
    assert best < 1.0, f"import kquant_codec took {best:.2f} s"


@pytest.mark.parametrize("k", [16, 64])
def test_kq_is_no_larger_than_optimized_palette_png(china, k):
    """The issue's size target, on the full photo (k=256 and flower.jpg are in the report)."""
    q = china.filter(kq.KMeansQuantize(k))
    png = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_palette_image(q).save(png, format="PNG", optimize=True)
    data = encode_image(q)
    assert len(data) <= png.tell()
    assert kq.kq_info(data).payload == "native"


# --- the PNG candidate built alongside the native payload ----------------------------------------


def _alongside_cases(china, flower) -> dict[str, tuple[Image.Image, dict]]:
    box = (0, 0, 400, 300)  # 120 000 pixels: above the small-image limit, so the quick level-6 rule applies
    rng = np.random.default_rng(0)
    tile = Image.fromarray(np.tile(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (40, 50, 1)))
    return {
        "lossless photo": (china.crop(box), {}),
        "photo k=16": (china.crop(box), {"k": 16}),
        "native under 2/3 of the quick PNG": (flower.crop(box), {"k": 16}),
        "tiles": (tile, {}),
        "L": (flower.crop(box).convert("L"), {}),
        "RGBA k=64": (china.crop(box).convert("RGBA"), {"k": 64}),
        **{name: (img, {}) for name, img in IMAGES.items()},
    }


def test_png_built_alongside_gives_the_sequential_bytes(china, flower, monkeypatch):
    from kquant_codec import encoder

    for name, (img, options) in _alongside_cases(china, flower).items():
        alongside = encode_image(img, **options)
        with monkeypatch.context() as m:
            m.setattr(encoder, "_PNG_ALONGSIDE_MAX_PIXELS", 0)
            sequential = encode_image(img, **options)
        assert alongside == sequential, name


def test_png_candidate_stops_when_cancelled(flower):
    import threading
    from concurrent.futures import Future

    from kquant_codec import encoder

    img = flower.crop((0, 0, 400, 300)).filter(kq.KMeansQuantize(64))
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(encoder._Cancelled):  # Pillow's PNG encoder lets the write's exception through
        img.save(encoder._StoppableBuffer(cancel), format="PNG")
    quick: Future[tuple[int, int]] = Future()
    assert _png_candidate(img, None, quick=quick, cancel=cancel) is None
    assert quick.result()[0] > 0 and quick.result()[1] == 6  # the quick PNG's size and level are still handed over
    assert _png_candidate(img, None, quick=Future(), cancel=threading.Event()) is not None


def test_png_payload_colour_key_is_kept_on_every_path():
    """Spec 9: a truecolour PNG payload's colour-key tRNS is the image's transparent colour, through Image.open
    and through read_kq(...).to_image() alike (the two paths agree; it was dropped on both)."""
    import struct
    import zlib

    from fuzz.hostile import png_chunk, png_payload, png_stream

    rows = b"".join(b"\x00" + bytes([10, 20, 30]) * 3 for _ in range(2))  # 3x2, every pixel (10, 20, 30)
    key = png_chunk(b"tRNS", struct.pack(">HHH", 10, 20, 30))
    data = png_payload("RGB", 3, 2, png_stream(3, 2, zlib.compress(rows), colour_type=2, extra=key))
    opened = Image.open(io.BytesIO(data))
    opened.load()
    via_read = kq.read_kq(data).to_image()
    for img in (opened, via_read):
        assert img.mode == "RGB" and img.info["transparency"] == (10, 20, 30)
        assert np.asarray(img.convert("RGBA"))[..., 3].max() == 0


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("options", [{}, {"k": 8}, {"k": 8, "mode": "channel"}, {"k": 8, "fallback": False}])
def test_a_colour_key_survives_the_round_trip(china_small, mode, options):
    """An L or RGB image's transparent colour (a PNG colour-key tRNS) was dropped on save: the image came back
    opaque. When pixels have the key it is now kept, quantized or not, and the image shows the same RGBA. It
    is a header field of the native payload (spec 7): the same file as without the key but for its C bytes.
    (Stop 17 kept it through a truecolour PNG payload: china k=16 grew from 44,328 to 143,422 bytes.) A key
    no pixel has changes nothing shown and is left out."""
    img = china_small.convert(mode)
    quantized = img.filter(kq.KMeansQuantize(8, options.get("mode", "rgb"))) if "k" in options else img
    key = quantized.getpixel((0, 0))  # a colour the stored pixels have
    img.info["transparency"] = key
    expected = img.filter(kq.KMeansQuantize(8, options.get("mode", "rgb"))) if "k" in options else img
    buf = io.BytesIO()
    img.save(buf, format="KQ", **options)
    keyless = img.copy()
    del keyless.info["transparency"]
    plain = encode_image(keyless, **options)
    native, native_plain = (encode_image(i, **{**options, "fallback": False}) for i in (img, keyless))
    info = kq.kq_info(native)
    assert info.payload == "native" and info.colour_key == key and len(native) == len(native_plain) + len(mode)
    assert native[info.header_bytes :] == native_plain[kq.kq_info(native_plain).header_bytes :]  # the same payload
    back = Image.open(io.BytesIO(buf.getvalue()))
    if kq.kq_info(buf.getvalue()).payload == "native":
        assert buf.getvalue() == native
        assert back.info.get("transparency") == key  # before load: what iio.immeta shows
    else:  # a grey or truecolour PNG with the key as tRNS, smaller (its key shows once it is read)
        assert len(buf.getvalue()) < len(native) and options.get("fallback", True)
    back.load()
    assert back.mode == mode and back.info.get("transparency") == key
    assert np.array_equal(np.asarray(back), np.asarray(expected))
    assert np.array_equal(np.asarray(back.convert("RGBA")), np.asarray(expected.convert("RGBA")))
    assert np.asarray(back.convert("RGBA"))[..., 3].min() == 0
    assert kq.read_kq(buf.getvalue()).to_image().info.get("transparency") == key
    unused = 3 if mode == "L" else (3, 2, 1)
    assert unused not in {quantized.getpixel((x, y)) for x in range(img.width) for y in range(img.height)}
    img.info["transparency"] = unused
    assert encode_image(img, **options) == plain  # as if there were no key


def test_a_colour_key_png_candidate_is_truecolour_with_its_trns(china_small):
    """When a PNG payload is smaller than the native one, a keyed image's PNG is its own truecolour (or grey)
    PNG with the key as tRNS: an indexed PNG cannot carry an L or RGB image's key (spec 9)."""
    from kquant_codec.encoder import _png_candidate

    for img in (china_small.filter(kq.KMeansQuantize(8)), china_small.convert("L").filter(kq.KMeansQuantize(8))):
        key = img.getpixel((3, 3))
        file = _png_candidate(img, None, key=key)
        info = kq.kq_info(file)
        png = kq.read_kq(file).png
        assert info.payload == "png" and png[25] == (2 if img.mode == "RGB" else 0)  # IHDR colour type
        back = kq.read_kq(file).to_image()
        assert back.info["transparency"] == key and np.array_equal(np.asarray(back), np.asarray(img))
        assert _png_candidate(img, None) != file  # without a key: the indexed version, smaller


def test_trailing_bytes_are_counted_the_same_on_every_path(china_small):
    """load() said "1 unexpected bytes" whatever followed the payload (it reads one byte past it)."""
    buf = io.BytesIO()
    china_small.save(buf, format="KQ", k=4)
    data = buf.getvalue() + b"x" * 100
    with pytest.raises(kq.KqFormatError, match="^100 unexpected bytes after the payload CRC"):
        Image.open(io.BytesIO(data)).load()
    with pytest.raises(kq.KqFormatError, match="100 unexpected bytes"):
        kq.kq_info(data)


def test_encode_image_names_what_is_wrong_with_its_arguments():
    """An array or a path gave AttributeError ('no attribute load'); imageio's quant_mode was called mode;
    an array as mode or alpha gave numpy's "truth value of an array is ambiguous"."""
    arr = np.zeros((4, 4, 3), np.uint8)
    for wrong in (arr, "photo.jpg"):
        with pytest.raises(TypeError, match="encode_image takes a Pillow image"):
            encode_image(wrong)
    img = Image.fromarray(arr)
    with pytest.raises(ValueError, match="^quant_mode must be one of"):
        encode_image(img, quant_mode="bogus")
    with pytest.raises(ValueError, match="^mode must be one of"):
        encode_image(img, mode=np.array(["rgb"]))
    with pytest.raises(ValueError, match="^alpha must be one of"):
        encode_image(img, k=2, alpha=np.array(["keep"]))
    with pytest.raises(ValueError, match="quant_mode must be one of"):
        iio.imwrite("<bytes>", arr, extension=".kq", quant_mode="bogus")
    with pytest.raises(ValueError, match="use quant_mode='global'"):  # was KeyError 'global'
        iio.imwrite("<bytes>", arr, extension=".kq", mode="global")


def test_imageio_keeps_the_old_file_when_a_write_fails_and_names_a_bad_header(tmp_path):
    """imageio's Pillow plugin opened the target for writing before encoding: a failed imwrite (k=0, several
    frames) left an empty file where the .kq file was. A bad header said only "could not find a backend"."""
    target = tmp_path / "x.kq"
    arr = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    iio.imwrite(target, arr)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="k must be"):
        iio.imwrite(target, arr, k=0)
    with pytest.raises(ValueError, match="holds one image"):
        iio.imwrite(target, np.stack([arr, arr]))
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.kq"]
    iio.imwrite(target, arr[::-1])  # a good write still replaces it
    assert np.array_equal(iio.imread(target), arr[::-1])
    link = tmp_path / "link.kq"
    link.symlink_to(target)
    iio.imwrite(link, arr)  # through a link: the file it points to, as imageio's own plugin does
    assert link.is_symlink() and np.array_equal(iio.imread(target), arr)
    link.unlink()
    assert np.array_equal(iio.imread(iio.imwrite("<bytes>", arr, extension=".kq"), extension=".kq"), arr)
    bad = bytearray(before)
    bad[27] = 1  # a reserved header field
    (tmp_path / "bad.kq").write_bytes(bytes(bad))
    with pytest.raises(kq.KqFormatError, match="reserved header byte 27 must be zero"):
        iio.imread(tmp_path / "bad.kq")
    with pytest.raises(OSError, match="Could not find a backend"):  # not .kq at all: imageio's own message
        (tmp_path / "text.kq").write_text("hello")
        iio.imread(tmp_path / "text.kq")


def _adam7_rows(pixels: np.ndarray) -> bytes:
    """The filtered rows (filter 0) of an 8-bit image's seven Adam7 passes, by the PNG specification's table."""
    out = b""
    for x0, y0, dx, dy in (
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ):
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            out += b"".join(b"\x00" + row.tobytes() for row in sub)
    return out


@pytest.mark.parametrize("rewrap", [True, False])
def test_png_payloads_decode_as_pillow_decodes_their_png(monkeypatch, rewrap):
    """A PNG payload's image data is inflated once, by the spec-9 check, and handed to Pillow as stored deflate
    blocks (it was inflated twice), up to ``_REWRAP_MAX_BYTES`` of rows; above, the PNG's own chunks. Either way,
    interlaced, split into several IDATs, or with chunks a reader skips, the pixels are those Pillow reads from
    the PNG itself and those the PNG was made of."""
    from kquant_codec import decoder

    monkeypatch.setattr(decoder, "_REWRAP_MAX_BYTES", decoder._REWRAP_MAX_BYTES if rewrap else 0)
    import struct
    import zlib

    from fuzz.hostile import PNG_SIGNATURE, png_chunk, png_payload, png_stream

    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (11, 13, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (9, 10), dtype=np.uint8)
    interlaced = []
    for pixels, colour_type, mode in ((rgb, 2, "RGB"), (grey, 0, "L")):
        h, w = pixels.shape[:2]
        ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 1))
        idat = png_chunk(b"IDAT", zlib.compress(_adam7_rows(pixels)))
        interlaced.append((mode, pixels, PNG_SIGNATURE + ihdr + idat + png_chunk(b"IEND", b"")))
    rows = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in rgb))
    split = png_stream(13, 11, rows[:7], colour_type=2, extra=png_chunk(b"tEXt", b"note\x00hi"))[:-12]  # no IEND
    split += png_chunk(b"IDAT", rows[7:]) + png_chunk(b"IEND", b"")
    for mode, pixels, png in interlaced + [("RGB", rgb, split)]:
        data = png_payload(mode, pixels.shape[1], pixels.shape[0], png)
        ours = Image.open(io.BytesIO(data))
        ours.load()
        assert np.array_equal(np.asarray(ours), pixels)
        assert np.array_equal(np.asarray(kq.read_kq(data).to_image()), np.asarray(Image.open(io.BytesIO(png))))


def test_pillow_incremental_parser_decodes_kq(china_small):
    """ImageFile.Parser (streaming decoders feed it chunks) failed with a bare AssertionError: the decoder pulls
    its bytes from a file, and the parser pushes them. The parser now gathers the file and decodes it whole."""
    from PIL import ImageFile

    buf = io.BytesIO()
    china_small.save(buf, format="KQ", k=8)
    data = buf.getvalue()
    expected = np.asarray(Image.open(io.BytesIO(data)))
    for step in (64, 1000, len(data)):
        parser = ImageFile.Parser()
        for i in range(0, len(data), step):
            parser.feed(data[i : i + step])
        assert np.array_equal(np.asarray(parser.close()), expected)
    parser = ImageFile.Parser()
    parser.feed(data[:-10])
    with pytest.raises(kq.KqFormatError, match="truncated"):
        parser.close()


def test_verify_checks_the_payload_without_decoding(china_small):
    """verify() (the usual upload check) accepted corrupt and truncated files: it now checks the payload's
    length and CRC, and, as in Pillow, leaves the image to be opened again."""
    buf = io.BytesIO()
    china_small.save(buf, format="KQ", k=8)
    data = buf.getvalue()
    img = Image.open(io.BytesIO(data))
    img.verify()
    with pytest.raises(RuntimeError, match="verify must be called directly after open"):
        img.verify()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    for bad, reason in (
        (bytes(flipped), "payload CRC mismatch"),
        (data[: len(data) // 2], "truncated .kq file"),
        (data + b"xyz", "^3 unexpected bytes after the payload CRC"),
    ):
        with pytest.raises(kq.KqFormatError, match=reason):
            Image.open(io.BytesIO(bad)).verify()


def test_files_whose_seek_returns_none_are_read(tmp_path, china_small):
    """mmap before Python 3.13, and hand-written wrappers, return None from seek(): reading the bytes left
    subtracted from it (TypeError). The position is now taken from tell()."""
    import mmap

    class Wrapper:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            return self.f.read(n)

        def seek(self, pos, whence=0):
            self.f.seek(pos, whence)

        def tell(self):
            return self.f.tell()

    path = tmp_path / "x.kq"
    china_small.save(path, k=8)
    expected = np.asarray(Image.open(path))
    with open(path, "rb") as f:
        for source in (Wrapper(f), mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)):
            source.seek(0)
            assert np.array_equal(np.asarray(kq.read_kq(source).to_image()), expected)
            source.seek(0)
            assert np.array_equal(np.asarray(Image.open(source)), expected)


def test_a_p_image_in_a_png_payload_reads_through_imageio():
    """A P image's palette in a PNG payload comes with its pixels: before load() the image had no palette at
    all, and imageio (which reads im.palette.mode first) failed with AttributeError. It gets an empty one."""
    from kquant_codec.container import pack_file, png_payload_header

    img = Image.fromarray(np.random.default_rng(0).integers(0, 8, (20, 30), dtype=np.uint8), "P")
    img.putpalette(bytes(range(24)))
    for options in ({}, {"transparency": 5}):
        png = io.BytesIO()
        img.save(png, "PNG", **options)
        data = pack_file(png_payload_header(30, 20, "P", png.tell()), png.getvalue())
        opened = Image.open(io.BytesIO(data))
        assert opened.palette is not None and opened.n_frames == 1 and not opened.is_animated
        assert np.array_equal(iio.imread(data, extension=".kq"), iio.imread(png.getvalue(), extension=".png"))
        opened.load()
        assert opened.getpalette()[:24] == list(range(24)) and opened.info.get("transparency") == options.get(
            "transparency"
        )


def test_read_kq_names_the_limit_it_enforces(monkeypatch):
    """read_kq raised above twice MAX_IMAGE_PIXELS but quoted the single limit in its message."""
    data = kq.encode_image(Image.new("L", (30, 20)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)
    with pytest.raises(Image.DecompressionBombError, match="exceeds limit of 500 pixels"):
        kq.read_kq(data)
    with pytest.raises(Image.DecompressionBombError, match="exceeds limit of 500 pixels"):
        Image.open(io.BytesIO(data))


def test_save_warns_about_keywords_it_ignores():
    """Unknown save keywords were ignored without a word: colors=16 stored every colour (a large file). They are
    still ignored, as Pillow does for every format, with a warning that names them and the options there are."""
    import warnings

    img = Image.new("RGB", (8, 8), (1, 2, 3))
    with pytest.warns(UserWarning, match=r"ignores colors, optimize \(colors= is k= here\); its options are k, mode"):
        img.save(io.BytesIO(), format="KQ", colors=16, optimize=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img.save(io.BytesIO(), format="KQ", k=4, seed=1, fallback=False)
        img.save(io.BytesIO(), format="KQ", save_all=True)
        iio.imwrite("<bytes>", np.zeros((4, 4, 3), np.uint8), extension=".kq", quant_mode="channel")
