"""Encode every image under a folder to ``.kq`` (or decode every ``.kq`` to PNG), in parallel, resumably.

    from kquant_codec.batch import run_batch
    summary = run_batch("photos", "photos-kq", k=64, jobs=0)      # 0: one process per core
    print(summary.encoded, summary.failed, summary.ratio)

Each output is byte-identical to what ``kquant encode IN OUT -k K --mode M --seed S`` (or ``kquant decode IN
OUT.png``) writes for that file. The work per file (open, encode, atomic write) runs in "spawn" worker
processes, in this process when ``jobs == 1``, or on a Dask cluster (``scheduler="tcp://host:8786"``).

Output names: ``a/b.png -> OUTPUT_DIR/a/b.kq`` (``a/b.kq -> a/b.png`` with ``decode``). When several inputs
of one folder would get the same output name (``x.png`` and ``x.jpg``; compared without case, for
case-insensitive file systems), each of them keeps its whole name instead: ``x.png.kq`` and ``x.jpg.kq``.
A clash that remains after that fails those files; nothing is ever overwritten by another input's output.

Inputs: every file whose extension Pillow can open (``Image.registered_extensions()``; ``.kq`` only with
``decode``), recursing; hidden files and folders (names starting with ".") are left out. A file with such
an extension that Pillow cannot identify is skipped and reported as not an image; one that Pillow
identifies but cannot read (truncated, corrupt, too large) is a failure. OUTPUT_DIR may lie inside
INPUT_DIR (it is then never read); INPUT_DIR inside OUTPUT_DIR (or the same folder) is refused.

Resuming: ``OUTPUT_DIR/.kquant-batch-state.jsonl`` records, for every output written, the parameters, the
input's size and modification time and the output's size and modification time. A later run skips an
output whose record matches all of those (and, for ``.kq``, whose header reads back); anything else is
encoded again, saying why. Each output about to be written is first recorded as pending; an existing
output file with no record at all was not written by a run of ours (say, a user's original PNG when decoding
back into its folder): that file fails with a message and is left untouched. ``force=True`` encodes
everything again and overwrites such files. Outputs are written through a
temporary file and a rename, so an interrupted or killed run leaves no partial output; stray temporary
files of ours (``.<name>.<random>.tmp``) are removed by the next run. A lock file stops two runs from
writing into one OUTPUT_DIR at once (POSIX only).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import kquant_codec as kq
from kquant_codec.interrupts import interrupt_seen, note_interrupt, noting_sigint, signals_deferred
from kquant_codec.quantizer import check_seed
from kquant_codec.safe_write import atomic_output

__all__ = ["BatchError", "BatchSummary", "FileResult", "run_batch", "SUMMARY_NAME", "STATE_NAME"]

SUMMARY_NAME = "kquant-batch.json"
STATE_NAME = ".kquant-batch-state.jsonl"
LOCK_NAME = ".kquant-batch.lock"
MODES = ("rgb", "global", "channel")
# A file whose worker process died this many times (each time with it in flight) is given up as failed.
MAX_ATTEMPTS = 2
# After Ctrl-C, how long running workers get to stop (they are interrupted too) before they are terminated.
STOP_GRACE_SECONDS = 30.0
# How long to try reaching a Dask scheduler before giving up (a distributed time string).
DASK_CONNECT_TIMEOUT = "20s"
# mkstemp's names in atomic_output: "." + target name + "." + 8 random characters + ".tmp".
_TMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


class BatchError(Exception):
    """A problem with the run as a whole (not one file). ``kind``: "usage", "input" or "output"."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class _Task:
    """One file's work, sent to a worker: absolute paths and the encoder options."""

    source: str
    output: str
    rel: str  # the input, relative to INPUT_DIR (posix separators): the name used in messages
    out_rel: str
    decode: bool
    options: tuple[tuple[str, Any], ...]  # keyword arguments of encode_image
    palette: np.ndarray | None = None


@dataclass
class FileResult:
    """What a worker reports for one file.

    path : the input, relative to INPUT_DIR. output : the output, relative to OUTPUT_DIR. status : "done",
    "failed", "not_image" or "interrupted". bytes_in, bytes_out : file sizes in bytes (bytes_out 0 unless
    done). pixels : width * height (0 when the image could not be read). seconds : wall time of the work.
    error : one line, None unless failed or not_image.
    """

    path: str
    output: str
    status: str
    bytes_in: int = 0
    bytes_out: int = 0
    pixels: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass
class BatchSummary:
    """The outcome of a batch run. Sizes in bytes, times in seconds, megapixels = 1e6 pixels.

    found : input files with an image extension other than ``.kq`` (only ``.kq`` with decode). encoded :
    outputs written by this run (decoded, with decode). skipped : outputs already complete from an earlier
    run with the same parameters. failed : files that could not be converted (``failures``: path and error
    of each). not_images : inputs with an image extension that Pillow could not identify. ignored : the
    other files (hidden ones not counted). bytes_in / bytes_out / megapixels : of the files encoded by this
    run. redone : why existing outputs were made again (reason -> count). interrupted : None, "SIGINT" or "SIGTERM";
    not_started : files left undone by an interruption.
    """

    input_dir: str
    output_dir: str
    parameters: dict[str, Any]
    jobs: int | None  # worker processes (None on a Dask cluster)
    scheduler: str | None
    found: int = 0
    encoded: int = 0
    skipped: int = 0
    failed: int = 0
    not_images: list[str] = field(default_factory=list)
    ignored: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    megapixels: float = 0.0
    wall_seconds: float = 0.0
    redone: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    interrupted: str | None = None
    not_started: int = 0
    summary_path: str | None = None

    @property
    def ratio(self) -> float:
        """bytes_in / bytes_out of the files written (0.0 when none)."""
        return self.bytes_in / self.bytes_out if self.bytes_out else 0.0

    @property
    def megapixels_per_second(self) -> float:
        return self.megapixels / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def images_per_second(self) -> float:
        return self.encoded / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        facts = asdict(self)
        facts["ratio"] = round(self.ratio, 4)
        facts["megapixels"] = round(self.megapixels, 4)
        facts["wall_seconds"] = round(self.wall_seconds, 3)
        facts["megapixels_per_second"] = round(self.megapixels_per_second, 4)
        facts["images_per_second"] = round(self.images_per_second, 4)
        return facts

    def lines(self) -> list[str]:
        """The summary as a few human-readable lines."""
        verb = "decoded" if self.parameters.get("direction") == "decode" else "encoded"
        out = [
            f"{self.found} files found, {self.encoded} {verb}, {self.skipped} skipped (already done), "
            f"{self.failed} failed",
            f"{self.bytes_in} bytes in, {self.bytes_out} bytes out, ratio {self.ratio:.2f}x, "
            f"{self.wall_seconds:.2f} s, {self.megapixels:.1f} MP, {self.megapixels_per_second:.2f} MP/s, "
            f"{self.images_per_second:.2f} images/s",
        ]
        if self.not_images or self.ignored:
            other = "not .kq" if verb == "decoded" else "no image extension, or .kq"
            out.append(f"{len(self.not_images)} not images (skipped), {self.ignored} other files ({other})")
        if self.interrupted:
            out.append(f"interrupted ({self.interrupted}): {self.not_started} files not done")
        if self.summary_path:
            out.append(f"summary: {self.summary_path}")
        return out


# --- the work on one file (runs in a worker) --------------------------------------------------------------


def _encode_bytes(task: _Task) -> tuple[bytes, int]:
    """Open ``task.source`` and return (output bytes, pixels), exactly as ``kquant encode``/``decode`` do."""
    from PIL import Image

    from kquant_codec.pixels import for_png, frames_problem

    with Image.open(task.source) as img:
        img.load()
        pixels = img.size[0] * img.size[1]
        if task.decode:
            buf = io.BytesIO()
            for_png(img).save(buf, format="PNG", optimize=True)
            return buf.getvalue(), pixels
        problem = frames_problem(img)
        if problem is not None:
            raise ValueError(problem)
        options = dict(task.options)
        if task.palette is not None:  # as `kquant encode --palette`: grey, CMYK, ... images converted to fit it
            options["palette"] = task.palette
            return kq.encode_image(kq.image_for_palette(img, task.palette), **options), pixels
        return kq.encode_image(img, **options), pixels


def _process(task: _Task) -> FileResult:
    """Open, encode, write atomically; every failure becomes a one-line error in the result."""
    from PIL import Image, UnidentifiedImageError

    start = time.perf_counter()
    result = FileResult(task.rel, task.out_rel, "failed")
    try:
        result.bytes_in = os.stat(task.source).st_size
        data, result.pixels = _encode_bytes(task)
        os.makedirs(os.path.dirname(task.output), exist_ok=True)
        with atomic_output(task.output, force=True) as fh:
            fh.write(data)
        result.bytes_out = len(data)
        result.status = "done"
    except UnidentifiedImageError:
        if task.decode:
            result.error = "not a valid .kq file"
        else:
            result.status = "not_image"
            result.error = "not an image format Pillow can read"
    except Image.DecompressionBombError as exc:
        result.error = str(exc)
    except Exception as exc:  # one bad file must not stop the run: report it in one line
        text = " ".join(str(exc).split()) or "(no message)"
        result.error = f"{type(exc).__name__}: {text}"
    result.seconds = time.perf_counter() - start
    return result


_INTERRUPTIBLE = False  # in a pool worker: whether SIGINT may stop the file being converted
_STOPPING: Any = None  # in a pool worker: the run's stop event (set by the parent on Ctrl-C or SIGTERM)


def _init_pool_worker(interruptible: bool, stopping: Any = None) -> None:
    """Pool workers ignore SIGINT while idle (an idle worker killed by Ctrl-C would break the pool).

    interruptible : whether SIGINT stops a file mid-way; false when the parent ignores SIGINT (a job
    started in the background), so that a Ctrl-C meant for others does not cost us files.
    """
    global _INTERRUPTIBLE, _STOPPING
    _INTERRUPTIBLE = interruptible
    _STOPPING = stopping
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Import now, while SIGINT is ignored, what converting a file would import on first use: a Ctrl-C landing
    # inside the import machinery comes out as "Exception ignored" tracebacks instead of a clean stop.
    from kquant_codec import _rgb_kernels, container, kmeans_colour, label_coder, predictive_coder  # noqa: F401

    with contextlib.suppress(Exception):  # no usable kernels: the first file reports it
        kq.kernel_backend()
    if hasattr(signal, "pthread_sigmask"):  # started with SIGINT blocked (_submit): a pending one is dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _submit(executor: ProcessPoolExecutor, inflight: dict, key: Any, fn: Callable, *args: Any) -> None:
    """``inflight[executor.submit(fn, *args)] = key``, with SIGINT blocked meanwhile: submit() may start a
    worker, and a Ctrl-C to the process group that lands while it starts up would kill it with a traceback
    before its initializer makes it ignore SIGINT. The blocked mask survives fork and exec, so the worker
    starts with SIGINT held back until its initializer ignores it. Ours stays pending and is raised when the
    mask is restored, after the future is recorded in ``inflight`` (so the interrupt handling sees it)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        inflight[executor.submit(fn, *args)] = key
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        inflight[executor.submit(fn, *args)] = key
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _pool_process(task: _Task) -> FileResult:
    """``_process`` in a pool worker: SIGINT interrupts the file (its temporary file is removed).

    A file during which SIGINT came is reported interrupted even when the KeyboardInterrupt surfaced as
    another error (``interrupts``: inside numba it becomes a ``SystemError``, which ``_process`` reports).
    """
    if not _INTERRUPTIBLE:
        return _process(task)
    interrupted = FileResult(task.rel, task.out_rel, "interrupted", error="interrupted by SIGINT")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        # A stop that came while this worker was still starting (ignoring SIGINT) found nothing to interrupt:
        # the event tells. Checked after the handler is set, so a later SIGINT interrupts the file instead.
        if _STOPPING is not None and _STOPPING.is_set():
            return interrupted
        with noting_sigint():
            result = _process(task)
            if interrupt_seen() and result.status != "done":
                return interrupted
            return result
    except KeyboardInterrupt:
        return interrupted
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


# --- finding the files ---------------------------------------------------------------------------------


def _image_extensions() -> set[str]:
    """Lower-case extensions of formats Pillow can open (the "KQ" plugin included)."""
    from PIL import Image

    Image.init()
    openable = getattr(Image, "OPEN", None)
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if openable is None or fmt in openable}


def _same_dir(a: str, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _walk(input_dir: Path, output_dir: Path, extensions: set[str]) -> tuple[list[str], int]:
    """Relative posix paths of the candidate inputs (sorted), and the count of other files."""
    found: list[str] = []
    ignored = 0
    for root, dirs, files in os.walk(input_dir):
        # Never read OUTPUT_DIR, even when it lies inside INPUT_DIR; hidden folders are not ours to read.
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not _same_dir(os.path.join(root, d), output_dir))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if os.path.splitext(name)[1].lower() in extensions:
                found.append(Path(root, name).relative_to(input_dir).as_posix())
            else:
                ignored += 1
    return found, ignored


def _output_names(rels: list[str], suffix: str) -> tuple[dict[str, str], dict[str, str]]:
    """Map each input to its output path (relative); inputs that would clash keep their whole name.

    Returns (input -> output, input -> error for inputs whose output name still clashes).
    """

    def key(rel: str) -> str:
        return rel.casefold()  # x.KQ and x.kq are one file on case-insensitive file systems

    names = {rel: str(Path(rel).with_suffix(suffix).as_posix()) for rel in rels}
    counts = Counter(key(out) for out in names.values())
    for rel, out in names.items():
        if counts[key(out)] > 1:
            names[rel] = rel + suffix
    owners: dict[str, list[str]] = {}
    for rel, out in names.items():
        owners.setdefault(key(out), []).append(rel)
    clashes = {}
    for group in owners.values():
        if len(group) > 1:
            for rel in group:
                others = ", ".join(o for o in group if o != rel)
                clashes[rel] = f"output name {names[rel]} clashes with the output of {others}; not written"
    return names, clashes


# --- resuming --------------------------------------------------------------------------------------------


def _load_state(path: Path) -> dict[str, dict[str, Any]]:
    """The latest record for each output (relative path), from the JSON-lines state file."""
    records: dict[str, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        return records
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a killed run
        if isinstance(rec, dict) and isinstance(rec.get("out"), str):
            records[rec["out"]] = rec
    return records


def _stat_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _redo_reason(task: _Task, rec: dict[str, Any] | None, params: dict[str, Any]) -> str | None:
    """None when the output is complete and made from this input with these parameters, else why not."""
    out = _stat_key(task.output)
    if out is None:
        return "new" if rec is None or rec.get("pending") or rec.get("failed") else "output deleted"
    if rec is None:
        return NOT_OURS
    if rec.get("failed"):  # the output there is an earlier one, which the last run failed to replace
        return "the last run failed to convert it"
    if rec.get("pending"):
        return "left unfinished by an interrupted run"
    if rec.get("params") != params:
        changed = sorted(k for k in set(params) | set(rec.get("params") or {}) if params.get(k) != rec["params"].get(k))
        return "made with other parameters (" + ", ".join(changed) + ")"
    if rec.get("src") != task.rel or tuple(rec.get("src_stat") or ()) != _stat_key(task.source):
        return "input changed"
    if tuple(rec.get("out_stat") or ()) != out:
        return "output changed"
    if not task.decode:
        try:
            info = kq.kq_info(task.output)
        except (OSError, ValueError):
            return "output unreadable"
        if info.file_bytes != out[0]:
            return "output unreadable"
    return None


# An output file that no run of ours announced: never overwritten without --force (it may be a user's file,
# e.g. the original PNGs when decoding back into the folder they came from).
NOT_OURS = "exists and was not written by kquant batch (use --force to overwrite it)"


class _State:
    """Appends one JSON line per output written, so an interrupted run keeps what it finished.

    Before any work starts, every output about to be written gets a "pending" line: an existing output with
    no line at all was not made by a run of ours, and is left alone.
    """

    def __init__(self, path: Path, records: dict[str, dict[str, Any]]) -> None:
        self.path = path
        self.records = records
        self._fh = open(path, "a", encoding="utf-8")  # closed by close()

    def add(self, task: _Task, params: dict[str, Any]) -> None:
        rec = {
            "out": task.out_rel,
            "src": task.rel,
            "params": params,
            "src_stat": _stat_key(task.source),
            "out_stat": _stat_key(task.output),
        }
        self.records[task.out_rel] = rec
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def add_failed(self, task: _Task) -> None:
        """The conversion failed: what stays at the output (if anything) is an earlier run's, now out of date."""
        rec = {"out": task.out_rel, "src": task.rel, "failed": True}
        self.records[task.out_rel] = rec
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def add_pending(self, tasks: list[_Task]) -> None:
        for task in tasks:
            rec = {"out": task.out_rel, "src": task.rel, "pending": True}
            self.records[task.out_rel] = rec
            self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())  # on disk before any output is: a crash cannot orphan an output

    def close(self, output_dir: Path) -> None:
        """Rewrite the file with one line per output that still exists (drops superseded lines)."""
        self._fh.close()
        keep = [rec for out, rec in sorted(self.records.items()) if (output_dir / out).exists()]
        with atomic_output(self.path, force=True) as fh:
            fh.write("".join(json.dumps(rec) + "\n" for rec in keep).encode())


@contextlib.contextmanager
def _locked(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on OUTPUT_DIR for the run (POSIX); refuse if another run holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with open(output_dir / LOCK_NAME, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BatchError(f"another kquant batch is writing into {output_dir}", "output") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_stale_temporaries(output_dir: Path) -> int:
    """Delete ``.<name>.<random>.tmp`` files left by killed runs, for our outputs and state/summary files."""
    removed = 0
    ours = (SUMMARY_NAME, STATE_NAME)
    for root, _dirs, files in os.walk(output_dir):
        for name in files:
            match = _TMP_RE.match(name)
            if match and (match["target"].lower().endswith((".kq", ".png")) or match["target"] in ours):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(root, name))
                    removed += 1
    return removed


# --- running the work --------------------------------------------------------------------------------------


class _Terminated(KeyboardInterrupt):
    """SIGTERM, taken through the same orderly stop as Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        note_interrupt("SIGTERM")  # (raised inside numba, it may come out as a SystemError: see _run_serial)
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_serial(tasks: Iterable[_Task], report: Callable[[_Task, FileResult], None]) -> None:
    for task in tasks:
        with noting_sigint():
            result = _process(task)
            seen = interrupt_seen()
            if seen and result.status != "done":  # a Ctrl-C or SIGTERM that numba turned into an error
                raise _Terminated() if seen == "SIGTERM" else KeyboardInterrupt
        report(task, result)


def _stop_workers(before: set[int]) -> None:
    """Interrupt the pool's worker processes (children started after ``before`` was taken)."""
    for child in multiprocessing.active_children():
        if child.pid is not None and child.pid not in before:
            with contextlib.suppress(OSError):
                os.kill(child.pid, signal.SIGINT)


def _run_pool(tasks: list[_Task], jobs: int, report: Callable[..., None]) -> None:
    """Run on ``jobs`` spawned processes, keeping ``jobs`` files in flight; survive killed workers."""
    context = multiprocessing.get_context("spawn")  # fork after numba/BLAS threads have started is unsafe
    pending = deque(tasks)
    attempts: Counter[str] = Counter()
    before = {p.pid for p in multiprocessing.active_children()}
    while pending:
        interruptible = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
        stopping = context.Event()
        executor = ProcessPoolExecutor(
            max_workers=jobs, mp_context=context, initializer=_init_pool_worker, initargs=(interruptible, stopping)
        )
        inflight: dict[Any, _Task] = {}
        broken = False
        try:
            while (pending or inflight) and not broken:
                while pending and len(inflight) < jobs:
                    task = pending.popleft()
                    try:
                        _submit(executor, inflight, task, _pool_process, task)
                    except BrokenProcessPool:
                        pending.appendleft(task)
                        broken = True
                        break
                if not inflight:
                    break
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for future in done:
                    task = inflight.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken = True
                        inflight[future] = task  # handled with the others below
                        continue
                    except Exception as exc:  # the task could not even be run (e.g. not picklable)
                        result = FileResult(task.rel, task.out_rel, "failed", error=f"{type(exc).__name__}: {exc}")
                    if result.status == "interrupted":
                        # A Ctrl-C to the process group reaches the workers and this process at about the same
                        # time, and a worker's answer can come first: queue the file again rather than count it
                        # (our own KeyboardInterrupt follows and leaves it not done). A worker interrupted on
                        # its own retries the file, and fails it at MAX_ATTEMPTS.
                        attempts[task.rel] += 1
                        if attempts[task.rel] < MAX_ATTEMPTS:
                            pending.appendleft(task)
                            continue
                    report(task, result)
            if broken:
                wait(list(inflight))  # a broken pool resolves every future it holds
                # A worker died (killed, out of memory): every file in flight is a suspect. Try each again
                # in a new pool, and give up on a file that was in flight at MAX_ATTEMPTS deaths.
                for future, task in list(inflight.items()):
                    if future.done() and future.exception() is None:
                        report(task, future.result())
                        continue
                    attempts[task.rel] += 1
                    if attempts[task.rel] >= MAX_ATTEMPTS:
                        error = "the worker process died while converting it (killed, or out of memory?)"
                        report(task, FileResult(task.rel, task.out_rel, "failed", error=error))
                    else:
                        pending.appendleft(task)
                inflight.clear()
        except KeyboardInterrupt:
            stopping.set()  # files a worker has not begun are not begun (see _pool_process)
            for future in inflight:
                future.cancel()
            _stop_workers(before)
            try:
                done = wait(inflight, timeout=STOP_GRACE_SECONDS).done
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                done = set()
            for future in done:
                if not future.cancelled() and future.exception() is None:
                    report(inflight[future], future.result(), stopping=True)
            executor.shutdown(wait=False, cancel_futures=True)
            # No worker outlives the pool: one still starting up (spawned for the last file submitted) would read
            # the pool's semaphores after they are gone and print a FileNotFoundError traceback (seen once in
            # about 60 interrupted runs on a loaded machine). Busy ones leave at most a stray temporary file,
            # removed by the next run; idle and starting ones nothing.
            for child in multiprocessing.active_children():
                if child.pid not in before:
                    child.terminate()
                    child.join(timeout=5)
            raise
        # A broken pool is not waited for: its manager thread has already terminated the workers.
        executor.shutdown(wait=not broken, cancel_futures=True)


def _run_dask(tasks: list[_Task], address: str, report: Callable[[_Task, FileResult], None]) -> None:
    """Run on an existing Dask cluster; its workers must see INPUT_DIR and OUTPUT_DIR at the same paths."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise BatchError(
            '--scheduler needs Dask distributed: pip install -e ".[dask]" in the project folder', "usage"
        ) from None
    try:
        client = Client(address, timeout=DASK_CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise BatchError(f"cannot connect to the Dask scheduler at {address}: {exc}", "usage") from None
    futures = {}
    try:
        for task in tasks:
            futures[client.submit(_process, task, pure=False)] = task
        for future in as_completed(list(futures), loop=client.loop):
            task = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # e.g. KilledWorker: the task's workers died too often
                result = FileResult(task.rel, task.out_rel, "failed", error=f"dask: {type(exc).__name__}: {exc}")
            report(task, result)
    except KeyboardInterrupt:
        # Running tasks cannot be stopped; they finish their (atomic) writes, which the next run records.
        client.cancel(list(futures))
        raise
    finally:
        client.close()


# --- the public entry point ------------------------------------------------------------------------------


def encode_options(k: int | None, mode: str | None, seed: int, alpha: str | None) -> dict:
    """The KQ writer's options for ``kquant encode`` (and ``kquant batch``): with neither ``-k`` nor ``--mode``
    none at all, so that the image is stored exactly; ``-k`` alone quantizes in rgb mode, ``--mode`` alone at
    k=256 (``encode_image``'s rules)."""
    options: dict = {}
    if k is not None:
        options["k"] = k
    if mode is not None:
        options["mode"] = mode
    if k is not None or mode is not None:
        options["seed"] = seed
    if alpha is not None:
        options["alpha"] = alpha
    return options


def _check_params(k: Any, mode: Any, jobs: Any) -> None:
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 256):
        raise ValueError(f"k must be an integer from 1 to 256 or None, got {k!r}")
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)} or None, got {mode!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
        raise ValueError(f"jobs must be an integer >= 0 (0: one per core), got {jobs!r}")


def _core_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _load_palette(path: str | os.PathLike) -> np.ndarray:
    """The (m, 3) uint8 palette of a palette file (``kquant_codec.read_palette``: .gpl, .act, .kq, .png, .gif)."""
    if not isinstance(path, (str, os.PathLike)):
        # A file, not an array: its bytes are what the resume state records, so reruns know the palette.
        raise BatchError(f"palette must be the path of a palette file, got {type(path).__name__}", "usage")
    try:
        return np.asarray(kq.read_palette(path), dtype=np.uint8)
    except FileNotFoundError:
        raise BatchError(f"{path}: no such palette file", "input") from None
    except (OSError, ValueError) as exc:
        raise BatchError(f"{path}: cannot read palette: {exc}", "input") from None


def _log_default(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def _check_summary_path(path: Path, out_dir: Path) -> None:
    """Refuse a summary path that could destroy something: it must end in ``.json``, be in a folder that exists
    (or the output folder), and be new or a summary of an earlier run (never an image, an output, other data)."""
    if path.suffix.lower() != ".json":
        raise BatchError(f"{path}: the summary is JSON; give a path ending in .json", "output")
    if path.parent != out_dir and not path.parent.is_dir():
        raise BatchError(f"{path}: no such folder for the summary: {path.parent}", "output")
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir():
        raise BatchError(f"{path}: the summary path is a folder", "output")
    # A summary opens with these fields, in this order (BatchSummary), before its lists of files: its first
    # 64 KiB tell, whatever its length (a large run's summary can be megabytes).
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16).decode("utf-8", errors="replace") if path.is_file() else ""
    except OSError:
        head = ""
    marks = [head.find(f'"{key}":') for key in ("input_dir", "output_dir", "parameters", "found")]
    if not (head.lstrip().startswith("{") and -1 not in marks and marks == sorted(marks)):
        raise BatchError(f"{path}: exists and is not a kquant batch summary; refusing to overwrite it", "output")


def run_batch(
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    k: int | None = None,
    mode: str | None = None,
    seed: int = 0,
    palette: str | os.PathLike | None = None,
    decode: bool = False,
    jobs: int = 1,
    scheduler: str | None = None,
    force: bool = False,
    progress: bool = True,
    summary_path: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> BatchSummary:
    """Encode every image under ``input_dir`` into ``output_dir`` (see the module docstring).

    k, mode, seed : as ``kquant encode`` (k=None: what ``kquant encode`` does without ``-k``). palette : a
    palette file applied to every image instead of learning one (``encode_image(img, palette=...)``; needs
    k=None and mode None or "rgb"). decode : ``.kq`` -> PNG instead. jobs :
    worker processes (0: one per core; 1: in this process). scheduler : a Dask scheduler address to run
    on instead of local processes. force : encode everything again. progress : a tqdm bar on stderr.
    summary_path : where the JSON summary goes (default ``output_dir/kquant-batch.json``). log : receives
    one-line messages (default: stderr).

    Returns the summary (also written as JSON). An interruption (Ctrl-C, SIGTERM) is not raised: the
    summary of what was done is written and returned with ``interrupted`` set. Raises ``ValueError`` for
    bad parameters and ``BatchError`` for folders that cannot be used.
    """
    _check_params(k, mode, jobs)
    seed = check_seed(seed)  # a plain int: it goes into the JSON state
    log = log or _log_default
    in_dir = Path(input_dir)
    if not in_dir.is_dir():
        raise BatchError(f"{input_dir}: {'no such folder' if not in_dir.exists() else 'not a folder'}", "input")
    in_dir = in_dir.resolve()
    out_dir = Path(output_dir).resolve()
    if out_dir == in_dir or in_dir.is_relative_to(out_dir):
        raise BatchError(f"refusing to write into {output_dir}: it is or contains the input folder", "output")
    if out_dir.exists() and not out_dir.is_dir():
        raise BatchError(f"{output_dir}: exists and is not a folder", "output")
    if decode and (palette is not None or k is not None or mode is not None):
        raise BatchError("-k, --mode and --palette apply to encoding, not to --decode", "usage")
    if palette is not None and (k is not None or mode not in (None, "rgb")):
        raise BatchError("--palette replaces -k and works in rgb mode only: drop -k and --mode", "usage")
    suffix = ".png" if decode else ".kq"
    if decode:
        params: dict[str, Any] = {"direction": "decode", "format": "png", "version": kq.__version__}
        options: tuple[tuple[str, Any], ...] = ()
        pal = None
    else:
        pal = _load_palette(palette) if palette is not None else None
        # What the output depends on, so that a resume redoes a file only when its bytes would change: the
        # effective mode (-k alone is rgb), and the seed only when something is quantized.
        effective_mode = mode if mode is not None else ("rgb" if k is not None else None)
        seed_used = seed if effective_mode is not None else None
        params = {"direction": "encode", "k": k, "mode": effective_mode, "seed": seed_used, "alpha": None}
        if pal is None:
            # Exactly the options cmd_encode gives the KQ writer.
            options = tuple(encode_options(k, mode, seed, None).items())
            params["palette_sha256"] = None
        else:
            # encode_image(img, palette=pal), i.e. img.save(path, "KQ", palette=pal): nothing is learned,
            # so the seed does not matter.
            options = ()
            params.update(mode="rgb", seed=None, palette_sha256=hashlib.sha256(pal.tobytes()).hexdigest())
        params["version"] = kq.__version__
    workers = _core_count() if jobs == 0 else jobs
    summary_file = Path(summary_path).resolve() if summary_path is not None else out_dir / SUMMARY_NAME
    _check_summary_path(summary_file, out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"{output_dir}: cannot create the folder: {exc.strerror or exc}", "output") from None
    shown_params = dict(params, palette_file=str(palette) if palette is not None else None)
    summary = BatchSummary(str(in_dir), str(out_dir), shown_params, None if scheduler else workers, scheduler)
    start = time.perf_counter()
    with _locked(out_dir), _sigterm_as_interrupt():
        try:
            plan = (suffix, params, options, pal, decode)
            _run(summary, in_dir, out_dir, plan, workers, scheduler, force, progress, log)
        except KeyboardInterrupt as exc:
            summary.interrupted = "SIGTERM" if isinstance(exc, _Terminated) else "SIGINT"
        summary.wall_seconds = time.perf_counter() - start
        summary.summary_path = str(summary_file)
        try:
            with atomic_output(summary_file, force=True) as fh:
                fh.write((json.dumps(summary.as_dict(), indent=2) + "\n").encode())
        except OSError as exc:
            raise BatchError(f"{summary_file}: cannot write the summary: {exc.strerror or exc}", "output") from None
    return summary


def _run(
    summary: BatchSummary,
    in_dir: Path,
    out_dir: Path,
    plan: tuple[str, dict[str, Any], tuple[tuple[str, Any], ...], np.ndarray | None, bool],
    workers: int,
    scheduler: str | None,
    force: bool,
    progress: bool,
    log: Callable[[str], None],
) -> None:
    """Find, plan, run and record; fills ``summary`` as it goes (so an interruption keeps what was done).

    plan : (output suffix, parameters recorded in the state, encode_image options, palette, decode).
    """
    suffix, params, options, pal, decode = plan
    removed = _remove_stale_temporaries(out_dir)
    if removed:
        log(f"kquant batch: removed {removed} temporary files left by an interrupted run")
    extensions = {".kq"} if decode else _image_extensions() - {".kq"}  # never re-quantize earlier outputs
    rels, summary.ignored = _walk(in_dir, out_dir, extensions)
    summary.found = len(rels)
    names, clashes = _output_names(rels, suffix)
    shared = sorted(rel for rel, out in names.items() if not out.endswith(Path(rel).stem + suffix))
    if shared:
        shown = ", ".join(f"{rel} -> {names[rel]}" for rel in shared[:5]) + (" ..." if len(shared) > 5 else "")
        log(f"kquant batch: {len(shared)} inputs share a name with another, so they keep their whole name: {shown}")
    state_path = out_dir / STATE_NAME
    state = _State(state_path, {} if force else _load_state(state_path))
    todo: list[_Task] = []
    redone: Counter[str] = Counter()
    for rel in rels:
        out_rel = names[rel]
        task = _Task(str(in_dir / rel), str(out_dir / out_rel), rel, out_rel, decode, options, pal)
        if rel in clashes:
            summary.failed += 1
            summary.failures.append({"path": rel, "error": clashes[rel]})
            log(f"kquant: failed: {rel}: {clashes[rel]}")
            continue
        reason = "forced" if force else _redo_reason(task, state.records.get(out_rel), params)
        if reason is None:
            summary.skipped += 1
            continue
        if reason == NOT_OURS:
            summary.failed += 1
            summary.failures.append({"path": rel, "error": f"{out_rel} {NOT_OURS}"})
            log(f"kquant: failed: {rel}: {out_rel} {NOT_OURS}")
            continue
        if reason != "new":
            redone[reason] += 1
        todo.append(task)
    summary.redone = dict(redone)
    for reason, count in sorted(redone.items()):
        log(f"kquant batch: converting {count} existing outputs again: {reason}")
    summary.not_started = len(todo)
    state.add_pending(todo)

    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="file", file=sys.stderr, disable=not progress, dynamic_ncols=True)

    def report(task: _Task, result: FileResult, *, stopping: bool = False) -> None:
        with signals_deferred():  # a file counted is a file recorded (a Ctrl-C in between: converted again)
            _report(task, result, stopping=stopping)

    def _report(task: _Task, result: FileResult, *, stopping: bool = False) -> None:
        if result.status == "interrupted" and stopping:
            return  # the run is being interrupted: this file is simply not done
        if result.status == "interrupted":  # a worker alone was interrupted: the file failed
            result.status = "failed"
        summary.not_started -= 1
        if result.status == "done":
            summary.encoded += 1
            summary.bytes_in += result.bytes_in
            summary.bytes_out += result.bytes_out
            summary.megapixels += result.pixels / 1e6
            state.add(task, params)
        elif result.status == "not_image":
            summary.not_images.append(result.path)
            state.add_failed(task)
            log(f"kquant batch: skipped {result.path}: {result.error}")
        else:
            state.add_failed(task)
            summary.failed += 1
            summary.failures.append({"path": result.path, "error": result.error or "unknown error"})
            log(f"kquant: failed: {result.path}: {result.error}")
        bar.update(1)

    try:
        if not todo:
            pass
        elif scheduler is not None:
            _run_dask(todo, scheduler, report)
        elif workers == 1:
            _run_serial(todo, report)
        else:
            _run_pool(todo, min(workers, len(todo)), report)
    finally:
        bar.close()
        state.close(out_dir)
