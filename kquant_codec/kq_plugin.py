"""Pillow plugin for ``.kq`` files: format "KQ", extension ".kq", MIME type "image/x-kq".

Opening is lazy like Pillow's own formats: ``Image.open`` reads and checks the header (and the centroid
table), sets mode and size, and Pillow's decompression-bomb check runs on that size before any pixel data
is read; the payload is read, checked and decoded on ``load()``.

Errors: a file that is not ``.kq``, or whose header is invalid, makes ``Image.open`` raise Pillow's
``UnidentifiedImageError``; a corrupt or truncated payload makes ``load()`` raise ``KqFormatError`` (an
``OSError``), unless ``ImageFile.LOAD_TRUNCATED_IMAGES`` is set, in which case a truncated payload leaves
the image blank.

Saving: ``img.save("x.kq", k=16, mode="rgb", seed=0, alpha="keep", fallback=True)``; every keyword is
optional (see ``kquant_codec.encoder.encode_image``; ``quant_mode=`` is another name for ``mode=``).
``img.save("x.kq", palette=pal)`` maps every pixel to its nearest colour of a given (m, 3) palette instead
of learning colours (``pal`` from ``kquant_codec.read_palette`` or ``learn_palette``).

After opening, ``img.kq_header`` is the parsed header; ``img.kq`` (which loads the image) is the decoded
``KqImage`` with the centroid table(s) and labels.
"""

from __future__ import annotations

import warnings
from typing import IO

from PIL import Image, ImageFile, ImagePalette

from .container import FIXED_HEADER_SIZE, MAGIC, KqFormatError, KqHeader, header_length, split_payload, unpack_header
from .decoder import KqImage, bytes_left, decode_file, palette_of, pillow_key, read_at_most
from .encoder import SAVE_OPTIONS, encode_image

__all__ = ["KqImageFile", "KqDecoder", "register", "FORMAT", "EXTENSION", "MIME"]

FORMAT = "KQ"
EXTENSION = ".kq"
MIME = "image/x-kq"
_DECODER = "kq"


def _accept(prefix: bytes) -> bool:
    return prefix[: len(MAGIC)] == MAGIC


class KqImageFile(ImageFile.ImageFile):
    """A ``.kq`` file opened by Pillow. ``kq_header``: the parsed header; ``kq``: the decoded file."""

    format = FORMAT
    format_description = "k-means quantized image"

    def _open(self) -> None:
        assert self.fp is not None
        fixed = self.fp.read(FIXED_HEADER_SIZE)
        try:
            rest = self.fp.read(header_length(fixed) - len(fixed))
            header = unpack_header(fixed + rest)
        except KqFormatError as exc:  # Pillow turns SyntaxError into UnidentifiedImageError
            raise SyntaxError(str(exc)) from exc
        self.kq_header: KqHeader = header
        self._kq: KqImage | None = None
        self._kq_pixels: object | None = None  # the decoded image's ImagingCore, until load_end
        self._kq_palette: tuple[ImagePalette.ImagePalette, object] | None = None
        self._kq_key: object | None = None  # an L or RGB image's colour key, from a PNG payload
        self._size = header.size
        self._mode = header.image_mode
        if header.colour_key is not None:  # (a PNG payload's key is known once its tRNS is read, in load_end)
            self.info["transparency"] = pillow_key(header)
        if header.payload == "native" and header.image_mode == "P":
            palette, transparency = palette_of(header)
            self.palette = palette
            if transparency is not None:
                self.info["transparency"] = transparency
        elif header.image_mode == "P":  # a PNG payload's palette comes with its pixels (load_end); until then an
            self.palette = ImagePalette.ImagePalette("RGB")  # empty one, as code reads im.palette.mode unloaded
        tile = (_DECODER, (0, 0) + header.size, header.header_length, (header, self))
        self.tile = [ImageFile._Tile(*tile) if hasattr(ImageFile, "_Tile") else tile]

    n_frames = 1  # one image per file (Pillow's multi-frame attributes, for code that reads them unasked)
    is_animated = False

    def load_read(self, read_bytes: int) -> bytes:
        """Reads for ``ImageFile.load``. Defined so that ``ImageFile.Parser`` (incremental decoding) gathers
        the whole file and decodes it on ``close()``, as for other formats with their own reading: the payload
        is checked as a whole (its CRC) before any pixel is made, so it is not decoded piece by piece."""
        assert self.fp is not None
        return self.fp.read(read_bytes)

    def verify(self) -> None:
        """Check the payload without decoding it: its length (truncated, or bytes after it) and its CRC.
        Raises ``KqFormatError``. As with Pillow's formats, open the file again to use the image afterwards."""
        if self.fp is None:
            raise RuntimeError("verify must be called directly after open")
        header = self.kq_header
        self.fp.seek(header.header_length)
        split_payload(header, _read_payload(self.fp, header))
        if self._exclusive_fp:
            self.fp.close()
        self.fp = None

    @property
    def kq(self) -> KqImage | None:
        """The decoded file (centroids, labels, alpha or PNG stream); loads the image. None if truncated."""
        self.load()
        return self._kq

    def _kq_decoded(self, kq: KqImage, img: Image.Image) -> None:
        self._kq = kq
        self._kq_pixels = img.im
        if kq.png is not None and img.mode == "P":
            pal_mode = img.im.getpalettemode()
            palette = ImagePalette.raw(pal_mode, img.im.getpalette(pal_mode, pal_mode))
            self._kq_palette = (palette, img.info.get("transparency"))
        elif kq.png is not None and "transparency" in img.info:  # an L or RGB image's colour key
            self._kq_key = img.info["transparency"]

    def load_end(self) -> None:
        # The decoded pixels replace the blank image load() prepared (still untouched: its zeroed pages were
        # never written), instead of being pasted into it: at 12 MP RGB that saves a 48 MB copy (~30 ms).
        if self._kq_pixels is not None:
            self.im = self._kq_pixels
            self._kq_pixels = None
            if self.palette is not None:  # Image.load then gives the new memory this image's palette
                self.palette.dirty = 1
        if self._kq_key is not None:  # like a palette's transparency, known once the PNG payload is read
            self.info["transparency"] = self._kq_key
            self._kq_key = None
        # A P image in a PNG payload brings its palette only with the pixels.
        if self._kq_palette is not None:
            self.palette, transparency = self._kq_palette
            if transparency is not None:
                self.info["transparency"] = transparency
            self._kq_palette = None


def _read_payload(fp: IO[bytes], header: KqHeader) -> bytes:
    """The payload from ``fp``'s position: at most one byte past it is read, so bytes after it are counted
    first (``KqFormatError`` naming how many); a short result means a truncated file, left to the caller."""
    left = bytes_left(fp)
    if left is not None and left > header.payload_length:
        raise KqFormatError(f"{left - header.payload_length} unexpected bytes after the payload CRC")
    return read_at_most(fp, header.payload_length + 1)


class KqDecoder(ImageFile.PyDecoder):
    """Reads the whole payload (streams + CRC) from the file, checks it and fills the image."""

    _pulls_fd = True

    def decode(self, buffer: bytes | Image.SupportsArrayInterface) -> tuple[int, int]:
        header, owner = self.args
        assert self.fd is not None
        payload = _read_payload(self.fd, header)
        if len(payload) < header.payload_length:
            if ImageFile.LOAD_TRUNCATED_IMAGES:
                return -1, 0
            raise KqFormatError(f"image file is truncated ({len(payload)} of {header.payload_length} payload bytes)")
        kq = decode_file(header, payload)
        img = kq.to_image()  # a new image of the header's mode and size, which _open gave this image
        if (img.mode, img.size) != (owner.mode, owner.size):  # (paste used to refuse this; the swap would not)
            raise KqFormatError(f"decoded {img.mode} {img.size}, the header says {owner.mode} {owner.size}")
        owner._kq_decoded(kq, img)  # its pixel memory becomes the file image's in load_end: no copy
        return -1, 0


_PILLOW_KEYWORDS = ("save_all", "append_images")  # what Pillow itself puts in encoderinfo
_LIKELY_MEANT = {"colors": "k", "colours": "k", "quality": "k", "n_colors": "k", "palette_size": "k"}


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    options = {key: im.encoderinfo[key] for key in SAVE_OPTIONS if key in im.encoderinfo}
    unknown = sorted(set(im.encoderinfo) - set(SAVE_OPTIONS) - set(_PILLOW_KEYWORDS))
    if unknown:  # Pillow ignores what a format does not know; "colors=16" would store every colour unasked
        hints = [f"{key}= is k= here" for key in unknown if key in _LIKELY_MEANT]
        warnings.warn(
            f"the KQ writer ignores {', '.join(unknown)}"
            + (f" ({'; '.join(hints)})" if hints else "")
            + f"; its options are {', '.join(SAVE_OPTIONS)}",
            UserWarning,
            stacklevel=3,
        )
    fp.write(encode_image(im, **options))


def _save_all(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    if getattr(im, "n_frames", 1) > 1 or im.encoderinfo.get("append_images"):
        raise ValueError("a .kq file holds one image: save frames one by one")
    _save(im, fp, filename)


def register() -> None:
    """Register the "KQ" format with Pillow (open, save, save_all, extension, MIME, decoder). Idempotent."""
    Image.register_open(FORMAT, KqImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_save_all(FORMAT, _save_all)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME)
    Image.register_decoder(_DECODER, KqDecoder)
