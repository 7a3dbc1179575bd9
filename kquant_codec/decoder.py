"""Reading ``.kq`` files without going through ``Image.open``: header facts, centroids, labels, pixels.

    info = kq_info("photo.kq")          # header only: size, modes, table sizes, payload kind, codecs, bytes
    kq = read_kq("photo.kq")            # whole file, checked: centroids, labels, alpha, or the PNG payload
    img = kq.to_image()                 # the same pixels Image.open("photo.kq") gives

Both raise ``KqFormatError`` (an ``OSError``) for anything that is not a valid ``.kq`` v1 file.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from PIL import Image, ImagePalette, PngImagePlugin

from .container import (
    CODEC_NAMES,
    FIXED_HEADER_SIZE,
    KqFormatError,
    KqHeader,
    decode_payload,
    header_length,
    split_payload,
    unpack_header,
)
from .pixels import join_image
from .quantizer import lookup

__all__ = [
    "KqInfo",
    "KqImage",
    "kq_info",
    "read_kq",
    "check_pixel_limit",
    "png_payload_image",
    "native_image",
    "pillow_key",
    "read_at_most",
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_ONCE = {b"IHDR", b"PLTE", b"tRNS"}  # chunks a PNG may hold once at most
_PNG_LENGTHS = {b"IHDR": 13, b"IEND": 0}  # data bytes of the chunks whose length is fixed
Source = str | os.PathLike | bytes | bytearray | memoryview | IO[bytes]

# (mode of the PNG as Pillow reads it, image mode of the .kq header) pairs a reader converts between.
_PNG_CONVERSIONS = {("P", "RGB"), ("P", "RGBA"), ("P", "L"), ("P", "LA"), ("I", "I;16")}
# (colour type, bit depth) of a PNG payload's IHDR allowed for each image mode (spec section 9). Pillow reads
# more (2-bit grey as L, 16-bit colour reduced to 8 bits, 16-bit grey+alpha as RGBA): those are rejected.
_INDEXED = {(3, 1), (3, 2), (3, 4), (3, 8)}
_PNG_FORMS = {
    "1": {(0, 1)},
    "L": {(0, 8)} | _INDEXED,
    "LA": {(4, 8)} | _INDEXED,
    "P": _INDEXED,
    "RGB": {(2, 8)} | _INDEXED,
    "RGBA": {(6, 8)} | _INDEXED,
    "I;16": {(0, 16)},
}


@dataclass(frozen=True)
class KqInfo:
    """Header facts of a ``.kq`` file, read cheaply (header and its CRC only; the payload is not checked).

    width, height : pixels. image_mode : the Pillow mode the file decodes to. payload : "native" or "png".
    quant_mode : "rgb"/"global"/"channel", None for PNG. alpha : "none", "plane" (kept exact) or "table"
    (quantized with the colour channels). channels : channels per centroid row. table_sizes : entries per
    table. label_bits : bits per label in each label plane. codec / alpha_codec : stream codec names
    ("stored", "zlib", "lzma2"; "png" for a PNG payload). file_bytes, header_bytes, payload_bytes : sizes in
    bytes (payload = streams + payload CRC). version : format version. colour_key : a native "L" or "RGB"
    image's transparent colour as Pillow gives it (``info["transparency"]``: a grey level, an (R, G, B)
    triple), else None (a PNG payload's key is in its tRNS chunk and shows only on decoding).
    """

    width: int
    height: int
    image_mode: str
    payload: str
    quant_mode: str | None
    alpha: str
    channels: int
    table_sizes: tuple[int, ...]
    label_bits: tuple[int, ...]
    codec: str
    alpha_codec: str | None
    file_bytes: int
    header_bytes: int
    payload_bytes: int
    version: int
    colour_key: int | tuple[int, int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)

    @property
    def k(self) -> int | None:
        """Largest table size (the k of rgb/global mode, the largest per-channel k of channel mode)."""
        return max(self.table_sizes) if self.table_sizes else None


def _info_from_header(header: KqHeader, file_bytes: int) -> KqInfo:
    png = header.payload == "png"
    return KqInfo(
        width=header.width,
        height=header.height,
        image_mode=header.image_mode,
        payload=header.payload,
        quant_mode=header.quant_mode,
        alpha=header.alpha,
        channels=header.channels,
        table_sizes=tuple(header.table_sizes),
        label_bits=header.plane_depths,
        codec="png" if png else CODEC_NAMES[header.label_codec],
        alpha_codec=CODEC_NAMES[header.alpha_codec] if header.alpha == "plane" else None,
        file_bytes=file_bytes,
        header_bytes=header.header_length,
        payload_bytes=header.payload_length,
        version=header.version,
        colour_key=pillow_key(header),
    )


def _read_header_from(fp: IO[bytes]) -> KqHeader:
    fixed = fp.read(FIXED_HEADER_SIZE)
    total = header_length(fixed)
    rest = fp.read(total - len(fixed))
    return unpack_header(fixed + rest)


def _check_length(header: KqHeader, actual: int) -> None:
    if actual < header.file_length:
        raise KqFormatError(f"truncated .kq file: {actual} of {header.file_length} bytes")
    if actual > header.file_length:
        raise KqFormatError(f"{actual - header.file_length} unexpected bytes after the payload CRC")


def kq_info(source: Source) -> KqInfo:
    """Header facts of a ``.kq`` file (path, bytes or binary file object), without decoding the payload.

    Checks the header fields, the header CRC and that the file length matches the header.
    Raises ``KqFormatError``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        header = unpack_header(data)
        _check_length(header, len(data))
        return _info_from_header(header, len(data))
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fp:
            header = _read_header_from(fp)
            size = os.fstat(fp.fileno()).st_size
    else:
        start = source.tell()
        header = _read_header_from(source)
        source.seek(0, io.SEEK_END)
        size = source.tell() - start
    _check_length(header, size)
    return _info_from_header(header, size)


def check_pixel_limit(width: int, height: int) -> None:
    """Pillow's decompression-bomb rule for a declared size: warn above ``Image.MAX_IMAGE_PIXELS``, raise
    ``Image.DecompressionBombError`` above twice that (no limit when it is None)."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = width * height
    if limit is None or pixels <= limit:
        return

    def message(bound: int) -> str:  # Pillow's words, naming the bound that was passed
        return f"Image size ({pixels} pixels) exceeds limit of {bound} pixels, could be decompression bomb DOS attack."

    if pixels > 2 * limit:
        raise Image.DecompressionBombError(message(2 * limit))
    warnings.warn(message(limit), Image.DecompressionBombWarning, stacklevel=3)


# -- pixels ---------------------------------------------------------------------------------------


def _transparency(alpha: np.ndarray) -> int | bytes:
    """Pillow's ``info["transparency"]`` for palette alphas: an index when exactly one entry is transparent."""
    clear = np.flatnonzero(alpha == 0)
    if clear.size == 1 and bool(((alpha == 0) | (alpha == 255)).all()):
        return int(clear[0])
    return alpha.tobytes()


def palette_of(header: KqHeader) -> tuple[ImagePalette.ImagePalette, int | bytes | None]:
    """For a native "P" file: its palette (RGB, one entry per table row) and ``info["transparency"]``."""
    table = header.centroids
    palette = ImagePalette.raw("RGB", np.ascontiguousarray(table[:, :3]).tobytes())
    transparency = _transparency(np.ascontiguousarray(table[:, 3])) if header.alpha == "table" else None
    return palette, transparency


def pillow_key(header: KqHeader) -> int | tuple[int, int, int] | None:
    """The header's colour key as Pillow's ``info["transparency"]``: the grey level ("L"), (R, G, B) ("RGB")."""
    key = header.colour_key
    if key is None:
        return None
    return key[0] if header.image_mode == "L" else (key[0], key[1], key[2])


def native_image(header: KqHeader, labels: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    """Rebuild the image of a native payload: centroid lookup, alpha, image mode, colour key."""
    img = _native_pixels(header, labels, alpha)
    if header.colour_key is not None:
        img.info["transparency"] = pillow_key(header)
    return img


def _native_pixels(header: KqHeader, labels: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    if header.image_mode == "P":
        img = Image.frombytes("P", header.size, np.ascontiguousarray(labels).tobytes())
        palette, transparency = palette_of(header)
        img.putpalette(palette)
        if transparency is not None:
            img.info["transparency"] = transparency
        return img
    table = header.centroids
    rgb_like = header.image_mode == "RGB" or (header.image_mode == "RGBA" and alpha is not None)
    if header.quant_mode == "rgb" and rgb_like and table.shape[1] == 3 and labels.size:
        # Through a palette image over the labels: Pillow expands it in one pass, without numpy's (H, W, 3)
        # fancy-index gather (about 4x slower at 12 MP). Labels past the table were refused by the container.
        height, width = labels.shape
        index = Image.frombuffer("P", (width, height), np.ascontiguousarray(labels), "raw", "P", 0, 1)
        index.putpalette(np.ascontiguousarray(table).tobytes(), "RGB")
        img = index.convert("RGB")
        if alpha is not None:
            img.putalpha(Image.frombuffer("L", (width, height), np.ascontiguousarray(alpha), "raw", "L", 0, 1))
        return img
    colour = lookup(header.quant_mode, table, labels)
    if colour.ndim == 2:
        colour = colour[:, :, None]
    return join_image(colour, alpha, header.image_mode)


def _png_step(step: Any) -> Any:
    """Run one step of Pillow's PNG reader; any failure (IndexError, zlib.error, ...) means a corrupt payload."""
    try:
        return step()
    except MemoryError:
        raise
    except Exception as exc:
        raise KqFormatError(f"PNG payload is corrupt: {type(exc).__name__}: {exc}") from exc


def png_payload_image(header: KqHeader, png: bytes) -> Image.Image:
    """Decode a PNG payload (checked against the header) into a loaded image of the header's mode."""
    if len(png) < 26 or not png.startswith(PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise KqFormatError("PNG payload does not start with a PNG signature and IHDR chunk")
    width, height, depth, colour_type = struct.unpack(">IIBB", png[16:26])
    if (width, height) != header.size:
        raise KqFormatError(f"PNG payload is {width}x{height}, the header says {header.width}x{header.height}")
    if (colour_type, depth) not in _PNG_FORMS.get(header.image_mode, ()):
        raise KqFormatError(
            f"PNG payload has colour type {colour_type} at {depth} bits, which does not give mode {header.image_mode}"
        )
    chunks = _check_png_chunks(png)
    _check_png_rules(png, chunks)
    png = _essential_chunks(png, chunks, _check_png_rows(png, chunks))  # (the rows go once wrapped)
    # The PNG plugin's class directly, not Image.open: the declared size has had its decompression-bomb
    # check already, and Image.open would warn again (silencing that with warnings.catch_warnings is not
    # thread-safe: concurrent decoders left the global warning filters changed).
    img = _png_step(lambda: PngImagePlugin.PngImageFile(io.BytesIO(png)))
    if img.size != header.size:  # a later IHDR chunk overrides the first one in Pillow: check what it will use
        raise KqFormatError(f"PNG payload is {img.width}x{img.height} (a second IHDR), the header says {header.size}")
    _png_step(img.load)
    if img.mode == "P":  # the PNG spec's palette rules, which Pillow does not enforce (and then cannot convert)
        entries = len(img.palette.palette) // len(img.palette.mode) if img.palette is not None else 0
        transparency = img.info.get("transparency")
        if not entries:
            raise KqFormatError("PNG payload is corrupt: an indexed PNG without a PLTE chunk")
        if isinstance(transparency, bytes) and len(transparency) > entries:
            raise KqFormatError(f"PNG payload is corrupt: tRNS has {len(transparency)} entries, PLTE {entries}")
        top = img.getextrema()[1]
        if top >= entries:
            raise KqFormatError(f"PNG payload is corrupt: palette index {top} past the {entries} PLTE entries")
    if img.mode != header.image_mode:
        if (img.mode, header.image_mode) not in _PNG_CONVERSIONS:
            raise KqFormatError(f"PNG payload has mode {img.mode}, which does not give mode {header.image_mode}")
        img = img.convert(header.image_mode)
    key = img.info.pop("transparency", None)
    if header.image_mode == "P" and key is not None:
        img.info["transparency"] = key
    elif header.image_mode in ("L", "RGB") and colour_type in (0, 2) and key is not None:
        img.info["transparency"] = key  # a greyscale or truecolour tRNS: the image's colour key (spec 9)
    return img


def _check_png_chunks(png: bytes) -> list[tuple[bytes, int, int]]:
    """Spec section 9: after the signature, whole chunks (length, type, data, CRC) with correct CRCs; at most one
    IHDR (13 bytes), PLTE and tRNS, the last two before the first IDAT; the last chunk an empty IEND, nothing
    after it. Pillow alone accepts a missing IEND, a wrong IDAT CRC, trailing bytes and repeated chunks."""
    pos, view, seen, chunks = len(PNG_SIGNATURE), memoryview(png), set(), []
    while True:
        if pos + 12 > len(png):
            raise KqFormatError("PNG payload is truncated: it ends inside a chunk, before IEND")
        (length,) = struct.unpack_from(">I", png, pos)
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > len(png):
            raise KqFormatError("PNG payload is truncated: a chunk runs past the end of the stream")
        kind = bytes(view[pos + 4 : pos + 8])
        (crc,) = struct.unpack_from(">I", png, end - 4)
        if zlib.crc32(view[pos + 4 : end - 4]) != crc:
            raise KqFormatError(f"PNG payload is corrupt: CRC mismatch in its {kind!r} chunk")
        if kind in _PNG_ONCE:  # (Pillow takes the last IHDR's size, the last tRNS's alpha)
            if kind in seen:
                raise KqFormatError(f"PNG payload is corrupt: a second {kind.decode()} chunk")
            if b"IDAT" in seen and kind != b"IHDR":
                raise KqFormatError(f"PNG payload is corrupt: its {kind.decode()} chunk follows the image data")
        if kind in _PNG_LENGTHS and length != _PNG_LENGTHS[kind]:
            raise KqFormatError(f"PNG payload is corrupt: its {kind.decode()} chunk has {length} bytes")
        seen.add(kind)
        chunks.append((kind, pos + 8, length))
        pos = end
        if kind == b"IEND":
            break
    if pos != len(png):
        raise KqFormatError(f"PNG payload has {len(png) - pos} bytes after its IEND chunk")
    return chunks


_PNG_CRITICAL = {b"IHDR", b"PLTE", b"IDAT", b"IEND"}


def _check_png_rules(png: bytes, chunks: list[tuple[bytes, int, int]]) -> None:
    """Spec section 9, the PNG specification's rules that Pillow does not enforce (a libpng-based reader would
    refuse these files): IHDR's method fields, no unknown critical chunk, consecutive IDATs, where PLTE and tRNS
    may be and how long. ``chunks``: (type, data offset, length) of each, from ``_check_png_chunks``."""
    depth, colour_type, compression, filtering, interlace = png[24:29]
    if compression or filtering or interlace > 1:
        raise KqFormatError("PNG payload is corrupt: IHDR's compression, filter or interlace method is unknown")
    kinds, plte, trns = [], -1, None
    for kind, start, length in chunks:
        if kind[0] & 0x20 == 0 and kind not in _PNG_CRITICAL:  # an upper-case first letter: critical
            raise KqFormatError(f"PNG payload has an unknown critical chunk {kind!r}")
        if kind == b"IDAT" and b"IDAT" in kinds and kinds[-1] != b"IDAT":
            raise KqFormatError("PNG payload is corrupt: its IDAT chunks are not consecutive")
        if kind == b"PLTE":
            plte = length // 3
            if colour_type in (0, 4) or length == 0 or length % 3 or plte > 256:
                raise KqFormatError(
                    f"PNG payload is corrupt: a PLTE chunk of {length} bytes in colour type {colour_type}"
                )
            if colour_type == 3 and plte > 1 << depth:
                raise KqFormatError(f"PNG payload is corrupt: {plte} PLTE entries at {depth} bits per index")
        if kind == b"tRNS":
            trns = png[start : start + length]
            if colour_type in (4, 6):
                raise KqFormatError(f"PNG payload is corrupt: a tRNS chunk in colour type {colour_type} (it has alpha)")
            if colour_type == 3 and plte < 0:
                raise KqFormatError("PNG payload is corrupt: its tRNS chunk comes before PLTE")
        kinds.append(kind)
    if trns is not None and colour_type in (0, 2):
        if len(trns) != (2 if colour_type == 0 else 6):
            raise KqFormatError(f"PNG payload is corrupt: a colour-key tRNS of {len(trns)} bytes")
        if max(struct.unpack(f">{len(trns) // 2}H", trns)) >> depth:
            raise KqFormatError("PNG payload is corrupt: a colour key past the bit depth")


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel of each colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


# Up to this many bytes of rows, the inflated rows go to Pillow in stored blocks; above, the PNG's own IDATs
# (inflated a second time). Copying and checksumming the rows costs more than inflating them again at truecolour
# 12.6 MP (37.8 MB of rows: 456 against 415 ms), and 1.4 times the rows in memory; at 16 MB and less the re-wrap
# was faster or even (palette 12.6 MP: 58 against 73 ms; truecolour 0.27 MP: 7.1 against 9.3 ms;
# /tmp/s18/pngsize.py).
_REWRAP_MAX_BYTES = 16 << 20
_PNG_HEAD = (b"IHDR", b"PLTE", b"tRNS")  # the chunks before the image data that a reader uses (spec 9)
_PNG_KEPT = _PNG_HEAD + (b"IDAT", b"IEND")


def _essential_chunks(png: bytes, chunks: list[tuple[bytes, int, int]], rows: bytes) -> bytes:
    """The PNG with only the chunks spec 9 reads (IHDR, PLTE, tRNS, then one IDAT, IEND): ancillary chunks (text,
    ICC profiles, APNG frames, ...) carry nothing the image needs, and are not handed to Pillow to decompress or
    judge, so what a reader accepts depends on the spec's rules alone. Up to ``_REWRAP_MAX_BYTES``, the IDAT holds
    ``rows``, the filtered rows already inflated by ``_check_png_rows``, in stored deflate blocks: Pillow then
    copies them instead of inflating the image data a second time (a quarter less time for a small truecolour
    payload); above, the PNG's own IDAT chunks."""
    view = memoryview(png)
    if len(rows) > _REWRAP_MAX_BYTES:
        if all(kind in _PNG_KEPT for kind, _, _ in chunks):
            return png
        return PNG_SIGNATURE + b"".join(
            view[start - 8 : start + length + 4] for kind, start, length in chunks if kind in _PNG_KEPT
        )
    head = b"".join(view[start - 8 : start + length + 4] for kind, start, length in chunks if kind in _PNG_HEAD)
    return PNG_SIGNATURE + head + _png_chunk(b"IDAT", zlib.compress(rows, 0)) + _png_chunk(b"IEND", b"")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _png_raw_size(width: int, height: int, depth: int, colour_type: int, interlace: int) -> int:
    """Bytes of a PNG's filtered image data (a filter byte per row, then the row's packed samples)."""
    bits = depth * _PNG_CHANNELS[colour_type]
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    total = 0
    for x0, y0, dx, dy in passes:
        w, h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if w > 0 and h > 0:
            total += h * (1 + -(-(w * bits) // 8))
    return total


def _check_png_rows(png: bytes, chunks: list[tuple[bytes, int, int]]) -> bytes:
    """Spec section 9: the joined IDAT data, inflated with room for one byte more than the rows (never more: a
    bomb stays a bomb), gives every row, and ends there if it gives exactly the rows (Pillow fills rows that
    never come with zeros). One zlib call on the joined data, so where IDAT chunks split it cannot matter.
    Returns the rows (filter bytes included)."""
    width, height, depth, colour_type, _, _, interlace = struct.unpack_from(">IIBBBBB", png, 16)
    need = _png_raw_size(width, height, depth, colour_type, interlace)
    idats = [(start, length) for kind, start, length in chunks if kind == b"IDAT"]
    view = memoryview(png)
    data = view[idats[0][0] : sum(idats[0])] if len(idats) == 1 else b"".join(view[a : a + n] for a, n in idats)
    inflate = zlib.decompressobj()
    try:
        rows = inflate.decompress(data, need + 1)
        got = len(rows)
    except zlib.error as exc:
        raise KqFormatError(f"PNG payload is corrupt: its image data does not inflate: {exc}") from None
    if got < need:
        raise KqFormatError(f"PNG payload is corrupt: its image data holds {got} of the {need} bytes of its rows")
    if got == need and not inflate.eof:
        raise KqFormatError("PNG payload is corrupt: its zlib stream does not end")
    return rows[:need] if got > need else rows


@dataclass
class KqImage:
    """A decoded ``.kq`` file.

    header : the parsed ``KqHeader`` (sizes, modes, codecs).
    centroids : native payloads: uint8 table(s) like ``KMeansQuantizer.centroids_`` — "rgb": (m, C);
        "global": (m,); "channel": tuple of C arrays (m_c,). For a "P" image, rows are palette entries
        (RGB, plus alpha when ``header.alpha == "table"``). None for a PNG payload.
    labels : native payloads: uint8, (H, W) in "rgb" mode, (H, W, C) in "global"/"channel" mode; each
        label indexes its table. None for a PNG payload.
    alpha : (H, W) uint8 alpha kept exact (``header.alpha == "plane"``), else None.
    png : the PNG stream of a PNG payload, else None.
    """

    header: KqHeader
    centroids: Any
    labels: np.ndarray | None
    alpha: np.ndarray | None
    png: bytes | None
    _png_image: Image.Image | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        return self.header.size

    @property
    def mode(self) -> str:
        """The Pillow image mode the file decodes to."""
        return self.header.image_mode

    @property
    def quant_mode(self) -> str | None:
        return self.header.quant_mode

    def samples(self) -> np.ndarray:
        """Centroid lookup of a native payload: (H, W, C) uint8 over the table channels (alpha plane excluded)."""
        if self.labels is None:
            raise ValueError("a PNG payload has no centroids and labels")
        return lookup(self.header.quant_mode, self.centroids, self.labels)

    def to_image(self) -> Image.Image:
        """The decoded image, in the file's image mode and size."""
        if self.png is not None:
            if self._png_image is None:
                self._png_image = png_payload_image(self.header, self.png)
            return self._png_image.copy()
        return native_image(self.header, self.labels, self.alpha)


def decode_file(header: KqHeader, payload: bytes) -> KqImage:
    """Header + payload bytes (streams and payload CRC) -> ``KqImage``, every part checked (a PNG payload is
    decoded)."""
    if header.payload == "png":
        png, _ = split_payload(header, payload)
        return KqImage(header, None, None, None, png, png_payload_image(header, png))
    labels, alpha = decode_payload(header, payload)
    return KqImage(header, header.centroids, labels, alpha, None)


def read_kq(source: Source) -> KqImage:
    """Read and fully check a ``.kq`` file (path, bytes or binary file object).

    Honours ``Image.MAX_IMAGE_PIXELS`` like ``Image.open`` (warning, then ``DecompressionBombError``) before
    reading the payload. Raises ``KqFormatError`` for anything invalid: header fields, CRCs, truncation,
    trailing bytes, streams that do not inflate to the declared size, labels past their table.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = memoryview(bytes(source))
        header = unpack_header(data)
        check_pixel_limit(header.width, header.height)
        return decode_file(header, data[header.header_length :])
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as fp:
            return _read_from(fp)
    return _read_from(source)


def _read_from(fp: IO[bytes]) -> KqImage:
    header = _read_header_from(fp)
    check_pixel_limit(header.width, header.height)
    return decode_file(header, read_at_most(fp, header.payload_length + 1))


def bytes_left(fp: IO[bytes]) -> int | None:
    """Bytes from the position of ``fp`` to its end, or None when it cannot seek."""
    try:
        here = fp.tell()
        fp.seek(0, io.SEEK_END)
        left = fp.tell() - here  # (not what seek returns: mmap before Python 3.13, and many wrappers, give None)
        fp.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return left


def read_at_most(fp: IO[bytes], n: int, chunk: int = 1 << 20) -> bytes:
    """Read up to ``n`` bytes, so a short file never costs an ``n``-byte allocation.

    A seekable file is read in one call of the size that is really left (one allocation, no joining);
    anything else in chunks.
    """
    left = bytes_left(fp)
    if left is not None:
        return fp.read(max(0, min(n, left)))
    parts, left = [], n
    while left > 0:
        part = fp.read(min(chunk, left))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)
