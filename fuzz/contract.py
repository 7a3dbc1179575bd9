"""The decoder's error contract (spec/kq-format.md, section 12), as one checkable function, and a mutator.

``check(data)`` feeds one byte string to every reading entry point and raises ``ContractViolation`` unless
each either succeeds consistently or raises exactly the documented exception type:

==========================  ================================================================
entry point                 allowed exceptions
==========================  ================================================================
``kq_info(data)``           ``KqFormatError``
``read_kq(data)``           ``KqFormatError``, ``DecompressionBombError``
``Image.open(BytesIO)``     ``UnidentifiedImageError``, ``DecompressionBombError``
``img.load()``              ``KqFormatError``
==========================  ================================================================

On success the image must agree with the header (size, mode), ``read_kq`` and ``Image.open`` must give the
same pixels (and palette), and a lossless re-encode of those pixels must decode back to them exactly.
The paths must also agree on the verdict: a file ``read_kq`` accepts opens and loads, and the reverse.

``Mutator`` makes new inputs from a corpus: byte-level edits, header-field rewrites, structure-aware edits
of the decompressed label/alpha streams and of PNG chunks (recompressed, chunk CRCs fixed), and, most of
the time, both ``.kq`` CRCs recomputed so the edit reaches the payload decoders instead of dying at a CRC.

Used by the atheris target (``fuzz/fuzz_decoder.py``), the short campaign in the test suite
(``tests/test_fuzz_short.py``) and the regression replay (``tests/test_fuzz_regressions.py``).
"""

from __future__ import annotations

import io
import lzma
import random
import struct
import traceback
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from PIL import Image, UnidentifiedImageError

import kquant_codec
from kquant_codec import KqFormatError
from kquant_codec.container import CODEC_CONTEXT, CODEC_PREDICTIVE
from kquant_codec.encoder import encode_image

__all__ = [
    "ContractViolation",
    "Outcome",
    "check",
    "Mutator",
    "fix_crcs",
    "pixel_limit",
    "FUZZ_MAX_IMAGE_PIXELS",
]

MAGIC = b"\x89KQI\r\n\x1a\n"
FIXED = struct.Struct("<8sBBBBBBBBIIBBBBII4H")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A low decompression-bomb limit while fuzzing keeps every execution cheap: anything declaring more than
# twice this many pixels must be refused with DecompressionBombError (which the contract allows).
FUZZ_MAX_IMAGE_PIXELS = 1 << 16

INFO_ERRORS = (KqFormatError,)
READ_ERRORS = (KqFormatError, Image.DecompressionBombError)
OPEN_ERRORS = (UnidentifiedImageError, Image.DecompressionBombError)
LOAD_ERRORS = (KqFormatError,)


class ContractViolation(AssertionError):
    """An input broke the contract. ``key`` identifies the bug (for de-duplicating findings)."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass
class Outcome:
    """What ``check`` saw: "ok" (decoded) or the exception type name of each entry point."""

    info: str
    read: str
    open: str
    load: str
    round_trip: bool = False

    @property
    def decoded(self) -> bool:
        return self.read == "ok"


class pixel_limit:
    """Context manager: ``Image.MAX_IMAGE_PIXELS`` set to ``limit`` (and warnings silenced) inside."""

    def __init__(self, limit: int | None = FUZZ_MAX_IMAGE_PIXELS) -> None:
        self.limit = limit

    def __enter__(self) -> pixel_limit:
        self.saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = self.limit
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")  # Pillow's UserWarnings about odd PNG chunks, bomb warnings
        return self

    def __exit__(self, *exc: object) -> None:
        self.warnings.__exit__(*exc)
        Image.MAX_IMAGE_PIXELS = self.saved


def _where(exc: BaseException) -> str:
    """The innermost frame of a traceback inside the package or Pillow: file:line of the bug."""
    frames = traceback.extract_tb(exc.__traceback__)
    for frame in reversed(frames):
        if "kquant_codec" in frame.filename or "PIL" in frame.filename:
            return f"{frame.filename.rsplit('/', 2)[-2]}/{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    return frames[-1].filename.rsplit("/", 1)[-1] + f":{frames[-1].lineno}" if frames else "?"


def _call(stage: str, allowed: tuple[type[BaseException], ...], fn: Callable[[], object]) -> tuple[str, object]:
    """Run ``fn``; return ("ok", result) or (exception name, exception) for an allowed exception."""
    try:
        return "ok", fn()
    except allowed as exc:
        return type(exc).__name__, exc
    except Exception as exc:  # noqa: BLE001 - that is the point: anything else is a finding
        where = _where(exc)
        raise ContractViolation(
            f"{stage} raised {type(exc).__name__} (not one of {', '.join(t.__name__ for t in allowed)}) "
            f"at {where}: {exc}",
            key=f"{stage}:{type(exc).__name__}:{where}",
        ) from exc


def _require(condition: bool, message: str, key: str) -> None:
    if not condition:
        raise ContractViolation(message, key=key)


def _pixels(img: Image.Image) -> tuple[str, tuple[int, int], bytes, bytes | None]:
    """Everything that makes two images "the same": mode, size, pixel bytes and, for P, the RGBA palette."""
    palette = img.convert("RGBA").tobytes() if img.mode == "P" else None
    return img.mode, img.size, img.tobytes(), palette


def _open_and_load(data: bytes, formats: Sequence[str] | None) -> tuple[str, str, Image.Image | None]:
    status, result = _call("Image.open", OPEN_ERRORS, lambda: Image.open(io.BytesIO(data), formats=formats))
    if status != "ok":
        return status, "-", None
    img = result
    load_status, _ = _call("Image.load", LOAD_ERRORS, img.load)
    return status, load_status, img if load_status == "ok" else None


def check(data: bytes, *, round_trip: bool = True, all_formats: bool | None = None) -> Outcome:
    """Check the contract on one input; raise ``ContractViolation`` on any breach.

    round_trip : also re-encode a successfully decoded image and check that it decodes back exactly.
    all_formats : also open with every Pillow format (not only "KQ"); default: when ``data`` starts with
        the ``.kq`` magic (other inputs may legitimately be some other format, whose errors are Pillow's).
    Call inside ``pixel_limit()`` to fuzz with a small decompression-bomb limit.
    """
    try:
        return _check(bytes(data), round_trip, all_formats)
    except ContractViolation:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a decoded image that Pillow cannot even convert
        where = _where(exc)
        raise ContractViolation(
            f"using the decoded image raised {type(exc).__name__} at {where}: {exc}",
            key=f"use:{type(exc).__name__}:{where}",
        ) from exc


def _check(data: bytes, round_trip: bool, all_formats: bool | None) -> Outcome:
    info_status, info = _call("kq_info", INFO_ERRORS, lambda: kquant_codec.kq_info(data))
    read_status, kq = _call("read_kq", READ_ERRORS, lambda: kquant_codec.read_kq(data))
    kq_image = None
    if read_status == "ok":
        kq_image = _call("KqImage.to_image", (), kq.to_image)[1]
    open_status, load_status, img = _open_and_load(data, ["KQ"])
    outcome = Outcome(info_status, read_status, open_status, load_status)

    if read_status == "ok":
        _require(info_status == "ok", f"read_kq accepts what kq_info rejects ({info})", "consistency:info")
        _require(
            open_status == "ok" and load_status == "ok",
            f"read_kq accepts what Image.open/load rejects ({open_status}/{load_status})",
            "consistency:open",
        )
        header = kq.header
        _require(
            (info.size, info.image_mode) == (header.size, header.image_mode),
            "kq_info and read_kq disagree on size/mode",
            "consistency:header",
        )
        for what, candidate in (("read_kq().to_image()", kq_image), ("Image.open().load()", img)):
            _require(
                (candidate.size, candidate.mode) == (header.size, header.image_mode),
                f"{what} gives {candidate.size} {candidate.mode}, header says {header.size} {header.image_mode}",
                "consistency:size-mode",
            )
        _require(_pixels(kq_image) == _pixels(img), "read_kq and Image.open give different pixels", "consistency:px")
        if round_trip:
            _check_round_trip(img)
            outcome.round_trip = True
    else:
        _require(
            not (open_status == "ok" and load_status == "ok"),
            f"Image.open/load accepts what read_kq rejects ({kq})",
            "consistency:read",
        )
        if read_status == "DecompressionBombError":
            _require(open_status == "DecompressionBombError", "bomb refused by read_kq only", "consistency:bomb")

    if all_formats is None:
        all_formats = data.startswith(MAGIC)
    if all_formats:
        everything = _open_and_load(data, None)[:2]
        _require(
            everything == (open_status, load_status),
            f"Image.open with every format gives {everything}, with KQ only {(open_status, load_status)}",
            "consistency:all-formats",
        )
    return outcome


def _check_round_trip(img: Image.Image) -> None:
    expected = _pixels(img)
    status, encoded = _call("encode_image(decoded)", (), lambda: encode_image(img))
    back = _call("read_kq(re-encoded)", (), lambda: kquant_codec.read_kq(encoded).to_image())[1]
    _require(_pixels(back) == expected, "re-encoding the decoded pixels does not round-trip exactly", "round-trip")


# -- mutation ----------------------------------------------------------------------------------------


def _table_bytes(fields: tuple) -> int:
    """Centroid table and colour key bytes implied by a (possibly invalid) fixed header, as a reader computes
    them."""
    payload, quant, channels, sizes = fields[2], fields[4], fields[6], fields[17:21]
    if payload == 1:
        return 0
    key = channels if fields[13] == 1 else 0
    if fields[8] == 1 and quant in (1, 2):  # level sets: 32 bytes per table
        return 32 * (1 if quant == 1 else min(channels, 4)) + key
    if quant == 0:
        return sizes[0] * channels + key
    if quant == 1:
        return sizes[0] + key
    return sum(sizes[: min(channels, 4)]) + key


def fix_crcs(data: bytes) -> bytes:
    """Recompute the header CRC and the payload CRC of a (possibly mutated) file, where they would be read.

    The payload CRC is taken to be the last 4 bytes. Inputs too short to hold a header are returned as is.
    """
    if len(data) < FIXED.size or not data.startswith(MAGIC):
        return data
    fields = FIXED.unpack_from(data)
    end = FIXED.size + _table_bytes(fields)
    if len(data) < end + 8:
        return data
    out = bytearray(data)
    struct.pack_into("<I", out, end, zlib.crc32(out[:end]))
    struct.pack_into("<I", out, len(out) - 4, zlib.crc32(out[end + 4 : len(out) - 4]))
    return bytes(out)


def fix_lengths(data: bytes) -> bytes:
    """Set label_length so that the label stream (plus alpha_length bytes) spans the rest of the file."""
    if len(data) < FIXED.size or not data.startswith(MAGIC):
        return data
    fields = FIXED.unpack_from(data)
    start = FIXED.size + _table_bytes(fields) + 4
    label_length = len(data) - start - 4 - fields[16]
    if label_length < 0:
        return data
    out = bytearray(data)
    struct.pack_into("<I", out, 28, label_length)
    return bytes(out)


# Offsets, formats and interesting values of the fixed header fields.
_FIELDS = [
    (8, "B", (0, 1, 2, 255)),  # version
    (9, "B", (0, 1, 2)),  # payload kind
    (10, "B", tuple(range(13))),  # image mode
    (11, "B", (0, 1, 2, 3)),  # quant mode
    (12, "B", (0, 1, 2, 3)),  # alpha
    (13, "B", (0, 1, 2, 3, 4, 5, 255)),  # channels
    (14, "B", (0, 1, 2)),  # packing
    (15, "B", (0, 1, 2)),  # table coding (1: level sets)
    (16, "I", (0, 1, 2, 3, 7, 8, 9, 255, 256, 4096, 65536, 1 << 24, (1 << 24) + 1, 1 << 31, 0xFFFFFFFF)),  # width
    (20, "I", (0, 1, 2, 3, 7, 8, 9, 255, 256, 4096, 65536, 1 << 24, (1 << 24) + 1, 1 << 31, 0xFFFFFFFF)),  # height
    (24, "B", (0, 1, 2, 3, 4, 255)),  # label codec (3: the context coder)
    (25, "B", (0, 1, 2, 3, 4, 255)),  # alpha codec
    (26, "B", (0, 1, 2)),  # colour key flag
    (27, "B", (0, 1)),  # reserved
    (28, "I", (0, 1, 2, 7, 8, 64, 65536, 0x7FFFFFFF, 0xFFFFFFFF)),  # label_length
    (32, "I", (0, 1, 2, 64, 65536, 0xFFFFFFFF)),  # alpha_length
    (36, "H", (0, 1, 2, 3, 4, 5, 16, 17, 255, 256, 257, 0xFFFF)),  # m0
    (38, "H", (0, 1, 2, 4, 16, 256, 257)),  # m1
    (40, "H", (0, 1, 2, 4, 16, 256, 257)),  # m2
    (42, "H", (0, 1, 2, 4, 16, 256, 257)),  # m3
]
_INTERESTING_BYTES = (0x00, 0x01, 0x02, 0x7F, 0x80, 0xFE, 0xFF)


def _png_chunks(png: bytes) -> list[tuple[bytes, bytes]] | None:
    """(type, data) chunks of a PNG stream, or None if it does not parse."""
    if not png.startswith(PNG_SIGNATURE):
        return None
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos + 12 <= len(png):
        (length,) = struct.unpack_from(">I", png, pos)
        if pos + 12 + length > len(png):
            return None
        chunks.append((png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks if pos == len(png) else None


def _png_join(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = [PNG_SIGNATURE]
    for kind, body in chunks:
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


class Mutator:
    """Seeded mutations of ``.kq`` files. ``mutate(data)`` returns a new input (deterministic per seed)."""

    def __init__(self, corpus: Sequence[bytes], seed: int = 0) -> None:
        self.corpus = [bytes(c) for c in corpus]
        self.rng = random.Random(seed)

    # -- byte level --------------------------------------------------------------------------------

    def _bytes(self, data: bytearray) -> None:
        r = self.rng
        op = r.randrange(9)
        n = len(data)
        if op == 0 and n:  # flip a bit
            i = r.randrange(n)
            data[i] ^= 1 << r.randrange(8)
        elif op == 1 and n:  # set a byte to an interesting or random value
            data[r.randrange(n)] = r.choice(_INTERESTING_BYTES) if r.random() < 0.5 else r.randrange(256)
        elif op == 2:  # insert bytes
            i = r.randrange(n + 1)
            data[i:i] = bytes(r.randrange(256) for _ in range(r.choice((1, 1, 2, 4, 16))))
        elif op == 3 and n:  # delete a range
            i = r.randrange(n)
            del data[i : i + r.choice((1, 1, 2, 4, 16, 64))]
        elif op == 4 and n:  # duplicate a range
            i = r.randrange(n)
            j = min(n, i + r.choice((1, 4, 16, 64)))
            k = r.randrange(n + 1)
            data[k:k] = data[i:j]
        elif op == 5 and n:  # truncate
            del data[r.randrange(n) :]
        elif op == 6:  # splice with another corpus file
            other = r.choice(self.corpus)
            i, j = r.randrange(n + 1), r.randrange(len(other) + 1)
            data[i:] = other[j:]
        elif op == 7 and n >= 4:  # overwrite a little-endian u16/u32 with an interesting value
            i = r.randrange(n - 3)
            size = r.choice((2, 4))
            value = r.choice((0, 1, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)) & ((1 << (8 * size)) - 1)
            data[i : i + size] = value.to_bytes(size, "little")
        elif n:  # append junk
            data += bytes(r.randrange(256) for _ in range(r.choice((1, 4, 32))))

    # -- structure level ---------------------------------------------------------------------------

    def _field(self, data: bytearray) -> None:
        if len(data) < FIXED.size:
            return
        offset, fmt, values = self.rng.choice(_FIELDS)
        value = self.rng.choice(values)
        struct.pack_into("<" + fmt, data, offset, value)

    def _stream(self, data: bytes) -> bytes | None:
        """Decompress the label or alpha stream of a valid-looking file, edit it, recompress with any codec."""
        try:
            header = kquant_codec.container.unpack_header(data)
        except Exception:  # noqa: BLE001 - any unparsable header just means: no structure-aware edit
            return None
        start = header.header_length
        body = data[start:-4]
        if len(body) != header.label_length + header.alpha_length:
            return None
        streams = [(body[: header.label_length], header.label_codec, header.label_raw_length, 24, 28)]
        if header.alpha == "plane":
            streams.append((body[header.label_length :], header.alpha_codec, header.alpha_raw_length, 25, 32))
        if header.payload == "png":
            return self._png(data, header, body)
        index = self.rng.randrange(len(streams))
        stored, codec, raw_len, codec_at, length_at = streams[index]
        packed = header.packed
        if codec in (CODEC_CONTEXT, CODEC_PREDICTIVE):  # no byte stream to inflate: edit the coded bytes directly
            new, new_codec = self._context_bytes(bytearray(stored)), codec
        else:
            try:
                raw = bytearray(kquant_codec.container.decompress(stored, codec, raw_len))
            except Exception:  # noqa: BLE001
                return None
            if raw and self.rng.random() < 0.8:
                for _ in range(self.rng.choice((1, 1, 2, 8))):
                    raw[self.rng.randrange(len(raw))] = self.rng.randrange(256)
            else:
                self._bytes(raw)
            modelled = (CODEC_CONTEXT, CODEC_PREDICTIVE) if header.quant_mode != "rgb" else (CODEC_CONTEXT,)
            new_codec = self.rng.choice((0, 1, 2, codec, codec) + (modelled if index == 0 else ()))
            if new_codec == 1:
                new = zlib.compress(bytes(raw), self.rng.choice((0, 1, 9)))
            elif new_codec == 2:
                filters = [{"id": lzma.FILTER_LZMA2, "dict_size": kquant_codec.container.lzma2_dict_size(raw_len)}]
                new = lzma.compress(bytes(raw), format=lzma.FORMAT_RAW, filters=filters)
            elif new_codec == CODEC_CONTEXT:  # the edited labels, coded by the context coder (packing 0)
                try:
                    labels = kquant_codec.container.stream_to_labels(bytes(raw), header)
                    unpacked = replace(header, packed=False)
                    new = kquant_codec.container.labels_to_context_stream(labels, unpacked, self.rng.random() < 0.7)
                except Exception:  # noqa: BLE001 - labels past their table, a short stream: no codec-3 version
                    return None
                packed = False
            elif new_codec == CODEC_PREDICTIVE:  # the edited labels, coded by the predictive coder (packing 0)
                try:
                    labels = kquant_codec.container.stream_to_labels(bytes(raw), header)
                    new = kquant_codec.container.labels_to_predictive_stream(labels, replace(header, packed=False))
                except Exception:  # noqa: BLE001 - labels past their table, a short stream: no codec-4 version
                    return None
                packed = False
            else:
                new = bytes(raw)
        parts = [s[0] for s in streams]
        parts[index] = new
        out = bytearray(data[:start]) + b"".join(parts) + bytes(4)
        out[codec_at] = new_codec
        out[14] = int(packed)
        struct.pack_into("<I", out, length_at, len(new))
        return bytes(out)

    def _context_bytes(self, stream: bytearray) -> bytes:
        """An edit of a codec-3 or codec-4 label stream (same framing): plane/stripe header, rANS words, bytes."""
        r = self.rng
        op = r.randrange(5)
        if op == 0 and len(stream) >= 4:  # the first plane's version, flags or stripe height
            stream[r.randrange(3)] = r.choice((0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF))
        elif op == 1 and len(stream) >= 8:  # a rANS word near the end (the final state) or anywhere
            i = r.choice((len(stream) - 2, len(stream) - 4, r.randrange(len(stream) - 1)))
            stream[i : i + 2] = r.randrange(1 << 16).to_bytes(2, "little")
        elif op == 2:  # a varint: a stripe length or plane length, set large or small
            i = r.randrange(max(1, min(len(stream), 12)))
            stream[i : i + 1] = r.choice((b"\x00", b"\x01", b"\x7f", b"\xff\x7f", b"\xff\xff\xff\x7f"))
        elif op == 3 and len(stream) > 4:  # drop or add one 16-bit word
            i = r.randrange(3, len(stream) - 1)
            if r.random() < 0.5:
                del stream[i : i + 2]
            else:
                stream[i:i] = r.randrange(1 << 16).to_bytes(2, "little")
        else:
            self._bytes(stream)
        return bytes(stream)

    def _png(self, data: bytes, header: object, png: bytes) -> bytes | None:
        """Edit one chunk of a PNG payload (IDAT: its inflated scanlines) and fix the chunk CRC."""
        chunks = _png_chunks(png)
        if not chunks:
            return None
        r = self.rng
        op = r.randrange(4)
        if op == 0:  # edit the inflated image data
            idat = b"".join(body for kind, body in chunks if kind == b"IDAT")
            try:
                raw = bytearray(zlib.decompress(idat))
            except zlib.error:
                return None
            self._bytes(raw)
            first = next(i for i, (kind, _) in enumerate(chunks) if kind == b"IDAT")
            chunks = [c for c in chunks if c[0] != b"IDAT"]
            chunks.insert(first, (b"IDAT", zlib.compress(bytes(raw))))
        elif op == 1:  # edit a chunk body
            i = r.randrange(len(chunks))
            body = bytearray(chunks[i][1])
            self._bytes(body)
            chunks[i] = (chunks[i][0], bytes(body))
        elif op == 2:  # drop, duplicate or reorder chunks
            i, j = r.randrange(len(chunks)), r.randrange(len(chunks))
            choice = r.randrange(3)
            if choice == 0:
                del chunks[i]
            elif choice == 1:
                chunks.insert(j, chunks[i])
            else:
                chunks[i], chunks[j] = chunks[j], chunks[i]
        else:  # insert an ancillary or odd chunk
            kind = r.choice((b"tRNS", b"PLTE", b"zTXt", b"iCCP", b"tEXt", b"iTXt", b"acTL", b"fcTL", b"sBIT", b"gAMA"))
            if kind in (b"zTXt", b"iCCP"):
                text = bytes(r.randrange(4) for _ in range(64)) if r.random() < 0.7 else bytes(1 << 21)  # or a bomb
                packed = zlib.compress(text)
                body = b"k\x00\x00" + r.choice((packed, packed[: len(packed) // 2], b"x", b"\xff\xfe\xfd"))
            else:
                body = bytes(r.randrange(256) for _ in range(r.choice((0, 1, 3, 8, 26, 300))))
            chunks.insert(r.randrange(1, len(chunks) + 1), (kind, body))
        new_png = _png_join(chunks)
        start = len(data) - len(png) - 4
        out = bytearray(data[:start]) + new_png + bytes(4)
        struct.pack_into("<I", out, 28, len(new_png))
        return bytes(out)

    def mutate(self, data: bytes) -> bytes:
        """One new input from ``data``: 1-4 edits, then (usually) lengths and CRCs made consistent again."""
        r = self.rng
        out = bytes(data)
        for _ in range(r.choice((1, 1, 1, 2, 2, 3, 4))):
            kind = r.random()
            if kind < 0.35:
                edited = self._stream(out)
                if edited is not None:
                    out = edited
                    continue
            buf = bytearray(out)
            if kind < 0.65:
                self._field(buf)
            else:
                self._bytes(buf)
            out = bytes(buf)
        if r.random() < 0.15:
            out = fix_lengths(out)
        if r.random() < 0.85:
            out = fix_crcs(out)
        return out
