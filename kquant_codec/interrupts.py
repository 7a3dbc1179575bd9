"""Ctrl-C (and SIGTERM) that is not lost inside numba.

A SIGINT whose KeyboardInterrupt is raised while a numba kernel is returning comes out of the call as a
``SystemError`` ("... returned a result with an exception set"), which code catching ``Exception`` would
take for an ordinary failure. ``noting_sigint`` installs a SIGINT handler that raises KeyboardInterrupt as
usual and also notes the signal, so that such an error can be recognised (``interrupt_seen``) and reported
as the interruption it is. A caller with its own handler for another signal (``kquant batch``'s SIGTERM)
notes it with ``note_interrupt``. ``signals_deferred`` holds SIGINT and SIGTERM back across a few lines that
must not be cut in half.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["noting_sigint", "interrupt_seen", "note_interrupt", "signals_deferred"]

_seen: list[str | None] = [None]


def _handler(signum: int, frame: Any) -> None:
    _seen[0] = "SIGINT"
    raise KeyboardInterrupt


def note_interrupt(name: str) -> None:
    """Note an interrupting signal (e.g. "SIGTERM") that the caller's own handler is about to raise for."""
    _seen[0] = name


def interrupt_seen() -> str | None:
    """The interrupting signal ("SIGINT", or one given to ``note_interrupt``) that came since the innermost
    ``noting_sigint`` began, or None."""
    return _seen[0]


@contextlib.contextmanager
def noting_sigint() -> Iterator[None]:
    """While inside: SIGINT raises KeyboardInterrupt (as Python's default does) and is noted.

    Does nothing when SIGINT is neither at Python's default handler nor already noted (ignored by a background
    job, or handled by the caller), or off the main thread, where handlers cannot be set. Nests.
    """
    _seen[0] = None
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


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """While inside, a SIGINT or SIGTERM handled in Python waits, and is raised again on leaving (its handler then
    runs as usual). For bookkeeping that must not be cut in half: ``kquant batch`` counted a file as converted and
    was interrupted before recording it, so the next run converted it again. (Blocking the signals with
    ``pthread_sigmask`` would not do: the pool's threads would still take them.) Main thread only; a signal that
    is ignored or at its default action is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous: list[tuple[int, Any]] = []
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(signum)
            if callable(handler):
                previous.append((signum, handler))  # (noted first: a signal from here on finds it restored)
                signal.signal(signum, lambda number, frame: held.append(number))
        yield
    finally:
        _restore(previous)
    if held:  # the first to come (its handler raises; one interruption is enough)
        signal.raise_signal(held[0])


def _restore(handlers: list[tuple[int, Any]]) -> None:
    """Put the handlers back, each in the ``finally`` of the one before: a real signal arriving half-way (its
    handler back in place already) raises only after every handler is back, so none stays a placeholder."""
    if not handlers:
        return
    try:
        signal.signal(*handlers[0])
    finally:
        _restore(handlers[1:])
