"""Palette files: GIMP .gpl and Adobe .act read and written, .kq and palette PNG/GIF read.

.gpl files are checked against Pillow's own reader (``PIL.GimpPaletteFile``, ``PIL.ImagePalette.load``); .act
bytes against the format's layout; .kq tables against the decoder's centroids and the decoded pixels.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import GimpPaletteFile, Image, ImagePalette

import kquant_codec as kq
from kquant_codec.encoder import _png_candidate
from kquant_codec.palette_files import format_gpl, parse_gpl
from kquant_codec.safe_write import OutputExistsError


def random_palette(m: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (m, 3), dtype=np.uint8)


def pillow_gpl(path) -> np.ndarray:
    with open(path, "rb") as fh:
        data, rawmode = GimpPaletteFile.GimpPaletteFile(fh).getpalette()
    assert rawmode == "RGB"
    return np.frombuffer(data, np.uint8).reshape(-1, 3)


# -- GIMP .gpl -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 17, 255, 256])
@pytest.mark.parametrize("name", [None, "Brand colours: spring"])
def test_gpl_round_trips_through_pillows_readers(tmp_path, m, name):
    pal = random_palette(m, seed=m)
    path = tmp_path / "p.gpl"
    kq.write_palette(path, pal, name=name)
    np.testing.assert_array_equal(pillow_gpl(path), pal)
    lut, rawmode = ImagePalette.load(str(path))
    assert rawmode == "RGB"
    np.testing.assert_array_equal(np.frombuffer(lut, np.uint8).reshape(-1, 3), pal)
    back = kq.read_palette(path)
    np.testing.assert_array_equal(back, pal)
    assert back.dtype == np.uint8 and back.shape == (m, 3)
    text = path.read_text()
    assert text.startswith("GIMP Palette\n") and ("Name: " + name in text if name else "Name:" not in text)


def test_gpl_written_by_other_tools_parses(tmp_path):
    text = (
        "GIMP Palette\r\n"
        "Name: Web safe (part)\r\n"
        "Columns: 4\r\n"
        "# exported by some editor\r\n"
        "#\r\n"
        "  0   0   0\tBlack\r\n"
        "255 255 255\tWhite with a long name\r\n"
        "\r\n"
        "# a comment between colours\r\n"
        " 51 102 153 Untitled\r\n"
        "204\t0\t51\r\n"
        "7 8 9\t\r\n"
    )
    path = tmp_path / "other.gpl"
    path.write_bytes(text.encode())
    expect = [[0, 0, 0], [255, 255, 255], [51, 102, 153], [204, 0, 51], [7, 8, 9]]
    np.testing.assert_array_equal(kq.read_palette(path), expect)
    data, _ = GimpPaletteFile.GimpPaletteFile.frombytes(text.replace("\r\n\r\n", "\r\n").encode()).getpalette()
    np.testing.assert_array_equal(np.frombuffer(data, np.uint8).reshape(-1, 3), expect)


@pytest.mark.parametrize(
    "text, message",
    [
        ("JASC-PAL\n0100\n", "bad header"),
        ("", "bad header"),
        ("GIMP Palette\nName: x\n", "no colours"),
        ("GIMP Palette\n1 2 3\n4 5\n", "bad line 3"),
        ("GIMP Palette\n1 2 3\n4 5 256 too bright\n", "bad line 3"),
        ("GIMP Palette\n# c\n-1 0 0\n", "bad line 3"),
        ("GIMP Palette\nred green blue\n", "bad line 2"),
        ("GIMP Palette\n1_0 2 3\n", "bad line 2"),
        ("GIMP Palette\n1 \u0663 3\n", "bad line 2"),
        ("GIMP Palette\n" + "1 2 3\n" * 257, "more than 256 colours"),
    ],
)
def test_malformed_gpl_is_a_value_error_naming_file_and_problem(tmp_path, text, message):
    path = tmp_path / "bad.gpl"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        kq.read_palette(path)
    assert str(path) in str(info.value)


def test_gpl_name_must_be_one_line():
    with pytest.raises(ValueError, match="one-line"):
        format_gpl([[1, 2, 3]], name="two\nlines")
    assert parse_gpl(format_gpl([[1, 2, 3]], name="ok")).tolist() == [[1, 2, 3]]


# -- Adobe .act --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 5, 255])
def test_act_short_palettes_are_772_bytes_with_count(tmp_path, m):
    pal = random_palette(m, seed=m)
    path = tmp_path / "p.act"
    kq.write_palette(path, pal, name="ignored")
    data = path.read_bytes()
    assert len(data) == 772
    assert data[: 3 * m] == pal.tobytes() and data[3 * m : 768] == bytes(768 - 3 * m)
    assert struct.unpack(">HH", data[768:]) == (m, 0xFFFF)  # count, no transparent index
    np.testing.assert_array_equal(kq.read_palette(path), pal)


def test_act_full_palette_is_768_bytes(tmp_path):
    pal = random_palette(256, seed=9)
    path = tmp_path / "p.act"
    kq.write_palette(path, pal)
    assert path.read_bytes() == pal.tobytes()
    np.testing.assert_array_equal(kq.read_palette(path), pal)
    # A 772-byte file with a transparent index: the index is not a colour, the count is honoured.
    other = tmp_path / "t.act"
    other.write_bytes(pal.tobytes() + struct.pack(">HH", 200, 3))
    np.testing.assert_array_equal(kq.read_palette(other), pal[:200])


@pytest.mark.parametrize(
    "data, message",
    [
        (bytes(767), "wrong size: 767 bytes"),
        (bytes(0), "wrong size: 0 bytes"),
        (bytes(769), "wrong size"),
        (bytes(768) + struct.pack(">HH", 0, 0xFFFF), "no colours"),
        (bytes(768) + struct.pack(">HH", 300, 0xFFFF), "more than 256 colours"),
    ],
)
def test_malformed_act(tmp_path, data, message):
    path = tmp_path / "bad.act"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=message) as info:
        kq.read_palette(path)
    assert str(path) in str(info.value)


# -- .kq, PNG, GIF -----------------------------------------------------------------------------------------


def test_kq_rgb_table_is_the_palette(tmp_path, china_small):
    path = tmp_path / "x.kq"
    path.write_bytes(kq.encode_image(china_small, k=12, fallback=False))
    pal = kq.read_palette(path)
    np.testing.assert_array_equal(pal, kq.read_kq(path).centroids)
    pixels = set(map(tuple, np.asarray(Image.open(path)).reshape(-1, 3).tolist()))
    assert set(map(tuple, pal.tolist())) == pixels and len(pal) == 12


def test_kq_other_layouts(tmp_path, china_small):
    for quant in ("global", "channel"):
        path = tmp_path / f"{quant}.kq"
        path.write_bytes(kq.encode_image(china_small, k=8, mode=quant, fallback=False))
        with pytest.raises(ValueError, match=f"{quant}-mode .kq file .* not a colour palette") as info:
            kq.read_palette(path)
        assert str(path) in str(info.value)
    # A "P" image: its palette; an RGBA table: the RGB columns; a grey table: grey colours.
    p = china_small.quantize(10)
    path = tmp_path / "p.kq"
    path.write_bytes(kq.encode_image(p, fallback=False))
    np.testing.assert_array_equal(kq.read_palette(path), kq.read_kq(path).centroids[:, :3])
    rgba = china_small.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    path = tmp_path / "rgba.kq"
    path.write_bytes(kq.encode_image(rgba, k=6, alpha="quantize", fallback=False))
    np.testing.assert_array_equal(kq.read_palette(path), kq.read_kq(path).centroids[:, :3])
    path = tmp_path / "grey.kq"
    path.write_bytes(kq.encode_image(china_small.convert("L"), k=5, mode="rgb", fallback=False))
    levels = kq.read_kq(path).centroids[:, 0]
    np.testing.assert_array_equal(kq.read_palette(path), np.stack([levels] * 3, axis=1))


def test_kq_png_payload_and_corrupt_kq(tmp_path):
    img = Image.fromarray(np.array([[[1, 2, 3], [9, 9, 9]], [[1, 2, 3], [200, 0, 0]]], np.uint8))
    data = kq.encode_image(img, k=3, fallback=False)
    png = _png_candidate(img)  # the encoder's PNG payload of the same pixels
    assert kq.kq_info(png).payload == "png"
    path = tmp_path / "png.kq"
    path.write_bytes(png)
    np.testing.assert_array_equal(kq.read_palette(path), [[1, 2, 3], [9, 9, 9], [200, 0, 0]])
    broken = tmp_path / "broken.kq"
    broken.write_bytes(data[:-3])
    with pytest.raises(ValueError, match="not a valid .kq file") as info:
        kq.read_palette(broken)
    assert str(broken) in str(info.value)


def test_palette_png_and_gif(tmp_path, china_small):
    p = china_small.quantize(9)
    colours = set(map(tuple, np.asarray(p.convert("RGB")).reshape(-1, 3).tolist()))
    for ext in (".png", ".gif"):
        path = tmp_path / f"p{ext}"
        p.save(path)
        with Image.open(path) as reread:  # a GIF's palette is padded to 16 entries: only the used ones count
            entries = np.array(reread.getpalette("RGB"), np.uint8).reshape(-1, 3)
            expect = entries[np.unique(np.asarray(reread))]
        pal = kq.read_palette(path)
        np.testing.assert_array_equal(pal, expect)
        assert len(pal) == 9 and set(map(tuple, pal.tolist())) == colours
    # A transparent key colour is not a colour of the palette.
    keyed = Image.frombytes("P", (2, 2), bytes([0, 1, 2, 2]))
    keyed.putpalette([255, 0, 255, 10, 20, 30, 40, 50, 60])
    keyed.save(tmp_path / "keyed.png", transparency=0)
    np.testing.assert_array_equal(kq.read_palette(tmp_path / "keyed.png"), [[10, 20, 30], [40, 50, 60]])
    china_small.save(tmp_path / "rgb.png")
    with pytest.raises(ValueError, match="has no palette"):
        kq.read_palette(tmp_path / "rgb.png")


# -- writing rules ---------------------------------------------------------------------------------------


def test_write_refuses_to_overwrite_and_bad_input_leaves_nothing(tmp_path):
    pal = random_palette(4)
    path = tmp_path / "p.gpl"
    kq.write_palette(path, pal)
    before = path.read_bytes()
    with pytest.raises(OutputExistsError):
        kq.write_palette(path, pal[:2])
    assert path.read_bytes() == before
    kq.write_palette(path, pal[:2], force=True)
    np.testing.assert_array_equal(kq.read_palette(path), pal[:2])
    for bad in (np.zeros((0, 3)), np.zeros((300, 3)), [[1, 2]], [[1, 2, 300]]):
        with pytest.raises(ValueError, match="palette"):
            kq.write_palette(tmp_path / "bad.act", bad)
    with pytest.raises(ValueError, match="cannot write palette format '.txt'"):
        kq.write_palette(tmp_path / "p.txt", pal)
    with pytest.raises(ValueError, match="cannot read palette format '.bmp'"):
        kq.read_palette(tmp_path / "p.bmp")
    with pytest.raises(FileNotFoundError):
        kq.read_palette(tmp_path / "missing.gpl")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.gpl"]  # no partial or temporary files


def test_what_read_palette_returns_is_a_palette_everywhere(tmp_path, china_small):
    path = tmp_path / "p.act"
    kq.write_palette(path, random_palette(7, seed=3))
    pal = kq.read_palette(path)
    out = Image.open(io.BytesIO(kq.encode_image(china_small, palette=pal)))
    assert set(map(tuple, np.asarray(out).reshape(-1, 3).tolist())) <= set(map(tuple, pal.tolist()))


@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "HSV"])
def test_kq_palette_of_another_colour_space_is_its_rgb_colours(tmp_path, mode):
    """The table rows of an rgb-mode CMYK/YCbCr/HSV file are in that space: read_palette returned them as
    if RGB (red and blue came back cyan/yellow for CMYK). Now: the colours the decoded image shows."""
    rgb = Image.new("RGB", (8, 4), (255, 0, 0))
    rgb.paste((0, 0, 255), (0, 0, 4, 4))
    path = tmp_path / "two.kq"
    rgb.convert(mode).save(path, k=2, mode="rgb")
    shown = np.unique(np.asarray(kq.read_kq(path).to_image().convert("RGB")).reshape(-1, 3), axis=0)
    assert np.array_equal(np.unique(kq.read_palette(path), axis=0), shown)


def test_a_palette_image_over_the_bomb_limit_is_a_value_error(tmp_path, monkeypatch):
    """It was Pillow's DecompressionBombError, which the CLI reported as an internal error."""
    path = tmp_path / "big.png"
    Image.new("P", (300, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="big.png: refused: Image size"):
        kq.read_palette(path)
