"""Write files so that they appear complete or not at all: a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["OutputExistsError", "atomic_output", "check_output_path"]


class OutputExistsError(FileExistsError):
    """The output path exists and overwriting was not asked for, or it is the input itself."""


def check_output_path(output: str | os.PathLike, *, force: bool = False, inputs: tuple = ()) -> Path:
    """Refuse an output that is one of ``inputs``, or that exists when ``force`` is false."""
    out = Path(output)
    for src in inputs:
        src = Path(src)
        same = out.resolve() == src.resolve() or (out.exists() and src.exists() and os.path.samefile(out, src))
        if same:
            raise OutputExistsError(f"refusing to write {out}: it is the input file")
    if out.is_dir():  # before "exists": --force would not help
        raise OutputExistsError(f"{out} is a directory")
    _refuse_special(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists (use --force, or force=True in Python, to overwrite)")
    return out


def _refuse_special(path: Path) -> None:
    """A device, FIFO or socket cannot be replaced by renaming a finished file over it (that would swap
    /dev/null for a regular file): refuse it, --force or not."""
    if path.exists() and not path.is_file() and not path.is_dir():
        raise OutputExistsError(f"{path} is not a regular file (a device, FIFO or socket); write to a file")


def _temp_prefix(name: str) -> str:
    """``.<name>.`` for mkstemp, shortened in the middle for names near the 255-byte limit (the temporary name
    adds 14 characters); the end, with the extension, is kept so that batch can still recognise it."""
    raw = os.fsencode(name)
    if len(raw) > 241:  # cut on bytes; a character split at a cut is dropped
        name = raw[:100].decode(errors="ignore") + "~" + raw[-140:].decode(errors="ignore")
    return f".{name}."


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, force: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file whose contents replace ``path`` only when the block finishes without error.

    The data go to a hidden temporary file in the target's folder (same file system, so the final
    ``os.replace`` is atomic), flushed to disk before the rename. On any exception, KeyboardInterrupt
    included, the temporary file is removed and ``path`` is untouched. A process killed mid-write leaves
    at most a stray ``.<name>.*.tmp`` file, never a truncated ``path``.
    """
    target = Path(path)
    _refuse_special(target)
    try:  # an overwritten file keeps its permissions (0600 stays 0600)
        file_mode = stat.S_IMODE(os.stat(target).st_mode) if target.is_file() else _default_file_mode()
    except OSError:
        file_mode = _default_file_mode()
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target.name), suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), file_mode)  # mkstemp makes 0600; else the usual 0666 & ~umask
        if not force and target.exists():
            raise OutputExistsError(f"{target} appeared while writing (use --force, or force=True, to overwrite)")
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
