"""Palette files: read and write (m, 3) uint8 RGB palettes, the format chosen by the file extension.

    pal = read_palette("brand.gpl")           # (m, 3) uint8, 1 <= m <= 256, in file order
    write_palette("brand.act", pal)           # refuses to overwrite unless force=True

Formats
- ``.gpl`` GIMP palette (text, read and write): a first line "GIMP Palette", optional "Name:" and
  "Columns:" fields, "#" comments, blank lines, then one colour per line: "R G B" (integers 0..255,
  separated by white space) optionally followed by a name. Written as GIMP does: "%3d %3d %3d<TAB>name".
- ``.act`` Adobe Colour Table (binary, read and write): 256 RGB triples (768 bytes), optionally followed
  by a big-endian uint16 colour count and a uint16 transparent index (0xFFFF: none), 772 bytes in all.
  Written as 772 bytes when m < 256 (count m, no transparent index, unused triples zero), else 768 bytes.
  The transparent index is not part of the returned palette.
- ``.kq`` (read only): the centroid table of an rgb-mode file (a "P" file's palette; the alpha column
  of an RGBA table is dropped, a grey table becomes grey RGB colours). A file stored as a PNG payload
  gives its distinct colours when it has at most 256. "global"/"channel" files hold per-channel
  intensity levels, not colours: ``ValueError``.
- ``.png``, ``.gif`` (read only): the palette entries a palette ("P") image's pixels use, in index order
  (not unused padding entries, nor a transparent key colour).

Malformed files raise ``ValueError`` naming the file and what is wrong; a missing file raises the usual
``OSError``. Writes go through ``safe_write.atomic_output``: the file appears complete or not at all.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from .quantizer import check_palette
from .safe_write import atomic_output, check_output_path

__all__ = [
    "read_palette",
    "write_palette",
    "parse_gpl",
    "format_gpl",
    "parse_act",
    "format_act",
    "READ_EXTENSIONS",
    "WRITE_EXTENSIONS",
]

READ_EXTENSIONS = (".gpl", ".act", ".kq", ".png", ".gif")
WRITE_EXTENSIONS = (".gpl", ".act")
GPL_MAGIC = "GIMP Palette"
ACT_BYTES = 768  # 256 RGB triples
ACT_BYTES_COUNTED = 772  # ... plus colour count and transparent index, big-endian uint16 each
_NO_TRANSPARENT = 0xFFFF
_MAX_COLOURS = 256
_FIELD = re.compile(r"[A-Za-z_]\w*:")


def _fail(source: str, what: str) -> ValueError:
    return ValueError(f"{source}: {what}")


# -- GIMP .gpl -----------------------------------------------------------------------------------------


def parse_gpl(data: bytes, source: str = "<gpl bytes>") -> np.ndarray:
    """Colours of a GIMP palette file's bytes: (m, 3) uint8 in file order. ``source`` names it in errors."""
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    first = lines[0].lstrip("\ufeff").strip() if lines else ""
    if not first.startswith(GPL_MAGIC):
        raise _fail(source, f"bad header: a GIMP palette starts with {GPL_MAGIC!r}, got {first[:40]!r}")
    colours: list[tuple[int, int, int]] = []
    for number, line in enumerate(lines[1:], start=2):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if _FIELD.match(stripped):  # a "Name:" / "Columns:" field
            continue
        fields = stripped.split(maxsplit=3)
        # ASCII digits only: int() would also take "1_0", "+1" and non-ASCII digits such as "\u0663"
        rgb = tuple(int(v) for v in fields[:3] if v.isascii() and v.isdigit())
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise _fail(source, f"bad line {number}: expected 'R G B [name]' with integers 0..255, got {line[:60]!r}")
        colours.append(rgb)
        if len(colours) > _MAX_COLOURS:
            raise _fail(source, f"more than {_MAX_COLOURS} colours (line {number}); a palette here holds 1 to 256")
    if not colours:
        raise _fail(source, "no colours")
    return np.array(colours, dtype=np.uint8)


def format_gpl(palette: Any, name: str | None = None) -> bytes:
    """A GIMP palette file's bytes for an (m, 3) palette: header, optional Name, Columns, one line per colour
    named by its hex code. At most three lines precede the colours (Pillow's reader counts them)."""
    table = check_palette(palette)
    lines = [GPL_MAGIC]
    if name is not None:
        if not isinstance(name, str) or "\n" in name or "\r" in name:
            raise ValueError(f"name must be a one-line string, got {name!r}")
        lines.append(f"Name: {name}")
    lines.append(f"Columns: {min(16, table.shape[0])}")
    lines.append("#")
    lines.extend(f"{r:3d} {g:3d} {b:3d}\t{r:02x}{g:02x}{b:02x}" for r, g, b in table.tolist())
    return ("\n".join(lines) + "\n").encode("utf-8")


# -- Adobe .act ------------------------------------------------------------------------------------------


def parse_act(data: bytes, source: str = "<act bytes>") -> np.ndarray:
    """Colours of an Adobe Colour Table's bytes (768 or 772): (m, 3) uint8; m is the stored count if any."""
    if len(data) not in (ACT_BYTES, ACT_BYTES_COUNTED):
        raise _fail(source, f"wrong size: {len(data)} bytes (an .act file has {ACT_BYTES} or {ACT_BYTES_COUNTED})")
    table = np.frombuffer(data[:ACT_BYTES], dtype=np.uint8).reshape(_MAX_COLOURS, 3)
    count = _MAX_COLOURS
    if len(data) == ACT_BYTES_COUNTED:
        count, _transparent = struct.unpack(">HH", data[ACT_BYTES:])
        if count == 0:
            raise _fail(source, "no colours (the colour count is 0)")
        if count > _MAX_COLOURS:
            raise _fail(source, f"more than {_MAX_COLOURS} colours: the colour count is {count}")
    return table[:count].copy()


def format_act(palette: Any) -> bytes:
    """An Adobe Colour Table's bytes for an (m, 3) palette: 772 bytes (with count) when m < 256, else 768."""
    table = check_palette(palette)
    m = table.shape[0]
    body = table.tobytes() + bytes(ACT_BYTES - 3 * m)
    return body if m == _MAX_COLOURS else body + struct.pack(">HH", m, _NO_TRANSPARENT)


# -- palettes inside images ------------------------------------------------------------------------------


def _grey_to_rgb(table: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(table[:, :1], 3, axis=1))


def _kq_palette(path: Path) -> np.ndarray:
    """The colour table of a ``.kq`` file (see the module doc), through the public decoder API."""
    from PIL import Image

    from .container import KqFormatError
    from .decoder import kq_info, read_kq
    from .pixels import few_colours

    try:
        info = kq_info(path)
        if info.payload == "native" and info.quant_mode != "rgb":
            raise _fail(
                str(path),
                f"a {info.quant_mode}-mode .kq file holds per-channel intensity tables, not a colour palette "
                "(only rgb-mode files have one)",
            )
        kq = read_kq(path)
    except KqFormatError as exc:
        raise _fail(str(path), f"not a valid .kq file: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise _fail(str(path), f"refused: {exc}") from None
    if kq.centroids is None:  # a PNG payload: its distinct colours, when few enough to be a palette
        img = kq.to_image()
        rgb = np.asarray(img.convert("RGB"))
        found = few_colours(rgb)
        if found is None:
            raise _fail(str(path), "stored as a PNG payload with more than 256 colours: it has no palette")
        return found[0]
    table = np.asarray(kq.centroids, dtype=np.uint8)
    if table.shape[0] == 0:
        raise _fail(str(path), "no colours")
    if kq.mode in _OTHER_SPACES:  # rows in the image's own colour space: the colours they show, in RGB
        bands = len(kq.mode) if kq.mode != "YCbCr" else 3
        rows = np.ascontiguousarray(table[:, :bands])
        return np.asarray(Image.frombytes(kq.mode, (len(rows), 1), rows.tobytes()).convert("RGB"))[0].copy()
    if table.shape[1] >= 3:
        return np.ascontiguousarray(table[:, :3])  # RGB, or RGBA rows whose alpha is dropped
    return _grey_to_rgb(table)  # L (or LA with alpha quantized): grey levels


_OTHER_SPACES = ("CMYK", "YCbCr", "LAB", "HSV")


def _image_palette(path: Path) -> np.ndarray:
    """The used palette entries of a palette PNG or GIF (first frame), in index order: (m, 3) uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "PA"):
                raise _fail(
                    str(path),
                    f"image mode {img.mode!r} has no palette (learn one with `kquant palette learn` or learn_palette)",
                )
            entries = np.array(img.getpalette("RGB") or [], dtype=np.uint8).reshape(-1, 3)
            # Only the entries the pixels use, in index order: not a GIF's padding up to a power of two, nor
            # the transparent key colour of a PNG/GIF (a colour no visible pixel has).
            used = np.unique(np.asarray(img.convert("P") if img.mode == "PA" else img))
            transparent = img.info.get("transparency")
            if isinstance(transparent, int):
                used = used[used != transparent]
            entries = entries[used[used < len(entries)]]
    except (UnidentifiedImageError, SyntaxError) as exc:
        raise _fail(str(path), f"not a readable image: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise _fail(str(path), f"refused: {exc}") from None
    if not len(entries):
        raise _fail(str(path), "no colours")
    return entries[:_MAX_COLOURS]


# -- public entry points -----------------------------------------------------------------------------------


def _extension(path: Path, allowed: tuple[str, ...], verb: str) -> str:
    ext = path.suffix.lower()
    if ext not in allowed:
        raise ValueError(
            f"{path}: cannot {verb} palette format {ext or '(no extension)'!r}; use one of {', '.join(allowed)}"
        )
    return ext


def read_palette(path: str | os.PathLike) -> np.ndarray:
    """Read a palette file: (m, 3) uint8 RGB colours, 1 <= m <= 256, in file order.

    The format follows the extension: ``.gpl``, ``.act``, ``.kq``, ``.png``, ``.gif`` (module doc).
    Raises ``ValueError`` naming the file for an unknown extension or a malformed file, ``OSError`` when
    it cannot be read.
    """
    p = Path(path)
    ext = _extension(p, READ_EXTENSIONS, "read")
    if ext == ".kq":
        return _kq_palette(p)
    if ext in (".png", ".gif"):
        return _image_palette(p)
    data = p.read_bytes()
    return parse_gpl(data, str(p)) if ext == ".gpl" else parse_act(data, str(p))


def write_palette(path: str | os.PathLike, palette: Any, *, name: str | None = None, force: bool = False) -> None:
    """Write an (m, 3) palette (integers 0..255, 1 <= m <= 256) as ``.gpl`` or ``.act`` (by extension).

    name : the GIMP palette's "Name:" field (``.gpl`` only; an ``.act`` file has no name and ignores it).
    force : overwrite an existing file; otherwise ``safe_write.OutputExistsError`` (a ``FileExistsError``).
    The file is written atomically: complete or not at all.
    """
    p = Path(path)
    ext = _extension(p, WRITE_EXTENSIONS, "write")
    data = format_gpl(palette, name) if ext == ".gpl" else format_act(palette)
    check_output_path(p, force=force)
    with atomic_output(p, force=force) as fh:
        fh.write(data)
