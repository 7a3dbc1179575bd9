"""The .kq container as bytes: the spec's worked example, bit packing, every header field, truncation,
bit flips, stream caps, labels past the table. References are the spec text, numpy and zlib's CRC."""

from __future__ import annotations

import functools
import io
import lzma
import re
import struct
import tracemalloc
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kquant_codec as kq
from kquant_codec import container as c
from kquant_codec.encoder import encode_image

SPEC = Path(__file__).resolve().parent.parent / "spec" / "kq-format.md"

BLUE, RED, GREEN = (30, 60, 200), (200, 30, 30), (40, 160, 60)
EXAMPLE_PIXELS = [[RED, RED, GREEN, BLUE], [GREEN, BLUE, BLUE, RED]]


def spec_example() -> bytes:
    """The hex dump between the worked-example markers of the spec."""
    text = SPEC.read_text()
    block = re.search(r"worked-example-hex: begin -->(.*?)<!-- worked-example-hex: end", text, re.S).group(1)
    rows = re.findall(r"^([0-9a-f]{4}): ((?:[0-9a-f]{2} ?)+)$", block, re.M)
    assert rows, "no hex rows found in the spec"
    data = b""
    for offset, row in rows:
        assert int(offset, 16) == len(data), "hex dump offsets are not contiguous"
        data += bytes.fromhex(row)
    return data


def example_image() -> Image.Image:
    return Image.fromarray(np.array(EXAMPLE_PIXELS, dtype=np.uint8))


def recrc(data: bytes) -> bytes:
    """Recompute both CRCs after editing a file, so that the edited field (not a CRC) is what gets checked."""
    data = bytearray(data)
    fixed = bytes(data[: c.FIXED_HEADER_SIZE])
    h = struct.unpack_from("<8sBBBBBBBBIIBBBBII4H", fixed)
    sizes, quant, channels, payload = h[17:21], h[4], h[6], h[2]
    used = 1 if quant in (0, 1) else channels
    table = 0 if payload == 1 else (sizes[0] * channels if quant == 0 else sum(sizes[:used]))
    if h[8] == 1 and payload == 0 and quant != 0:  # level sets: 32 bytes per table
        table = 32 * used
    end = c.FIXED_HEADER_SIZE + table + (channels if h[13] == 1 else 0)  # (a colour key follows the tables)
    data += bytes(max(0, end + 8 - len(data)))  # room for both CRCs when the edit grew the tables
    struct.pack_into("<I", data, end, zlib.crc32(data[:end]))
    struct.pack_into("<I", data, len(data) - 4, zlib.crc32(data[end + 4 : len(data) - 4]))
    return bytes(data)


@functools.cache
def files() -> dict[str, bytes]:
    """Small files covering each layout: packed/unpacked, codecs, alpha plane and table, planar, PNG."""
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([noise, rng.integers(0, 256, (6, 7), dtype=np.uint8)]))
    smooth = np.tile(np.arange(40, dtype=np.uint8), (30, 1))
    return {
        "example": spec_example(),
        "rgba_plane": encode_image(rgba, k=3, fallback=False),
        "rgba_table": encode_image(rgba, k=3, alpha="quantize", fallback=False),
        "channel": encode_image(Image.fromarray(noise), k=5, mode="channel", fallback=False),
        "zlib": encode_image(Image.fromarray(smooth), fallback=False),
        # A ramp shifted on every row: PNG's Sub filter makes it constant, so PNG beats every native codec.
        "png": encode_image(
            Image.fromarray(((np.arange(64)[None, :] * 4 + np.arange(16)[:, None] * 7) % 256).astype(np.uint8))
        ),
    }


def test_spec_example_decodes_to_the_documented_pixels():
    data = spec_example()
    assert len(data) == 63
    img = kq.read_kq(data).to_image()
    assert img.mode == "RGB" and img.size == (4, 2)
    assert np.array_equal(np.asarray(img), np.array(EXAMPLE_PIXELS, dtype=np.uint8))
    decoded = kq.read_kq(data)
    assert np.array_equal(decoded.centroids, [BLUE, RED, GREEN])
    assert np.array_equal(decoded.labels, [[1, 1, 2, 0], [2, 0, 0, 1]])


def test_encoder_writes_the_spec_example_byte_for_byte():
    assert encode_image(example_image()) == spec_example()
    assert encode_image(example_image(), k=3) == spec_example()


def test_spec_example_fields_and_crcs_match_the_table():
    data = spec_example()
    assert data[:8] == b"\x89KQI\r\n\x1a\n"
    assert struct.unpack_from("<I", data, 53)[0] == zlib.crc32(data[:53]) == 0x3ADE61B1
    assert struct.unpack_from("<I", data, 59)[0] == zlib.crc32(data[57:59]) == 0xA9047615
    info = kq.kq_info(data)
    assert (info.width, info.height, info.image_mode, info.quant_mode) == (4, 2, "RGB", "rgb")
    assert (info.table_sizes, info.label_bits, info.codec, info.file_bytes) == ((3,), (2,), "stored", 63)


def test_crc_is_zlib_crc32_check_value():
    assert zlib.crc32(b"123456789") == 0xCBF43926


# -- bit packing ---------------------------------------------------------------------------------


def reference_pack(plane: np.ndarray, depth: int) -> bytes:
    """Independent packing through bit strings: MSB first, each row padded with zeros to a byte."""
    out = b""
    for row in plane:
        bits = "".join(format(int(v), f"0{depth}b") for v in row)
        bits += "0" * (-len(bits) % 8)
        out += int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
    return out


@pytest.mark.parametrize("depth", [1, 2, 4, 8])
@pytest.mark.parametrize("width", [1, 2, 3, 5, 7, 8, 9, 16, 17])
def test_pack_plane_matches_bit_string_reference_and_round_trips(depth, width):
    rng = np.random.default_rng(depth * 100 + width)
    plane = rng.integers(0, 1 << depth, (3, width), dtype=np.uint8)
    packed = c.pack_plane(plane, depth)
    assert packed == reference_pack(plane, depth)
    assert len(packed) == 3 * c.row_bytes(width, depth)
    assert np.array_equal(c.unpack_plane(packed, 3, width, depth), plane)


def test_depth_one_matches_numpy_packbits():
    plane = np.random.default_rng(3).integers(0, 2, (5, 13), dtype=np.uint8)
    assert c.pack_plane(plane, 1) == np.packbits(plane, axis=1).tobytes()


@pytest.mark.parametrize(("size", "depth"), [(1, 1), (2, 1), (3, 2), (4, 2), (5, 4), (16, 4), (17, 8), (256, 8)])
def test_plane_depth(size, depth):
    assert c.plane_depth(size) == depth


def test_unpacking_ignores_padding_bits():
    # 3 labels at 2 bits leave 2 padding bits; a writer zeroes them, a reader must not care.
    assert np.array_equal(c.unpack_plane(bytes([0b01101111]), 1, 3, 2), [[1, 2, 3]])


# -- header fields -------------------------------------------------------------------------------

# (offset, struct format, invalid value, expected message fragment), applied to the spec example.
FIELD_CASES = [
    (8, "B", 2, "unsupported .kq version 2"),
    (8, "B", 0, "unsupported .kq version 0"),
    (9, "B", 2, "invalid payload kind 2"),
    (10, "B", 0, "invalid image mode code 0"),
    (10, "B", 12, "invalid image mode code 12"),
    (10, "B", 11, "cannot be stored natively"),  # I;16 has no native payload
    (10, "B", 2, "channel count 3 does not match image mode L"),
    (10, "B", 6, "RGBA needs its alpha"),
    (11, "B", 3, "invalid quantization mode code 3"),
    (12, "B", 3, "invalid alpha code 3"),
    (12, "B", 1, "no alpha band to store as a plane"),
    (12, "B", 2, "no alpha to store in the table"),
    (13, "B", 4, "channel count 4 does not match"),
    (13, "B", 0, "invalid channel count 0"),
    (13, "B", 5, "invalid channel count 5"),
    (14, "B", 2, "invalid packing flag 2"),
    (15, "B", 2, "invalid table coding 2"),
    (15, "B", 1, "level sets (table coding 1) are for the tables of global and channel"),
    (16, "I", 0, "invalid image size 0x2"),
    (20, "I", 0, "invalid image size 4x0"),
    (16, "I", (1 << 24) + 1, "each side must be 1.."),
    (24, "B", 4, "a label stream with codec 4 (predictive) must have packing 0"),
    (24, "B", 5, "unsupported label stream codec id 5 (unknown)"),
    (25, "B", 4, "codec 4 (predictive) codes label planes only"),
    (24, "B", 200, "unsupported label stream codec id 200 (unknown)"),
    (25, "B", 1, "alpha stream length and codec must be 0"),
    (26, "B", 2, "invalid colour key flag 2"),
    (27, "B", 1, "reserved header byte 27 must be zero"),
    (28, "I", 3, "stored label stream must be 2 bytes"),
    (32, "I", 1, "alpha stream length and codec must be 0"),
    (36, "H", 0, "invalid table sizes"),
    (36, "H", 257, "invalid table sizes"),
    (38, "H", 3, "invalid table sizes"),
    (42, "H", 1, "invalid table sizes"),
]


@pytest.mark.parametrize(("offset", "fmt", "value", "message"), FIELD_CASES)
def test_each_invalid_header_field_is_rejected_with_a_clear_error(offset, fmt, value, message):
    data = bytearray(spec_example())
    struct.pack_into("<" + fmt, data, offset, value)
    data = recrc(bytes(data)) if fmt != "H" or offset < 36 else bytes(data)
    with pytest.raises(kq.KqFormatError, match=re.escape(message)):
        kq.read_kq(data)
    with pytest.raises(kq.KqFormatError, match=re.escape(message)):
        kq.kq_info(data)


def test_a_colour_key_follows_the_tables_and_is_checked():
    """Header byte 26 = 1: the image's transparent colour, C bytes after the tables, under the header CRC
    (spec 3, 7). Only native L and RGB payloads may carry one; another flag value is refused."""
    example = c.unpack_header(spec_example())
    payload = spec_example()[example.header_length :]
    keyed = replace(example, colour_key=(40, 160, 60))
    data = keyed.to_bytes() + payload
    assert data[26] == 1 and data[44 + 9 : 44 + 12] == bytes([40, 160, 60]) and len(data) == len(spec_example()) + 3
    assert c.unpack_header(data) == keyed and c.header_length(data[:44]) == keyed.header_length
    img = kq.read_kq(data).to_image()
    assert img.info["transparency"] == (40, 160, 60) and kq.kq_info(data).colour_key == (40, 160, 60)
    assert np.array_equal(np.asarray(img), np.asarray(example_image()))
    opened = Image.open(io.BytesIO(data))
    assert opened.info["transparency"] == (40, 160, 60)  # at open, before the pixels are read
    bad = bytearray(data)
    bad[45] ^= 1  # a key byte: covered by the header CRC
    with pytest.raises(kq.KqFormatError, match="header CRC mismatch"):
        kq.read_kq(bytes(bad))
    with pytest.raises(kq.KqFormatError, match="truncated .kq header: 58 of 60 bytes"):
        kq.read_kq(data[:58])
    for mode in ("RGBA", "P", "CMYK", "LA", "1"):
        bad = bytearray(data)
        bad[10] = {v: k for k, v in c.IMAGE_MODES.items()}[mode]
        with pytest.raises(kq.KqFormatError, match=f"a colour key is for images of mode L or RGB, not {mode}"):
            kq.read_kq(recrc(bytes(bad)))
    png_file = bytearray(c.png_payload_header(4, 2, "RGB", 8).to_bytes())
    png_file[26] = 1
    with pytest.raises(kq.KqFormatError, match="a PNG payload holds a colour key in its tRNS chunk"):
        kq.kq_info(recrc(bytes(png_file) + bytes(12)))
    with pytest.raises(kq.KqFormatError, match="a PNG payload holds a colour key"):
        replace(c.png_payload_header(4, 2, "RGB", 8), colour_key=(1, 2, 3)).to_bytes()
    with pytest.raises(kq.KqFormatError, match=r"colour key \(1, 2\) is not 3 sample"):
        replace(example, colour_key=(1, 2)).to_bytes()
    grey = c.KqHeader(4, 2, "L", channels=1, table_sizes=(2,), tables=b"\x00\xff", label_length=8, colour_key=(7,))
    assert c.unpack_header(grey.to_bytes()).colour_key == (7,)


def test_pixel_count_limit():
    data = bytearray(spec_example())
    struct.pack_into("<II", data, 16, 1 << 24, 32)  # 2**29 pixels, each side within limits
    with pytest.raises(kq.KqFormatError, match="exceeds the format limit of 268435456 pixels"):
        kq.read_kq(recrc(bytes(data)))


def test_bad_magic_is_not_a_kq_file():
    data = bytearray(spec_example())
    data[1] = ord("X")
    with pytest.raises(kq.KqFormatError, match="not a .kq file"):
        kq.read_kq(bytes(data))
    with pytest.raises(kq.KqFormatError, match="not a .kq file"):
        kq.read_kq(b"\x89PNG\r\n\x1a\n" + bytes(60))


def test_mode_1_tables_may_hold_only_0_and_255():
    data = bytearray(encode_image(Image.new("1", (4, 4), 1), fallback=False))
    assert kq.kq_info(bytes(data)).table_sizes == (1,)
    data[c.FIXED_HEADER_SIZE] = 128  # the single table entry
    with pytest.raises(kq.KqFormatError, match="only 0 and 255"):
        kq.read_kq(recrc(bytes(data)))


def test_png_payload_with_nonzero_native_fields_is_rejected():
    data = bytearray(files()["png"])
    assert data[9] == 1
    data[11] = 1  # quantization mode must be 0 for a PNG payload
    with pytest.raises(kq.KqFormatError, match="PNG payload must have"):
        kq.read_kq(recrc(bytes(data)))


def test_png_payload_whose_png_disagrees_with_the_header_is_rejected():
    data = files()["png"]
    header = c.unpack_header(data)
    png = data[header.header_length : header.header_length + header.label_length]
    wrong = bytearray(png)
    wrong[16:24] = struct.pack(">II", header.width + 1, header.height)
    wrong[29:33] = struct.pack(">I", zlib.crc32(wrong[12:29]))
    bad = c.pack_file(header, bytes(wrong))
    with pytest.raises(kq.KqFormatError, match="PNG payload is 65x16, the header says 64x16"):
        kq.read_kq(bad)
    not_png = c.pack_file(header, b"GIF89a" + bytes(len(png) - 6))
    with pytest.raises(kq.KqFormatError, match="PNG signature"):
        kq.read_kq(not_png)


# -- truncation, bit flips, trailing bytes ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(files()))
def test_truncation_at_every_length_is_a_clear_error(name):
    data = files()[name]
    for n in range(len(data)):
        with pytest.raises(kq.KqFormatError):
            kq.read_kq(data[:n])
        with pytest.raises(kq.KqFormatError):
            kq.kq_info(data[:n])
    kq.read_kq(data)  # and the whole file is fine


@pytest.mark.parametrize("name", sorted(files()))
def test_every_flipped_bit_is_caught(name):
    data = files()[name]
    step = max(1, len(data) // 400)  # every byte of the small files, a spread sample of the PNG one
    for i in range(0, len(data), step):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            with pytest.raises(kq.KqFormatError):
                kq.read_kq(bytes(bad))


def test_crc_mismatches_name_header_or_payload():
    data = bytearray(spec_example())
    data[45] ^= 1  # a table byte
    with pytest.raises(kq.KqFormatError, match="header CRC mismatch"):
        kq.read_kq(bytes(data))
    data = bytearray(spec_example())
    data[57] ^= 1  # a label byte
    with pytest.raises(kq.KqFormatError, match="payload CRC mismatch"):
        kq.read_kq(bytes(data))


def test_trailing_bytes_are_rejected():
    with pytest.raises(kq.KqFormatError, match="1 unexpected bytes after the payload CRC"):
        kq.read_kq(spec_example() + b"\0")
    with pytest.raises(kq.KqFormatError, match="unexpected bytes"):
        kq.kq_info(spec_example() + b"junk")


# -- payload content -----------------------------------------------------------------------------


def test_labels_past_the_table_are_rejected():
    data = bytearray(spec_example())
    data[57] = 0b11000000  # label 3 in a 3-entry table
    with pytest.raises(kq.KqFormatError, match="label 3 in plane 0 points past its 3-entry centroid table"):
        kq.read_kq(recrc(bytes(data)))


def native_file(width: int, height: int, codec: int, stream: bytes, table_size: int = 256) -> bytes:
    """An L image whose label stream (8-bit labels, one plane) is ``stream`` as stored with ``codec``."""
    header = c.KqHeader(
        width=width,
        height=height,
        image_mode="L",
        channels=1,
        label_codec=codec,
        label_length=len(stream),
        table_sizes=(table_size,),
        tables=bytes(range(table_size)),
    )
    return c.pack_file(header, stream)


@pytest.mark.parametrize("codec", [c.CODEC_ZLIB, c.CODEC_LZMA2])
def test_stream_inflating_beyond_the_declared_size_is_refused_without_inflating(codec):
    side = 128  # 16 KiB of labels declared
    bomb = c.compress(bytes(16 << 20), codec)  # 16 MiB of zeros
    assert len(bomb) <= side * side + side * side // 16 + 64, "the bomb must pass the length bound"
    data = native_file(side, side, codec, bomb)
    tracemalloc.start()
    try:
        with pytest.raises(kq.KqFormatError, match="inflates beyond the 16384 bytes"):
            kq.read_kq(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


@pytest.mark.parametrize("codec", [c.CODEC_ZLIB, c.CODEC_LZMA2])
def test_stream_problems_are_clear_errors(codec):
    raw = bytes(range(256)) * 4  # a 32x32 plane of labels
    good = c.compress(raw, codec)
    assert kq.read_kq(native_file(32, 32, codec, good)).labels.shape == (32, 32)
    short = c.compress(raw[:-1], codec)
    with pytest.raises(kq.KqFormatError, match="truncated: it inflates to 1023 of 1024"):
        kq.read_kq(native_file(32, 32, codec, short))
    with pytest.raises(kq.KqFormatError, match="label stream"):
        kq.read_kq(native_file(32, 32, codec, good[:-3]))
    with pytest.raises(kq.KqFormatError, match="bytes after its"):
        kq.read_kq(native_file(32, 32, codec, good + b"\0\0"))
    with pytest.raises(kq.KqFormatError, match="corrupt"):
        kq.read_kq(native_file(32, 32, codec, bytes([0xFF]) * len(good)))


def test_label_length_beyond_the_bound_is_rejected_before_reading():
    stream = zlib.compress(bytes(16)) + bytes(100)  # 16 raw bytes allow at most 16 + 1 + 64 stored
    with pytest.raises(kq.KqFormatError, match="label stream length 1.. is out of range"):
        kq.read_kq(native_file(4, 4, c.CODEC_ZLIB, stream))


def test_lzma2_stream_is_raw_with_the_documented_dictionary():
    raw = bytes(range(256)) * 8
    stream = c.compress(raw, c.CODEC_LZMA2)
    assert stream[-1] == 0x00  # LZMA2 end marker, no .xz container
    assert stream[0] in (0x01, 0xE0)  # first chunk resets the dictionary
    assert c.lzma2_dict_size(len(raw)) == 4096 and c.lzma2_dict_size(1 << 30) == 1 << 26
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": 4096}]
    assert lzma.decompress(stream, format=lzma.FORMAT_RAW, filters=filters) == raw


def test_planar_layout_matches_spec():
    # channel mode: plane 0 then plane 1 then plane 2, each row-major, each with its own depth.
    data = files()["channel"]
    decoded = kq.read_kq(data)
    header = decoded.header
    assert header.quant_mode == "channel" and decoded.labels.shape == (6, 7, 3)
    raw = c.decompress(
        data[header.header_length : header.header_length + header.label_length],
        header.label_codec,
        header.label_raw_length,
    )
    expected = b"".join(
        reference_pack(decoded.labels[:, :, ch], d if header.packed else 8) for ch, d in enumerate(header.plane_depths)
    )
    assert raw == expected


def test_header_validate_refuses_to_write_invalid_files():
    with pytest.raises(kq.KqFormatError):
        c.KqHeader(width=0, height=1, image_mode="L", channels=1, table_sizes=(1,), tables=b"\0").to_bytes()
    with pytest.raises(ValueError):
        c.pack_file(c.KqHeader(width=1, height=1, image_mode="L", channels=1, table_sizes=(1,), tables=b"\0"), b"x")


# -- level sets (header byte 15 = 1) ---------------------------------------------------------------------------


def _set_bytes(levels) -> bytes:
    """The 32-byte set of ``levels`` written the obvious way: level v is bit v of a little-endian 256-bit number."""
    return sum(1 << int(v) for v in levels).to_bytes(32, "little")


def _global_file(levels: np.ndarray, labels: np.ndarray, channels: int = 3) -> tuple[c.KqHeader, bytes]:
    """A global-mode file with stored labels; ``labels`` is (C, H, W), one plane per channel."""
    h, w = labels.shape[1:]
    header = c.KqHeader(
        w, h, "RGB", quant_mode="global", channels=channels, table_sizes=(levels.size,), tables=levels.tobytes()
    ).with_compact_tables()
    raw = labels.tobytes()  # one plane per channel, planar
    return header, c.pack_file(replace(header, label_length=len(raw)), raw)


def test_level_sets_store_sorted_level_tables_in_32_bytes_each():
    rng = np.random.default_rng(9)
    levels = np.sort(rng.choice(256, 200, replace=False)).astype(np.uint8)
    labels = rng.integers(0, 200, (3, 5, 7)).astype(np.uint8)
    header, data = _global_file(levels, labels)
    assert header.level_sets and data[15] == 1
    assert data[44:76] == _set_bytes(levels)
    assert header.header_length == 44 + 32 + 4 == c.header_length(data[:44])
    back = c.unpack_header(data)
    assert back.level_sets and back.tables == levels.tobytes()
    got = kq.read_kq(data)
    assert np.array_equal(got.labels, np.moveaxis(labels, 0, -1))
    assert np.array_equal(got.to_image().getchannel(0), levels[labels[0]])
    # channel mode: one set per table, in channel order
    tables = [np.sort(rng.choice(256, m, replace=False)).astype(np.uint8) for m in (40, 256, 33)]
    head = c.KqHeader(
        5, 3, "RGB", quant_mode="channel", table_sizes=(40, 256, 33), tables=b"".join(t.tobytes() for t in tables)
    ).with_compact_tables()
    raw = b"".join(rng.integers(0, m, (3, 5)).astype(np.uint8).tobytes() for m in (40, 256, 33))
    data = c.pack_file(replace(head, label_length=len(raw)), raw)
    assert data[44 : 44 + 96] == b"".join(_set_bytes(t) for t in tables)
    assert c.unpack_header(data).tables == head.tables


def test_level_sets_are_used_only_where_allowed_and_smaller():
    ascending = bytes(range(0, 256, 4))  # 64 levels: a set (32 bytes) is smaller
    header = c.KqHeader(4, 4, "RGB", quant_mode="global", table_sizes=(64,), tables=ascending, label_length=48)
    assert header.with_compact_tables().level_sets
    assert not replace(header, table_sizes=(32,), tables=ascending[:32]).with_compact_tables().level_sets  # equal
    unsorted = ascending[1:2] + ascending[:1] + ascending[2:]
    assert not replace(header, tables=unsorted).with_compact_tables().level_sets
    rgb = c.KqHeader(4, 4, "RGB", quant_mode="rgb", table_sizes=(64,), tables=bytes(192), label_length=16)
    assert not rgb.with_compact_tables().level_sets
    with pytest.raises(kq.KqFormatError, match="strictly ascending"):
        replace(header, tables=unsorted, level_sets=True).to_bytes()
    with pytest.raises(kq.KqFormatError, match="global and channel"):
        replace(rgb, level_sets=True).to_bytes()


def test_a_level_set_that_disagrees_with_its_table_size_is_rejected():
    levels = np.arange(0, 250, 5, dtype=np.uint8)  # 50 levels
    _, data = _global_file(levels, np.zeros((3, 2, 2), np.uint8))
    for bit in (1, 5):  # a level added (1 is not in the table), a level removed (5 is)
        bad = bytearray(data)
        bad[44 + bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(kq.KqFormatError, match=f"level set 0 holds {51 if bit == 1 else 49} levels, but m0 is 50"):
            kq.read_kq(recrc(bytes(bad)))
    with pytest.raises(kq.KqFormatError, match="truncated .kq header"):
        kq.read_kq(data[:60])


def test_global_and_channel_saves_use_level_sets_and_round_trip():
    rng = np.random.default_rng(10)
    y, x = np.mgrid[0:40, 0:64]
    ramps = np.dstack([x * 4, y * 6, x + y]) + rng.integers(0, 3, (40, 64, 3))
    img = Image.fromarray(ramps.clip(0, 255).astype(np.uint8))
    for mode in ("global", "channel"):
        quantized = img.filter(kq.KMeansQuantize(200, mode))
        buf = io.BytesIO()
        img.save(buf, format="KQ", k=200, mode=mode)
        data = buf.getvalue()
        header = c.unpack_header(data)
        assert header.level_sets and header.header_length == 48 + 32 * len(header.table_sizes)
        assert Image.open(io.BytesIO(data)).tobytes() == quantized.tobytes()
