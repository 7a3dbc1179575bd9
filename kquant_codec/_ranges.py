"""Running a kernel over ranges of rows on several threads at once, with a pool of helper threads per process.

``run_ranges(fn, n, *args)`` calls ``fn(*args, start, stop)`` over ranges covering 0..n-1, on up to
``NUMBA_NUM_THREADS`` threads (the environment variable numba reads; default: the CPU count), and returns the
results in range order. The kernels it runs release the GIL and write disjoint parts of their outputs, so the
results do not depend on the number of threads. Used by the rgb learner's kernels (``_rgb_kernels``).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["run_ranges", "MIN_RANGE"]

MIN_RANGE = 1 << 14  # fewest points per thread task: below this, thread hand-off costs more than it saves


def _threads() -> int:
    """Threads in all, the caller's included: ``NUMBA_NUM_THREADS``, else the CPU count."""
    return max(1, int(os.environ.get("NUMBA_NUM_THREADS") or os.cpu_count() or 1))


def run_ranges(fn: Callable, n: int, *args: Any, min_range: int = MIN_RANGE) -> list:
    """``fn(*args, start, stop)`` over ranges covering 0..n-1, on up to NUMBA_NUM_THREADS threads (one per
    ``min_range`` items at most); the results in range order.

    The calling thread works through the ranges too, next to helper threads from a pool kept per process (a
    k=256 fit makes ~80 such calls: a new pool per call made six small fits about 12% slower). The ranges
    are claimed one by one, so a helper busy elsewhere (another caller thread) only means less help: the
    caller never waits for a helper that has not started, and then does every range itself.
    """
    threads = min(_threads(), max(1, n // min_range))
    if threads == 1:
        return [fn(*args, 0, n)]
    parts = 4 * threads  # several ranges per thread even out uneven ones (pruned searches vary in cost)
    bounds = np.linspace(0, n, parts + 1).astype(np.int64)
    ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
    results: list = [None] * len(ranges)
    claims = itertools.count()  # next() on it is atomic under the GIL

    def work() -> None:
        while (i := next(claims)) < len(ranges):
            results[i] = fn(*args, *ranges[i])

    pool = _helper_pool()
    helpers = [_HelperTask(work) for _ in range(threads - 1)]  # known before queued: none can be orphaned
    error: BaseException | None = None
    try:
        for helper in helpers:
            pool.put(helper)
        work()
    except BaseException as exc:  # (Ctrl-C included) the helpers still write our arrays: wait for them first
        error = exc
    for helper in helpers:
        if helper.cancel():  # never started
            continue
        try:
            helper.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error
    return results


class _HelperTask:
    """One callable handed to the helper threads: ``cancel()`` before it starts, ``result()`` after."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self._value: Any = None
        self._lock = threading.Lock()
        self._state = "pending"  # -> "running" or "cancelled"
        self._done = threading.Event()
        self._error: BaseException | None = None

    def cancel(self) -> bool:
        with self._lock:
            if self._state != "pending":
                return False
            self._state = "cancelled"
            return True

    def run(self) -> None:
        with self._lock:
            if self._state != "pending":
                return
            self._state = "running"
        try:
            self._value = self._fn()
        except BaseException as exc:  # handed to result()
            self._error = exc
        finally:
            self._done.set()

    def result(self) -> Any:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._value


class _HelperPool:
    """``size`` daemon threads running submitted tasks. Daemon, unlike ThreadPoolExecutor's: an exception
    (Ctrl-C, SIGTERM) landing while an executor starts a thread can leave the thread unknown to the
    executor's exit hook, and the process then waits for it forever at exit (seen in ``kquant batch``
    workers). A daemon thread is never waited for, and ours are idle whenever no caller waits for them."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any]) -> _HelperTask:
        task = _HelperTask(fn)
        self.put(task)
        return task

    def put(self, task: _HelperTask) -> None:
        self._queue.put(task)
        with self._lock:
            if len(self._threads) < self._size:
                thread = threading.Thread(target=self._serve, name=f"kq-ranges_{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def _serve(self) -> None:
        while True:
            self._queue.get().run()


_HELPERS: list = []  # [(pid, _HelperPool)]
_HELPERS_LOCK = threading.Lock()


def _helper_pool() -> _HelperPool:
    """This process's pool of NUMBA_NUM_THREADS - 1 helper threads (a forked child makes its own: its copy of
    the parent's pool has no threads)."""
    with _HELPERS_LOCK:
        if not _HELPERS or _HELPERS[0][0] != os.getpid():
            _HELPERS[:] = [(os.getpid(), _HelperPool(max(1, _threads() - 1)))]
        return _HELPERS[0][1]


def _after_fork_in_child() -> None:
    global _HELPERS_LOCK
    _HELPERS_LOCK = threading.Lock()  # (a fork while another thread held it would leave it locked for good)
    _HELPERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
