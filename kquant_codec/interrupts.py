"""Ctrl-C that is not lost inside numba.

A SIGINT whose KeyboardInterrupt is raised while a numba kernel is returning comes out of the call as a
``SystemError`` ("... returned a result with an exception set"), which code catching ``Exception`` would
take for an ordinary failure. ``noting_sigint`` installs a SIGINT handler that raises KeyboardInterrupt as
usual and also notes the signal, so that such an error can be recognised (``sigint_seen``) and reported as
the interruption it is.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["noting_sigint", "sigint_seen"]

_seen = [False]


def _handler(signum: int, frame: Any) -> None:
    _seen[0] = True
    raise KeyboardInterrupt


def sigint_seen() -> bool:
    """Whether SIGINT came since the innermost ``noting_sigint`` began."""
    return _seen[0]


@contextlib.contextmanager
def noting_sigint() -> Iterator[None]:
    """While inside: SIGINT raises KeyboardInterrupt (as Python's default does) and is noted.

    Does nothing when SIGINT is neither at Python's default handler nor already noted (ignored by a background
    job, or handled by the caller), or off the main thread, where handlers cannot be set. Nests.
    """
    _seen[0] = False
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler and previous is not _handler:
        yield
        return
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
