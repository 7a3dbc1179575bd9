"""Handing the C heap's free memory back to the system, so large encodes keep a low peak.

glibc raises its mmap threshold (up to 32 MiB) each time a large mapped block is freed; after that, blocks
below it come from the heap, and freed heap memory stays in the process until the heap is trimmed. A 24 MP
encode frees tens of MB between its phases (the colour count, the fit, the labelling); trimming at those
points keeps them out of the next phase's peak. ``malloc_trim`` takes well under a millisecond when there
is little to hand back.
"""

from __future__ import annotations

__all__ = ["release_free_memory"]

_TRIM: list = []  # [malloc_trim] or [None] once looked up (tests replace it)


def release_free_memory() -> None:
    """Hand the heap's free pages back to the system (glibc ``malloc_trim(0)``; a no-op elsewhere)."""
    if not _TRIM:
        try:
            import ctypes

            _TRIM.append(ctypes.CDLL(None).malloc_trim)
        except (OSError, AttributeError):  # not glibc
            _TRIM.append(None)
    if _TRIM[0] is not None:
        _TRIM[0](0)
