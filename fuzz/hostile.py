"""Hand-made hostile ``.kq`` inputs: decompression bombs, impossible sizes, broken streams and PNG payloads.

Every file has correct CRCs, so each one gets past the CRC checks to the part it attacks. The bombs are
real, valid streams (a zlib stream or a raw LZMA2 stream that inflates to exactly ``n`` zero bytes), built
cheaply by repeating one compressed segment, so a stream that would inflate to gigabytes costs no more
than its own size to make.

    .venv/bin/python fuzz/hostile.py      # writes the small ones to tests/fuzz_regressions/hostile-*.kq

``tests/test_memory_limits.py`` builds the large ones (gigabyte bombs) from the same functions.
"""

from __future__ import annotations

import io
import lzma
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from kquant_codec import container as c

MiB = 1 << 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- bombs -------------------------------------------------------------------------------------------


def zlib_zeros(mib: int) -> bytes:
    """A valid zlib stream of ``mib`` MiB of zero bytes (about 1 KiB per MiB).

    After a full flush deflate starts afresh, so every 1 MiB segment compresses to the same bytes: the
    stream is the 2-byte header, one segment repeated, an empty final block and the Adler-32 of the whole.
    """
    comp = zlib.compressobj(9)
    first = comp.compress(bytes(MiB)) + comp.flush(zlib.Z_FULL_FLUSH)
    header, segment = first[:2], first[2:]
    again = comp.compress(bytes(MiB)) + comp.flush(zlib.Z_FULL_FLUSH)
    assert again == segment, "deflate segments after a full flush differ: cannot build the bomb"
    return header + segment * mib + b"\x03\x00" + struct.pack(">I", _adler32_zeros(1, mib * MiB))


def _adler32_zeros(adler: int, n: int) -> int:
    """Adler-32 after feeding ``n`` zero bytes to a running checksum ``adler``: a stays, b grows by n * a."""
    a, b = adler & 0xFFFF, adler >> 16
    b = (b + (n % 65521) * a) % 65521
    return (b << 16) | a


def lzma2_zeros(chunks: int, dict_size: int) -> bytes:
    """A valid raw LZMA2 stream of zeros: ``chunks`` LZMA chunks of about 2 MB each, ~300 bytes per chunk.

    liblzma's chunks of zeros settle into one repeating LZMA chunk (no reset); the stream is liblzma's
    first chunk, that steady chunk repeated, and the end marker. ``lzma2_unpacked(stream)`` gives its size.
    """
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": dict_size}]
    parts = _lzma2_chunks(lzma.compress(bytes(8 * MiB), format=lzma.FORMAT_RAW, filters=filters))
    first, steady = parts[0], parts[1]
    assert parts[1] == parts[2] == parts[3], "liblzma's chunks of zeros do not repeat: cannot build the bomb"
    assert first[0] >= 0xE0 and 0x80 <= steady[0] < 0xA0, "first chunk must reset everything, the steady none"
    return first + steady * (chunks - 1) + b"\x00"


def lzma2_unpacked(stream: bytes) -> int:
    """Total unpacked size of a raw LZMA2 stream, from its chunk headers (nothing is decompressed)."""
    total = 0
    for chunk in _lzma2_chunks(stream):
        if chunk[0] in (1, 2):
            total += len(chunk) - 3
        elif chunk[0] >= 0x80:
            total += ((chunk[0] & 0x1F) << 16) + int.from_bytes(chunk[1:3], "big") + 1
    return total


def _lzma2_chunks(stream: bytes) -> list[bytes]:
    """Split a raw LZMA2 stream into its chunks (control byte included), the end marker last."""
    out, i = [], 0
    while True:
        control = stream[i]
        if control == 0:
            out.append(stream[i : i + 1])
            return out
        if control in (1, 2):
            n = int.from_bytes(stream[i + 1 : i + 3], "big") + 1
            out.append(stream[i : i + 3 + n])
            i += 3 + n
            continue
        packed = int.from_bytes(stream[i + 3 : i + 5], "big") + 1
        head = 6 if control >= 0xC0 else 5
        out.append(stream[i : i + head + packed])
        i += head + packed


# -- files -------------------------------------------------------------------------------------------


def native_l(width: int, height: int, codec: int, stream: bytes, table_size: int = 256) -> bytes:
    """An 8-bit-label L image whose label stream (one plane) is ``stream``, stored with ``codec``."""
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


def native_la_alpha(width: int, height: int, codec: int, alpha_stream: bytes) -> bytes:
    """An LA image with one grey level (stored labels, all 0) and the given alpha-plane stream."""
    labels = bytes(width * height)
    header = c.KqHeader(
        width=width,
        height=height,
        image_mode="LA",
        alpha="plane",
        channels=1,
        label_length=len(labels),
        alpha_codec=codec,
        alpha_length=len(alpha_stream),
        table_sizes=(1,),
        tables=b"\x80",
    )
    return c.pack_file(header, labels, alpha_stream)


def png_payload(mode: str, width: int, height: int, png: bytes) -> bytes:
    """A PNG-payload file of ``mode`` and size carrying ``png`` as it is."""
    return c.pack_file(c.png_payload_header(width, height, mode, len(png)), png)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_stream(width: int, height: int, idat: bytes, colour_type: int = 0, depth: int = 8, extra: bytes = b"") -> bytes:
    """A PNG datastream with the given IHDR fields and one IDAT (``extra`` chunks go before it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + extra + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def _png_of(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _with_crcs(data: bytearray) -> bytes:
    """Recompute both CRCs of a hand-edited file (header CRC after the tables, payload CRC at the end)."""
    fixed = c._FIXED.unpack_from(bytes(data[: c.FIXED_HEADER_SIZE]))
    payload_kind, quant, channels, key, sizes = fixed[2], fixed[4], fixed[6], fixed[13], fixed[17:21]
    if payload_kind == 1:
        tables = 0
    elif quant == 0:
        tables = sizes[0] * channels
    elif quant == 1:
        tables = sizes[0]
    else:
        tables = sum(sizes[:channels])
    end = c.FIXED_HEADER_SIZE + tables + (channels if key == 1 and payload_kind == 0 else 0)
    struct.pack_into("<I", data, end, zlib.crc32(data[:end]))
    struct.pack_into("<I", data, len(data) - 4, zlib.crc32(data[end + 4 : len(data) - 4]))
    return bytes(data)


def spec_example() -> bytes:
    """The 63-byte worked example of spec section 15, read from the spec itself (a hand copy here had two
    stray zero bytes, so the files built on it failed their header CRC instead of what they were meant to test)."""
    text = (Path(__file__).resolve().parent.parent / "spec" / "kq-format.md").read_text(encoding="utf-8")
    block = text.split("<!-- worked-example-hex: begin -->")[1].split("<!-- worked-example-hex: end -->")[0]
    rows = [line.split(":", 1)[1] for line in block.splitlines() if ":" in line and line[:4].isalnum()]
    return bytes.fromhex("".join(rows))


def small_hostile_inputs() -> dict[str, bytes]:
    """Small hostile files (kilobytes) for the regression corpus, by name. Each must be refused cleanly."""
    files: dict[str, bytes] = {}
    example = spec_example()
    files["empty"] = b""
    files["magic-only"] = c.MAGIC
    files["header-without-payload"] = example[:57]
    files["spec-example-trailing-byte"] = example + b"\x00"
    labels_past = bytearray(example)
    labels_past[57] = 0b11000000  # label 3 in a 3-entry table
    files["labels-past-the-table"] = _with_crcs(labels_past)

    # Streams that inflate far beyond the 64x64 = 4096 bytes the header declares (within the length bound).
    files["zlib-bomb-64x64-L-4MiB"] = native_l(64, 64, c.CODEC_ZLIB, zlib_zeros(4))
    files["lzma2-bomb-64x64-L-29MB"] = native_l(64, 64, c.CODEC_LZMA2, lzma2_zeros(14, c.lzma2_dict_size(4096)))
    files["alpha-zlib-bomb-64x64-LA-4MiB"] = native_la_alpha(64, 64, c.CODEC_ZLIB, zlib_zeros(4))
    files["zlib-stream-short"] = native_l(64, 64, c.CODEC_ZLIB, zlib.compress(bytes(4095)))
    files["zlib-stream-preset-dictionary"] = native_l(8, 8, c.CODEC_ZLIB, b"\x78\xbb\x00\x00\x00\x01" + bytes(8))

    # LZMA2 streams with an impossible properties byte (lc + lp > 4) and without an initial dictionary reset.
    bad_props = bytes([0xE0, 0x00, 0x3F, 0x00, 0x05, 225]) + bytes(6) + b"\x00"
    files["lzma2-bad-properties"] = native_l(8, 8, c.CODEC_LZMA2, bad_props)
    files["lzma2-no-dictionary-reset"] = native_l(8, 8, c.CODEC_LZMA2, b"\x02\x00\x3f" + bytes(64) + b"\x00")

    # Codec 3 (the context coder): broken plane headers, impossible stripe lengths, codec 3 where the spec
    # forbids it, and a 16x16 stream whose last rANS word is changed.
    from kquant_codec import label_coder

    labels = (np.add.outer(np.arange(16), np.arange(16)) % 5).astype(np.uint8)
    good = label_coder.encode_plane(labels, 5, np.arange(5, dtype=np.uint8)[:, None] * 50, None, stripe_rows=4)

    def context_l(stream: bytes, **changes: object) -> bytes:
        header = c.KqHeader(
            width=16,
            height=16,
            image_mode="L",
            channels=1,
            label_codec=c.CODEC_CONTEXT,
            label_length=len(stream),
            table_sizes=(5,),
            tables=bytes(range(0, 250, 50)),
        )
        return c.pack_file(replace(header, **changes), stream)

    files["context-valid-16x16-4-stripes"] = context_l(good)
    files["context-unknown-version"] = context_l(b"\x02" + good[1:])
    files["context-reference-flag-on-first-plane"] = context_l(good[:1] + b"\x03" + good[2:])
    files["context-stripe-height-0"] = context_l(good[:2] + b"\x00" + good[3:])
    files["context-stripe-length-huge-varint"] = context_l(good[:3] + b"\xff\xff\xff\xff\xff\x7f" + good[4:])
    files["context-odd-byte-count"] = context_l(good + b"\x00")
    files["context-last-word-changed"] = context_l(good[:-2] + bytes([good[-2] ^ 0x55, good[-1]]))
    files["context-cut-short"] = context_l(good[:-4])
    data = bytearray(context_l(good))
    data[14] = 1  # packing 1 with codec 3
    files["context-with-packing"] = _with_crcs(data)
    la = native_la_alpha(16, 16, c.CODEC_ZLIB, zlib.compress(bytes(256)))
    la = bytearray(la)
    la[25] = c.CODEC_CONTEXT  # codec 3 for the alpha stream
    files["context-as-alpha-codec"] = _with_crcs(la)

    # Sizes: the pixel-count limit of the format, and a declared size far above Pillow's bomb limit.
    tiny = zlib.compress(bytes(1))
    huge = native_l(1, 1, c.CODEC_ZLIB, tiny)
    huge = bytearray(huge)
    struct.pack_into("<II", huge, 16, 1 << 14, 1 << 14)  # 2**28 pixels: the format's limit, a bomb for Pillow
    files["declared-16384x16384-tiny-stream"] = _with_crcs(huge)
    struct.pack_into("<II", huge, 16, 1 << 24, 32)  # 2**29 pixels: beyond the format's limit
    files["declared-beyond-format-limit"] = _with_crcs(huge)

    # The biggest header there is: a 256-row table of 4 channels (CMYK) for a 1x1 image (valid: label 255).
    big = c.KqHeader(
        width=1,
        height=1,
        image_mode="CMYK",
        channels=4,
        label_length=1,
        table_sizes=(256,),
        tables=bytes(1024),
    )
    files["largest-header-1x1-CMYK"] = c.pack_file(big, b"\xff")

    # PNG payloads: IDAT bombs, a zTXt bomb, an iCCP bomb, an IHDR that disagrees, the wrong colour type,
    # an APNG whose frame claims to be bigger than the image.
    scanlines = 64 * 65  # 64 rows of (filter byte + 64 grey samples)
    files["png-idat-bomb-64x64-L-16MiB"] = png_payload("L", 64, 64, png_stream(64, 64, zlib_zeros(16)))
    text_bomb = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib_zeros(8))
    files["png-ztxt-bomb"] = png_payload(
        "L", 64, 64, png_stream(64, 64, zlib.compress(bytes(scanlines)), extra=text_bomb)
    )
    icc_bomb = png_chunk(b"iCCP", b"icc\x00\x00" + zlib_zeros(8))
    files["png-iccp-bomb"] = png_payload(
        "L", 64, 64, png_stream(64, 64, zlib.compress(bytes(scanlines)), extra=icc_bomb)
    )
    files["png-ihdr-100000x100000"] = png_payload("L", 64, 64, png_stream(100000, 100000, zlib_zeros(1)))
    sixteen = png_stream(8, 8, zlib.compress(bytes(8 * 17)), depth=16)
    files["png-16-bit-grey-declared-L"] = png_payload("L", 8, 8, sixteen)
    # Colour types and depths Pillow reads but the spec does not allow for the header's mode (section 9).
    files["png-16-bit-RGB-declared-RGB"] = png_payload(
        "RGB", 4, 4, png_stream(4, 4, zlib.compress(bytes(4 * 25)), colour_type=2, depth=16)
    )
    files["png-2-bit-grey-declared-L"] = png_payload(
        "L", 8, 4, png_stream(8, 4, zlib.compress(b"\x00\x1b\xe4" * 4), colour_type=0, depth=2)
    )
    files["png-16-bit-LA-declared-RGBA"] = png_payload(
        "RGBA", 4, 4, png_stream(4, 4, zlib.compress(bytes(4 * 17)), colour_type=4, depth=16)
    )
    actl = png_chunk(b"acTL", struct.pack(">II", 0x7FFFFFFF, 0))
    fctl = png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, 5000, 5000, 0, 0, 1, 1, 0, 0))
    files["png-apng-oversized-frame"] = png_payload(
        "L", 8, 8, png_stream(8, 8, zlib.compress(bytes(8 * 9)), extra=actl + fctl)
    )
    second_ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 6, 0, 0, 0))  # 576 MB of RGBA
    files["png-second-IHDR-12000x12000-RGBA"] = png_payload(
        "RGBA", 8, 8, png_stream(8, 8, zlib.compress(bytes(8 * 33)), colour_type=6, extra=second_ihdr)
    )
    files["png-truncated-idat"] = png_payload("L", 64, 64, png_stream(64, 64, zlib.compress(bytes(scanlines))[:20]))
    files["png-not-png"] = png_payload("L", 2, 2, b"GIF89a" + bytes(40))
    palette = Image.new("P", (4, 4))
    palette.putpalette(bytes(range(12)))
    files["png-P-as-RGB-declared-CMYK-mode"] = _png_payload_wrong_mode(_png_of(palette))
    # Spec section 9 asks for the whole PNG datastream, every chunk CRC right, one 13-byte IHDR, PLTE before the
    # image data, an empty IEND with nothing after it, and no palette index past PLTE: Pillow lets all these through.
    grey = png_stream(4, 4, zlib.compress(bytes(4 * 5)))
    files["png-without-IEND"] = png_payload("L", 4, 4, grey[:-12])
    bad_crc = bytearray(grey)
    bad_crc[-13] ^= 1  # the last byte of the IDAT chunk's CRC
    files["png-IDAT-CRC-wrong"] = png_payload("L", 4, 4, bytes(bad_crc))
    files["png-bytes-after-IEND"] = png_payload("L", 4, 4, grey + b"\x00")
    same_ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
    files["png-second-IHDR-same-size"] = png_payload(
        "L", 4, 4, png_stream(4, 4, zlib.compress(bytes(20)), extra=same_ihdr)
    )
    files["png-IHDR-14-bytes"] = png_payload(
        "L",
        4,
        4,
        PNG_SIGNATURE + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0) + b"\x00") + grey[33:],
    )
    files["png-IEND-with-data"] = png_payload("L", 4, 4, grey[:-12] + png_chunk(b"IEND", b"\x00"))
    late_plte = png_stream(4, 4, zlib.compress(bytes(20)), colour_type=3)
    late_plte = late_plte[:-12] + png_chunk(b"PLTE", bytes(range(6))) + late_plte[-12:]
    files["png-PLTE-after-IDAT"] = png_payload("P", 4, 4, late_plte)
    plte = png_chunk(b"PLTE", bytes(range(6)))  # 2 entries; the pixels use index 5
    files["png-P-index-past-PLTE"] = png_payload(
        "P", 4, 4, png_stream(4, 4, zlib.compress(bytes([0, 5, 5, 5, 5]) * 4), colour_type=3, extra=plte)
    )
    return files


def _png_payload_wrong_mode(png: bytes) -> bytes:
    """A PNG payload in a header whose image mode (CMYK) no PNG payload may have."""
    data = bytearray(png_payload("RGB", 4, 4, png))
    data[10] = 7  # CMYK
    return _with_crcs(data)


def main() -> None:
    out = Path(__file__).resolve().parent.parent / "tests" / "fuzz_regressions"
    out.mkdir(parents=True, exist_ok=True)
    files = small_hostile_inputs()
    for name, data in files.items():
        (out / f"hostile-{name}.kq").write_bytes(data)
    print(f"{len(files)} hostile inputs, {sum(map(len, files.values()))} bytes, in {out}")


if __name__ == "__main__":
    main()
