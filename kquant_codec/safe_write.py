"""Write files so that they appear complete or not at all: a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
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
    if out.exists() and not force:
        raise OutputExistsError(f"{out} exists (use --force to overwrite)")
    return out


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
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), _default_file_mode())  # mkstemp makes 0600; give the usual 0666 & ~umask
        if not force and target.exists():
            raise OutputExistsError(f"{target} appeared while writing (use --force to overwrite)")
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
