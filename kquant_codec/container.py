"""The ``.kq`` v1 container: bytes <-> structure, with no knowledge of Pillow.

Everything here follows ``spec/kq-format.md``; numpy and the standard library only.

A file is::

    header block  = fixed header (44 bytes) + centroid table bytes + colour key (0 or ``channels`` bytes)
    header CRC    = CRC-32 of the header block (u32, little-endian)
    label stream  = ``label_length`` bytes, compressed with ``label_codec``  (PNG payload: the PNG stream)
    alpha stream  = ``alpha_length`` bytes, compressed with ``alpha_codec``  (only when alpha is a plane)
    payload CRC   = CRC-32 of label stream + alpha stream (u32, little-endian)

Every malformed input raises ``KqFormatError`` (an ``OSError``) with a message naming what is wrong;
decompression is always capped at the size the header implies.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

__all__ = [
    "KqFormatError",
    "KqHeader",
    "MAGIC",
    "FIXED_HEADER_SIZE",
    "VERSION",
    "MAX_SIDE",
    "MAX_PIXELS",
    "IMAGE_MODES",
    "NATIVE_MODES",
    "PNG_MODES",
    "STORABLE_MODES",
    "COLOUR_CHANNELS",
    "QUANT_MODES",
    "ALPHA_KINDS",
    "CODEC_STORED",
    "CODEC_ZLIB",
    "CODEC_LZMA2",
    "CODEC_CONTEXT",
    "CODEC_PREDICTIVE",
    "CODEC_NAMES",
    "header_length",
    "unpack_header",
    "pack_file",
    "split_payload",
    "decode_payload",
    "compress",
    "decompress",
    "plane_depth",
    "row_bytes",
    "pack_plane",
    "unpack_plane",
    "labels_to_stream",
    "stream_to_labels",
    "lzma2_dict_size",
    "plane_keys",
    "labels_to_context_stream",
    "context_stream_to_labels",
    "labels_to_predictive_stream",
    "predictive_stream_to_labels",
]


class KqFormatError(OSError):
    """The bytes are not a valid ``.kq`` v1 file: bad magic, bad field, CRC mismatch, truncation, bad payload.

    An ``OSError`` like Pillow's own "broken data stream" errors, so ``except OSError`` catches both.
    """


MAGIC = b"\x89KQI\r\n\x1a\n"
VERSION = 1
FIXED_HEADER_SIZE = 44
LEVEL_SET_BYTES = 32  # a level table stored as the set of its levels: 256 bits
_FIXED = struct.Struct("<8sBBBBBBBBIIBBBBII4H")
assert _FIXED.size == FIXED_HEADER_SIZE

MAX_SIDE = 1 << 24  # largest width or height
MAX_PIXELS = 1 << 28  # largest width * height

# Image mode codes (header byte 10). 0 is invalid.
IMAGE_MODES = {
    1: "1",
    2: "L",
    3: "LA",
    4: "P",
    5: "RGB",
    6: "RGBA",
    7: "CMYK",
    8: "YCbCr",
    9: "LAB",
    10: "HSV",
    11: "I;16",
}
_MODE_CODES = {name: code for code, name in IMAGE_MODES.items()}
# Colour channels of the centroids for each natively stored mode, alpha not counted.
COLOUR_CHANNELS = {"1": 1, "L": 1, "LA": 1, "P": 3, "RGB": 3, "RGBA": 3, "CMYK": 4, "YCbCr": 3, "LAB": 3, "HSV": 3}
NATIVE_MODES = tuple(COLOUR_CHANNELS)
PNG_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")
STORABLE_MODES = tuple(sorted(set(NATIVE_MODES) | set(PNG_MODES)))  # every image mode a .kq file holds
_ALPHA_MODES = ("LA", "RGBA")
KEY_MODES = ("L", "RGB")  # image modes whose native payload may carry a colour key (header byte 26)

QUANT_MODES = ("rgb", "global", "channel")  # codes 0, 1, 2
ALPHA_KINDS = ("none", "plane", "table")  # codes 0, 1, 2
_PAYLOADS = ("native", "png")  # codes 0, 1

CODEC_STORED = 0
CODEC_ZLIB = 1
CODEC_LZMA2 = 2
CODEC_CONTEXT = 3  # label streams only: the context-modelling coder (``label_coder``, spec section 16)
# label streams of global/channel layouts only (sorted tables): the predictive coder (``predictive_coder``, section 17)
CODEC_PREDICTIVE = 4
CODEC_NAMES = {
    CODEC_STORED: "stored",
    CODEC_ZLIB: "zlib",
    CODEC_LZMA2: "lzma2",
    CODEC_CONTEXT: "context",
    CODEC_PREDICTIVE: "predictive",
}
_RESERVED_CODECS: dict[int, str] = {}

_LZMA_MAX_DICT = 1 << 26


def _fail(message: str) -> KqFormatError:
    return KqFormatError(message)


# -- header ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KqHeader:
    """Everything the header block says. Sizes in pixels or bytes.

    width, height : image size in pixels.
    image_mode : the Pillow mode a decoder returns ("RGB", "P", ...).
    payload : "native" (centroids + labels) or "png" (a PNG stream carries the pixels).
    quant_mode : "rgb", "global" or "channel"; None for a PNG payload.
    alpha : "none"; "plane" (alpha kept exact, its own stream); "table" (alpha is the last centroid channel).
    channels : channels of each centroid row (colour channels, plus one when alpha is "table"); 0 for PNG.
    packed : labels of small tables packed below 8 bits (see ``plane_depth``).
    label_codec, alpha_codec : stream codec ids (``CODEC_NAMES``).
    label_length, alpha_length : stored (compressed) stream lengths in bytes.
    table_sizes : entries per table: one for "rgb"/"global", ``channels`` for "channel", none for PNG.
    tables : the centroid table bytes, in table order (``m`` bytes per level table, ``m * channels`` for rgb).
    level_sets : the file stores each level table as a 32-byte set of levels (header byte 15 = 1; global
        and channel modes, every table strictly ascending); ``tables`` holds the levels all the same.
    colour_key : the image's transparent colour, one sample per channel (native "L": (grey,), "RGB":
        (R, G, B)); None when it has none. Stored after the tables (header byte 26 = 1).
    """

    width: int
    height: int
    image_mode: str
    payload: str = "native"
    quant_mode: str | None = "rgb"
    alpha: str = "none"
    channels: int = 3
    packed: bool = False
    label_codec: int = CODEC_STORED
    alpha_codec: int = CODEC_STORED
    label_length: int = 0
    alpha_length: int = 0
    table_sizes: tuple[int, ...] = ()
    tables: bytes = field(default=b"", repr=False)
    level_sets: bool = False
    colour_key: tuple[int, ...] | None = None
    version: int = VERSION

    # -- derived sizes ---------------------------------------------------------------------------

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, as Pillow orders them."""
        return (self.width, self.height)

    @property
    def header_length(self) -> int:
        """Bytes from the start of the file to the first payload byte (header block + header CRC)."""
        return FIXED_HEADER_SIZE + self.stored_table_length + self.key_length + 4

    @property
    def key_length(self) -> int:
        """Bytes the colour key takes after the tables: one per channel, or 0 without a key."""
        return 0 if self.colour_key is None else len(self.colour_key)

    @property
    def stored_table_length(self) -> int:
        """Bytes the tables take in the file: ``len(tables)``, or 32 per table as level sets."""
        return self.stored_table_length_as_sets() if self.level_sets else len(self.tables)

    def stored_table_length_as_sets(self) -> int:
        """Bytes the tables would take as level sets: 32 per table."""
        return LEVEL_SET_BYTES * len(self.table_sizes)

    @property
    def payload_length(self) -> int:
        """Bytes from the first payload byte to the end of the file (streams + payload CRC)."""
        return self.label_length + self.alpha_length + 4

    @property
    def file_length(self) -> int:
        """Total bytes of the file."""
        return self.header_length + self.payload_length

    @property
    def plane_tables(self) -> tuple[int, ...]:
        """For each label plane, in stream order, the size of the table its labels index."""
        if self.payload != "native":
            return ()
        if self.quant_mode == "rgb":
            return (self.table_sizes[0],)
        if self.quant_mode == "global":
            return (self.table_sizes[0],) * self.channels
        return tuple(self.table_sizes)

    @property
    def plane_depths(self) -> tuple[int, ...]:
        """Bits per label in each label plane: 8, or 1/2/4 for small tables when ``packed``."""
        return tuple(plane_depth(m) if self.packed else 8 for m in self.plane_tables)

    @property
    def label_raw_length(self) -> int:
        """Bytes of the label stream after decompression (0 for a PNG payload)."""
        return sum(self.height * row_bytes(self.width, d) for d in self.plane_depths)

    @property
    def alpha_raw_length(self) -> int:
        """Bytes of the alpha stream after decompression: one byte per pixel when alpha is a plane."""
        return self.width * self.height if self.alpha == "plane" else 0

    # -- centroids ---------------------------------------------------------------------------------

    @property
    def centroids(self) -> np.ndarray | tuple[np.ndarray, ...] | None:
        """The centroid table(s), uint8, in the conventions of ``KMeansQuantizer.centroids_``.

        "rgb": array (m, channels). "global": array (m,). "channel": tuple of ``channels`` arrays (m_c,).
        None for a PNG payload.
        """
        if self.payload != "native":
            return None
        if self.quant_mode == "rgb":
            return np.frombuffer(self.tables, dtype=np.uint8).reshape(self.table_sizes[0], self.channels).copy()
        tables = [t.copy() for t in self.level_tables()]
        return tables[0] if self.quant_mode == "global" else tuple(tables)

    # -- bytes -------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ``KqFormatError`` unless every field holds a value version 1 allows."""
        _check_fields(self)

    def to_bytes(self) -> bytes:
        """The header block followed by its CRC-32 (``header_length`` bytes)."""
        self.validate()
        fixed = _FIXED.pack(
            MAGIC,
            self.version,
            _PAYLOADS.index(self.payload),
            _MODE_CODES[self.image_mode],
            0 if self.quant_mode is None else QUANT_MODES.index(self.quant_mode),
            ALPHA_KINDS.index(self.alpha),
            self.channels,
            int(self.packed),
            int(self.level_sets),
            self.width,
            self.height,
            self.label_codec,
            self.alpha_codec,
            int(self.colour_key is not None),
            0,
            self.label_length,
            self.alpha_length,
            *(tuple(self.table_sizes) + (0, 0, 0, 0))[:4],
        )
        block = fixed + (self._level_set_bytes() if self.level_sets else bytes(self.tables))
        if self.colour_key is not None:
            block += bytes(self.colour_key)
        return block + struct.pack("<I", zlib.crc32(block))

    def _level_set_bytes(self) -> bytes:
        """Each level table as a 256-bit set: level v is bit v % 8 of byte v // 8 (least significant first)."""
        out = bytearray()
        for levels in self.level_tables():
            bits = np.zeros(256, dtype=np.uint8)
            bits[levels] = 1
            out += np.packbits(bits, bitorder="little").tobytes()
        return bytes(out)

    def level_tables(self) -> list[np.ndarray]:
        """The level tables of a global (one) or channel (``channels``) layout, uint8 arrays (m_c,)."""
        raw = np.frombuffer(self.tables, dtype=np.uint8)
        bounds = np.cumsum((0,) + tuple(self.table_sizes))
        return [raw[bounds[c] : bounds[c + 1]] for c in range(len(self.table_sizes))]

    def with_compact_tables(self) -> KqHeader:
        """This header, storing its level tables as level sets when that is allowed and smaller."""
        smaller = self.stored_table_length_as_sets() < len(self.tables)
        if not (smaller and _level_sets_allowed(self.payload, self.quant_mode)):
            return replace(self, level_sets=False)
        return replace(self, level_sets=_strictly_ascending(self))


def _table_bytes(payload: str, quant_mode: str | None, channels: int, sizes: tuple[int, ...]) -> int:
    """Bytes of the tables as levels or rows (not as level sets)."""
    if payload != "native":
        return 0
    if quant_mode == "rgb":
        return sizes[0] * channels
    return sum(sizes)


_LEVEL_SETS_ONLY = "level sets (table coding 1) are for the tables of global and channel quantization modes"
_KEY_NATIVE_ONLY = "a PNG payload holds a colour key in its tRNS chunk: header byte 26 must be 0"


def _level_sets_allowed(payload: str, quant_mode: str | None) -> bool:
    """Level sets hold level tables: those of native global and channel payloads."""
    return payload == "native" and quant_mode in ("global", "channel")


def _strictly_ascending(h: KqHeader) -> bool:
    """Every level table of ``h`` strictly ascending: the tables that level sets can hold."""
    return all(bool(np.all(np.diff(t.astype(np.int16)) > 0)) for t in h.level_tables())


def _levels_from_sets(data: bytes, sizes: tuple[int, ...]) -> bytes:
    """The level tables stored as level sets (32 bytes each) -> their levels, ascending, checked against m."""
    out = bytearray()
    for c, m in enumerate(sizes):
        bits = np.unpackbits(np.frombuffer(data, np.uint8, LEVEL_SET_BYTES, LEVEL_SET_BYTES * c), bitorder="little")
        levels = np.flatnonzero(bits)
        if levels.size != m:
            raise _fail(f"level set {c} holds {levels.size} levels, but m{c} is {m}")
        out += levels.astype(np.uint8).tobytes()
    return bytes(out)


def _stream_bound(raw: int) -> int:
    """Largest stored length a compressed stream of ``raw`` bytes may have."""
    return raw + raw // 16 + 64


def _png_bound(width: int, height: int) -> int:
    """Largest PNG stream accepted for a ``width`` x ``height`` image."""
    return 8 * width * height + 8 * height + 65536


def _check_codec(codec: int, what: str) -> None:
    if codec in CODEC_NAMES:
        return
    known = ", ".join(f"{k} {v}" for k, v in CODEC_NAMES.items())
    note = _RESERVED_CODECS.get(codec, "unknown")
    raise _fail(f"unsupported {what} codec id {codec} ({note}); this decoder knows {known}")


def _check_fields(h: KqHeader) -> None:
    """All field checks of the spec's "values a decoder must reject" column, in header order."""
    if h.version != VERSION:
        raise _fail(f"unsupported .kq version {h.version} (this decoder reads version {VERSION})")
    if h.payload not in _PAYLOADS:
        raise _fail(f"invalid payload kind {h.payload!r}")
    if h.image_mode not in _MODE_CODES:
        raise _fail(f"invalid image mode {h.image_mode!r}")
    if not (1 <= h.width <= MAX_SIDE and 1 <= h.height <= MAX_SIDE):
        raise _fail(f"invalid image size {h.width}x{h.height} (each side must be 1..{MAX_SIDE})")
    if h.width * h.height > MAX_PIXELS:
        raise _fail(f"image size {h.width}x{h.height} exceeds the format limit of {MAX_PIXELS} pixels")
    sizes = tuple(h.table_sizes)
    if h.payload == "png":
        if h.image_mode not in PNG_MODES:
            raise _fail(f"image mode {h.image_mode!r} cannot be carried by a PNG payload")
        if (h.quant_mode, h.alpha, h.channels, h.packed, h.label_codec, h.alpha_codec, h.alpha_length) != (
            None,
            "none",
            0,
            False,
            CODEC_STORED,
            CODEC_STORED,
            0,
        ) or any(sizes):
            raise _fail("a PNG payload must have quant mode, alpha, channels, packing, codecs and tables all zero")
        if not 8 <= h.label_length <= _png_bound(h.width, h.height):
            raise _fail(f"PNG stream length {h.label_length} is out of range for a {h.width}x{h.height} image")
        if len(h.tables):
            raise _fail("a PNG payload has no centroid tables")
        if h.level_sets:
            raise _fail(_LEVEL_SETS_ONLY)
        if h.colour_key is not None:
            raise _fail(_KEY_NATIVE_ONLY)
        return
    if h.image_mode not in NATIVE_MODES:
        raise _fail(f"image mode {h.image_mode!r} cannot be stored natively")
    if h.quant_mode not in QUANT_MODES:
        raise _fail(f"invalid quantization mode {h.quant_mode!r}")
    if h.alpha not in ALPHA_KINDS:
        raise _fail(f"invalid alpha kind {h.alpha!r}")
    if h.image_mode in _ALPHA_MODES and h.alpha == "none":
        raise _fail(f"image mode {h.image_mode} needs its alpha stored as a plane or in the table")
    if h.alpha == "plane" and h.image_mode not in _ALPHA_MODES:
        raise _fail(f"image mode {h.image_mode} has no alpha band to store as a plane")
    if h.alpha == "table" and h.image_mode not in _ALPHA_MODES + ("P",):
        raise _fail(f"image mode {h.image_mode} has no alpha to store in the table")
    if h.image_mode == "P" and h.quant_mode != "rgb":
        raise _fail("a P image is stored in rgb quantization mode (palette + indices)")
    expected = COLOUR_CHANNELS[h.image_mode] + (h.alpha == "table")
    if h.channels != expected:
        raise _fail(f"channel count {h.channels} does not match image mode {h.image_mode} with alpha {h.alpha!r}")
    if h.packed not in (False, True):
        raise _fail(f"invalid packing flag {h.packed!r}")
    _check_codec(h.label_codec, "label stream")
    _check_codec(h.alpha_codec, "alpha stream")
    if h.alpha_codec == CODEC_CONTEXT:
        raise _fail("codec 3 (context) codes label planes only, not the alpha stream")
    if h.label_codec == CODEC_CONTEXT and h.packed:
        raise _fail("a label stream with codec 3 (context) must have packing 0")
    if h.alpha_codec == CODEC_PREDICTIVE:
        raise _fail("codec 4 (predictive) codes label planes only, not the alpha stream")
    if h.label_codec == CODEC_PREDICTIVE and h.packed:
        raise _fail("a label stream with codec 4 (predictive) must have packing 0")
    if h.label_codec == CODEC_PREDICTIVE and h.quant_mode == "rgb":
        raise _fail("codec 4 (predictive) codes sorted level tables only: not allowed in rgb quantization mode")
    used = 1 if h.quant_mode in ("rgb", "global") else h.channels
    if len(sizes) > 4 or any(not 1 <= s <= 256 for s in sizes[:used]) or any(sizes[used:]) or len(sizes) < used:
        raise _fail(f"invalid table sizes {sizes} for {h.quant_mode} mode with {h.channels} channel(s)")
    if h.alpha != "plane" and (h.alpha_length or h.alpha_codec):
        raise _fail("alpha stream length and codec must be 0 unless alpha is stored as a plane")
    raw = h.label_raw_length
    if h.label_codec == CODEC_STORED and h.label_length != raw:
        raise _fail(f"stored label stream must be {raw} bytes, header says {h.label_length}")
    if not 1 <= h.label_length <= _stream_bound(raw):
        raise _fail(f"label stream length {h.label_length} is out of range for {raw} bytes of labels")
    if h.alpha == "plane":
        araw = h.alpha_raw_length
        if h.alpha_codec == CODEC_STORED and h.alpha_length != araw:
            raise _fail(f"stored alpha stream must be {araw} bytes, header says {h.alpha_length}")
        if not 1 <= h.alpha_length <= _stream_bound(araw):
            raise _fail(f"alpha stream length {h.alpha_length} is out of range for {araw} bytes of alpha")
    if len(h.tables) != _table_bytes(h.payload, h.quant_mode, h.channels, sizes):
        raise _fail("centroid table bytes do not match the table sizes")
    if h.level_sets:
        if not _level_sets_allowed(h.payload, h.quant_mode):
            raise _fail(_LEVEL_SETS_ONLY)
        if not _strictly_ascending(h):
            raise _fail("tables stored as level sets must be strictly ascending")
    if h.colour_key is not None:
        if h.image_mode not in KEY_MODES:
            raise _fail(f"a colour key is for images of mode L or RGB, not {h.image_mode}")
        key = tuple(h.colour_key)
        if len(key) != h.channels or not all(isinstance(v, int) and 0 <= v <= 255 for v in key):
            raise _fail(f"colour key {key} is not {h.channels} sample(s) of 0..255")
    if h.image_mode == "1":
        values = set(bytes(h.tables))
        if not values <= {0, 255}:
            raise _fail(f"a mode-1 table may hold only 0 and 255, found {sorted(values - {0, 255})}")


def _fields_from_fixed(fixed: bytes) -> tuple[KqHeader, int, int]:
    """Decode the 44 fixed bytes into a header without tables or key, the table byte count and the key's."""
    if len(fixed) < len(MAGIC) or fixed[: len(MAGIC)] != MAGIC:
        if MAGIC.startswith(bytes(fixed[: len(MAGIC)])):
            raise _fail(f"truncated .kq header: {len(fixed)} of {FIXED_HEADER_SIZE} bytes")
        raise _fail("not a .kq file (bad magic)")
    if len(fixed) < FIXED_HEADER_SIZE:
        raise _fail(f"truncated .kq header: {len(fixed)} of {FIXED_HEADER_SIZE} bytes")
    (
        _magic,
        version,
        payload,
        mode_code,
        quant,
        alpha,
        channels,
        packed,
        level_sets,
        width,
        height,
        label_codec,
        alpha_codec,
        has_key,
        reserved,
        label_length,
        alpha_length,
        *sizes,
    ) = _FIXED.unpack_from(fixed)
    if version != VERSION:
        raise _fail(f"unsupported .kq version {version} (this decoder reads version {VERSION})")
    if payload >= len(_PAYLOADS):
        raise _fail(f"invalid payload kind {payload} (0 native, 1 png)")
    if mode_code not in IMAGE_MODES:
        raise _fail(f"invalid image mode code {mode_code}")
    if quant >= len(QUANT_MODES):
        raise _fail(f"invalid quantization mode code {quant} (0 rgb, 1 global, 2 channel)")
    if alpha >= len(ALPHA_KINDS):
        raise _fail(f"invalid alpha code {alpha} (0 none, 1 plane, 2 table)")
    if packed > 1:
        raise _fail(f"invalid packing flag {packed} (0 or 1)")
    if reserved:
        raise _fail("reserved header byte 27 must be zero")
    if has_key > 1:
        raise _fail(f"invalid colour key flag {has_key} (0 none, 1 a key follows the tables)")
    if level_sets > 1:
        raise _fail(f"invalid table coding {level_sets} (0 bytes, 1 level sets)")
    if level_sets and not _level_sets_allowed(_PAYLOADS[payload], QUANT_MODES[quant]):
        raise _fail(_LEVEL_SETS_ONLY)
    is_png = payload == 1
    if is_png and (quant or alpha or channels or packed):
        raise _fail("a PNG payload must have quant mode, alpha, channels and packing all zero")
    if is_png and has_key:
        raise _fail(_KEY_NATIVE_ONLY)
    if has_key and IMAGE_MODES[mode_code] not in KEY_MODES:
        raise _fail(f"a colour key is for images of mode L or RGB, not {IMAGE_MODES[mode_code]}")
    quant_mode = None if is_png else QUANT_MODES[quant]
    if not is_png:
        if not 1 <= channels <= 4:
            raise _fail(f"invalid channel count {channels} (1..4)")
        used = 1 if quant_mode in ("rgb", "global") else channels
        if any(not 1 <= s <= 256 for s in sizes[:used]) or any(sizes[used:]):
            raise _fail(f"invalid table sizes {tuple(sizes)} for {quant_mode} mode with {channels} channel(s)")
        sizes = tuple(sizes[:used])
    elif any(sizes):
        raise _fail("a PNG payload has no centroid tables: table sizes must be zero")
    else:
        sizes = ()
    header = KqHeader(
        width=width,
        height=height,
        image_mode=IMAGE_MODES[mode_code],
        payload=_PAYLOADS[payload],
        quant_mode=quant_mode,
        alpha=ALPHA_KINDS[alpha],
        channels=channels,
        packed=bool(packed),
        label_codec=label_codec,
        alpha_codec=alpha_codec,
        label_length=label_length,
        alpha_length=alpha_length,
        table_sizes=sizes,
        level_sets=bool(level_sets),
        version=version,
    )
    key_bytes = channels if has_key else 0
    if level_sets:
        return header, header.stored_table_length_as_sets(), key_bytes
    return header, _table_bytes(header.payload, quant_mode, channels, sizes), key_bytes


def header_length(fixed: bytes) -> int:
    """From the first 44 bytes of a file, the length of its whole header (header block + CRC).

    Lets a streaming reader know how many more bytes to read before calling ``unpack_header``.
    Raises ``KqFormatError`` for bad magic, a truncated fixed header or an invalid fixed field.
    """
    _, table_bytes, key_bytes = _fields_from_fixed(bytes(fixed[:FIXED_HEADER_SIZE]))
    return FIXED_HEADER_SIZE + table_bytes + key_bytes + 4


def unpack_header(data: bytes) -> KqHeader:
    """Parse and fully validate the header at the start of ``data`` (which may continue with the payload).

    Checks the magic, every field, and the header CRC. Raises ``KqFormatError``.
    """
    data = memoryview(data)
    header, table_bytes, key_bytes = _fields_from_fixed(bytes(data[:FIXED_HEADER_SIZE]))
    tables_end = FIXED_HEADER_SIZE + table_bytes
    end = tables_end + key_bytes
    if len(data) < end + 4:
        raise _fail(f"truncated .kq header: {len(data)} of {end + 4} bytes")
    (stored_crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[:end]) != stored_crc:
        raise _fail("header CRC mismatch: the header is corrupt")
    stored = bytes(data[FIXED_HEADER_SIZE:tables_end])
    tables = _levels_from_sets(stored, header.table_sizes) if header.level_sets else stored
    key = tuple(data[tables_end:end]) if key_bytes else None
    header = replace(header, tables=tables, colour_key=key)
    _check_fields(header)
    return header


# -- whole files ---------------------------------------------------------------------------------


def png_payload_header(width: int, height: int, image_mode: str, png_length: int) -> KqHeader:
    """The header of a file whose payload is a PNG of ``png_length`` bytes (spec: PNG payload); not validated."""
    return KqHeader(
        width=width,
        height=height,
        image_mode=image_mode,
        payload="png",
        quant_mode=None,
        channels=0,
        label_length=png_length,
    )


def pack_file(header: KqHeader, label_stream: bytes, alpha_stream: bytes = b"") -> bytes:
    """Assemble a file from a header (whose lengths must match the streams) and the stored streams."""
    if header.label_length != len(label_stream) or header.alpha_length != len(alpha_stream):
        raise ValueError("header stream lengths do not match the streams")
    payload = bytes(label_stream) + bytes(alpha_stream)
    return header.to_bytes() + payload + struct.pack("<I", zlib.crc32(payload))


def split_payload(header: KqHeader, payload: bytes) -> tuple[bytes, bytes]:
    """Check the payload's length and CRC; return (label stream, alpha stream) as stored.

    ``payload`` is everything after the header: the streams and the payload CRC, exactly
    ``header.payload_length`` bytes. Raises ``KqFormatError`` on truncation, trailing bytes or CRC mismatch.
    """
    need = header.payload_length
    if len(payload) < need:
        raise _fail(f"truncated .kq file: payload has {len(payload)} of {need} bytes")
    if len(payload) > need:
        raise _fail(f"{len(payload) - need} unexpected bytes after the payload CRC")
    view = memoryview(payload)
    body = view[: need - 4]
    (stored_crc,) = struct.unpack_from("<I", view, need - 4)
    if zlib.crc32(body) != stored_crc:
        raise _fail("payload CRC mismatch: the pixel data is corrupt")
    return bytes(body[: header.label_length]), bytes(body[header.label_length :])


def decode_payload(header: KqHeader, payload: bytes) -> tuple[np.ndarray, np.ndarray | None]:
    """Native payload -> (labels, alpha).

    labels : uint8, (H, W) in "rgb" mode, (H, W, C) in "global"/"channel" mode; every label is checked
        to index its table. alpha : (H, W) uint8 when alpha is a plane, else None.
    Raises ``KqFormatError``.
    """
    if header.payload != "native":
        raise ValueError("decode_payload needs a native payload")
    label_stream, alpha_stream = split_payload(header, payload)
    if header.label_codec == CODEC_CONTEXT:
        labels = context_stream_to_labels(label_stream, header)
    elif header.label_codec == CODEC_PREDICTIVE:
        labels = predictive_stream_to_labels(label_stream, header)
    else:
        raw = decompress(label_stream, header.label_codec, header.label_raw_length, "label stream")
        labels = stream_to_labels(raw, header)
    alpha = None
    if header.alpha == "plane":
        araw = decompress(alpha_stream, header.alpha_codec, header.alpha_raw_length, "alpha stream")
        alpha = np.frombuffer(araw, dtype=np.uint8).reshape(header.height, header.width)
    return labels, alpha


# -- stream codecs -------------------------------------------------------------------------------


def lzma2_dict_size(raw_length: int) -> int:
    """The LZMA2 dictionary size, in bytes, for a stream of ``raw_length`` uncompressed bytes.

    Both sides derive it from the header: clamp(raw_length, 4096, 2**26).
    """
    return min(max(raw_length, 4096), _LZMA_MAX_DICT)


def _lzma2_filters(raw_length: int, **options: int) -> list[dict]:
    return [{"id": lzma.FILTER_LZMA2, "dict_size": lzma2_dict_size(raw_length), **options}]


def compress(data: bytes, codec: int, *, narrow_alphabet: bool = False) -> bytes:
    """Compress ``data`` with stream codec ``codec`` (deterministic for a given zlib/liblzma).

    ``narrow_alphabet`` tunes LZMA2's literal context for streams whose bytes take few values.
    """
    if codec == CODEC_STORED:
        return bytes(data)
    if codec == CODEC_ZLIB:
        return zlib.compress(data, 9)
    if codec == CODEC_LZMA2:
        lc, pb = (4, 0) if narrow_alphabet else (3, 0)
        preset = 9 | lzma.PRESET_EXTREME
        filters = _lzma2_filters(len(data), preset=preset, lc=lc, lp=0, pb=pb)
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)
    raise ValueError(f"unknown codec {codec}")


def decompress(data: bytes, codec: int, size: int, what: str = "stream") -> bytes:
    """Decompress a stored stream that must expand to exactly ``size`` bytes.

    Never produces more than ``size`` + 1 bytes, whatever the input: a stream that would inflate beyond
    ``size`` is refused after one extra byte. Raises ``KqFormatError`` for a corrupt, short, long or
    unterminated stream, or for trailing bytes after its end.
    """
    if codec == CODEC_STORED:
        if len(data) != size:
            raise _fail(f"{what}: stored stream has {len(data)} bytes, expected {size}")
        return bytes(data)
    try:
        if codec == CODEC_ZLIB:
            d = zlib.decompressobj()
            out = d.decompress(data, size)
            if len(out) == size and not d.eof:
                if d.decompress(d.unconsumed_tail, 1):
                    raise _fail(f"{what} inflates beyond the {size} bytes the header declares")
            leftover = d.unused_data or d.unconsumed_tail
        elif codec == CODEC_LZMA2:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma2_filters(size))
            out = d.decompress(data, size)
            if len(out) == size and not d.eof:
                if d.decompress(b"", 1):
                    raise _fail(f"{what} inflates beyond the {size} bytes the header declares")
            leftover = d.unused_data
        elif codec == CODEC_CONTEXT:
            raise _fail(f"{what}: codec 3 (context) decodes label planes with the header (decode_payload)")
        elif codec == CODEC_PREDICTIVE:
            raise _fail(f"{what}: codec 4 (predictive) decodes label planes with the header (decode_payload)")
        else:
            _check_codec(codec, what)
            raise AssertionError("unreachable")
    except (zlib.error, lzma.LZMAError) as exc:
        raise _fail(f"{what} is corrupt ({CODEC_NAMES[codec]}: {exc})") from exc
    if len(out) < size:
        raise _fail(f"{what} is truncated: it inflates to {len(out)} of {size} bytes")
    if not d.eof:
        raise _fail(f"{what} does not end where the header says ({CODEC_NAMES[codec]} end marker missing)")
    if leftover:
        raise _fail(f"{what} has {len(leftover)} bytes after its {CODEC_NAMES[codec]} end")
    return out


# -- labels: bit packing and plane layout ---------------------------------------------------------


def plane_depth(table_size: int) -> int:
    """Bits per packed label for a table of ``table_size`` entries: 1 (<= 2), 2 (<= 4), 4 (<= 16), else 8."""
    for depth in (1, 2, 4):
        if table_size <= 1 << depth:
            return depth
    return 8


def row_bytes(width: int, depth: int) -> int:
    """Bytes of one row of ``width`` labels at ``depth`` bits each, padded to a whole byte."""
    return (width * depth + 7) // 8


def pack_plane(plane: np.ndarray, depth: int) -> bytes:
    """Pack a (H, W) uint8 plane at ``depth`` bits per label (1, 2, 4 or 8), MSB first, rows byte-padded.

    Every value must be below 2**depth. The first label of a row sits in the most significant bits of
    the row's first byte; unused bits at the end of a row are zero.
    """
    plane = np.ascontiguousarray(plane, dtype=np.uint8)
    if depth == 8:
        return plane.tobytes()
    height, width = plane.shape
    per = 8 // depth
    padded = np.zeros((height, row_bytes(width, depth) * per), dtype=np.uint8)
    padded[:, :width] = plane
    groups = padded.reshape(height, -1, per)
    out = np.zeros(groups.shape[:2], dtype=np.uint8)
    for i in range(per):
        out |= groups[:, :, i] << np.uint8(8 - depth * (i + 1))
    return out.tobytes()


def unpack_plane(data: bytes, height: int, width: int, depth: int) -> np.ndarray:
    """Inverse of ``pack_plane``: ``height * row_bytes(width, depth)`` bytes -> (H, W) uint8."""
    packed = np.frombuffer(data, dtype=np.uint8).reshape(height, row_bytes(width, depth))
    if depth == 8:
        return packed
    per = 8 // depth
    shifts = np.array([8 - depth * (i + 1) for i in range(per)], dtype=np.uint8)
    values = (packed[:, :, None] >> shifts) & np.uint8((1 << depth) - 1)
    return values.reshape(height, -1)[:, :width]


def labels_to_stream(labels: np.ndarray, header: KqHeader) -> bytes:
    """Lay out labels as the uncompressed label stream the header describes.

    labels : (H, W) uint8 for "rgb", (H, W, C) uint8 for "global"/"channel" (C = header.channels).
    Planes follow each other (one per channel, channel order), rows top to bottom.
    """
    labels = np.asarray(labels, dtype=np.uint8)
    planes = [labels] if labels.ndim == 2 else [labels[:, :, c] for c in range(labels.shape[2])]
    depths = header.plane_depths
    if len(planes) != len(depths):
        raise ValueError(f"expected {len(depths)} label plane(s), got {len(planes)}")
    return b"".join(pack_plane(p, d) for p, d in zip(planes, depths, strict=True))


def stream_to_labels(raw: bytes, header: KqHeader) -> np.ndarray:
    """The uncompressed label stream -> labels in quantizer layout, checking each against its table."""
    h, w = header.height, header.width
    planes, offset = [], 0
    for index, (m, depth) in enumerate(zip(header.plane_tables, header.plane_depths, strict=True)):
        n = h * row_bytes(w, depth)
        plane = unpack_plane(raw[offset : offset + n], h, w, depth)
        offset += n
        top = int(plane.max())
        if top >= m:
            raise _fail(f"label {top} in plane {index} points past its {m}-entry centroid table")
        planes.append(plane)
    if header.quant_mode == "rgb":
        return np.array(planes[0], dtype=np.uint8)
    return np.stack(planes, axis=2)


# -- codec 3: the context-modelling label coder ------------------------------------------------------


def plane_keys(header: KqHeader) -> list[np.ndarray]:
    """For each label plane, the (m, C) uint8 key table codec 3 ranks escapes by (spec section 16.3).

    rgb: the centroid rows; global: the shared levels (C = 1) for every plane; channel: table c.
    """
    centroids = header.centroids
    if header.quant_mode == "rgb":
        return [centroids]
    if header.quant_mode == "global":
        return [centroids[:, None]] * header.channels
    return [t[:, None] for t in centroids]


def labels_to_context_stream(labels: np.ndarray, header: KqHeader, use_ref: bool = True) -> bytes:
    """Labels (quantizer layout) -> a codec-3 label stream. Imports ``label_coder`` (and its kernels) on first use.

    use_ref : code planes 1.. of global/channel layouts with the previous plane as reference.
    """
    from . import label_coder

    labels = np.asarray(labels, dtype=np.uint8)
    planes = [labels] if labels.ndim == 2 else [labels[:, :, c] for c in range(labels.shape[2])]
    return label_coder.encode_label_planes(planes, plane_keys(header), use_ref)


def context_stream_to_labels(stream: bytes, header: KqHeader) -> np.ndarray:
    """A codec-3 label stream -> labels in quantizer layout. Raises ``KqFormatError`` for any corrupt stream.

    The decoder allocates the (H, W) planes the header declares (already checked against the reader's
    pixel limit) and refuses streams too short to describe them before decoding.
    """
    from . import label_coder

    try:
        planes = label_coder.decode_label_planes(stream, header.height, header.width, plane_keys(header))
    except ValueError as exc:
        raise _fail(f"label stream is corrupt (context coder: {exc})") from exc
    return _checked_planes(planes, header)


def _checked_planes(planes: list[np.ndarray], header: KqHeader) -> np.ndarray:
    """Decoded label planes -> labels in quantizer layout ((H, W) rgb, else (H, W, C)), each label checked
    against its table. The coders' decoders already refuse such labels; this is the container's own guarantee."""
    for index, (plane, m) in enumerate(zip(planes, header.plane_tables, strict=True)):
        top = int(plane.max())
        if top >= m:
            raise _fail(f"label {top} in plane {index} points past its {m}-entry centroid table")
    if header.quant_mode == "rgb":
        return planes[0]
    return np.stack(planes, axis=2)


# -- codec 4: the predictive coder of sorted label planes ------------------------------------------------


def labels_to_predictive_stream(labels: np.ndarray, header: KqHeader) -> bytes:
    """Labels (quantizer layout, (H, W, C)) of a global/channel header -> a codec-4 label stream (section 17).

    Imports ``predictive_coder`` (and its kernels) on first use. Raises ``ValueError`` for an rgb header: codec 4 needs
    tables sorted ascending, which only the global and channel layouts guarantee.
    """
    from . import predictive_coder

    if header.quant_mode not in ("global", "channel"):
        raise ValueError("codec 4 (predictive) codes global and channel layouts only")
    labels = np.asarray(labels, dtype=np.uint8)
    planes = [labels[:, :, c] for c in range(labels.shape[2])]
    return predictive_coder.encode_label_planes(planes, list(header.plane_tables))


def predictive_stream_to_labels(stream: bytes, header: KqHeader) -> np.ndarray:
    """A codec-4 label stream -> (H, W, C) labels. Raises ``KqFormatError`` for any corrupt stream."""
    from . import predictive_coder

    if header.quant_mode not in ("global", "channel"):
        raise _fail("codec 4 (predictive) is not allowed in rgb quantization mode")
    try:
        planes = predictive_coder.decode_label_planes(stream, header.height, header.width, list(header.plane_tables))
    except ValueError as exc:
        raise _fail(f"label stream is corrupt (predictive coder: {exc})") from exc
    return _checked_planes(planes, header)
