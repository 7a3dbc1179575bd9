"""Ctrl-C in the command line: ``kquant encode`` interrupted with SIGINT exits with 130, prints one line,
and leaves neither the output file nor a temporary file behind — while encoding, and while writing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads CPU time from /proc")

ENTRY_POINT = Path(sys.executable).with_name("kquant")
KQUANT = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "kquant_codec.cli"]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (a busy process has surely passed its start-up)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _noisy_gradient(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:height, 0:width] * (1500 / width)
    arr = np.dstack([x * 0.17, y * 0.25, (x + y) * 0.1]) + rng.normal(0, 20, (height, width, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def big_photo(tmp_path_factory) -> Path:
    """A 1500x1000 photo-like image (4.5 MB as BMP)."""
    path = tmp_path_factory.mktemp("sigint") / "big.png"
    _noisy_gradient(1500, 1000).save(path, compress_level=1)
    return path


@pytest.fixture(scope="module")
def big_kq(big_photo) -> Path:
    """``big_photo`` as a .kq file (k=64), for ``kquant decode``, which reads .kq files only."""
    from kquant_codec import encode_image

    path = big_photo.with_suffix(".kq")
    path.write_bytes(encode_image(Image.open(big_photo), k=64))
    return path


@pytest.fixture(scope="module")
def huge_photo(tmp_path_factory) -> Path:
    """A 3000x2000 photo-like image: encoding it at k=64 takes about 4 CPU-seconds (2-core machine)."""
    path = tmp_path_factory.mktemp("sigint") / "big.png"
    _noisy_gradient(3000, 2000).save(path, compress_level=1)
    return path


def _ctrl_c_enabled() -> None:
    """In the child: SIGINT back to its default, as in a terminal. A job started in the background (as CI
    runs may be) inherits SIGINT *ignored*, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(proc: subprocess.Popen, ready) -> tuple[int, str]:
    deadline = time.monotonic() + 120
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"kquant finished or stalled before it could be interrupted: {proc.returncode} {err}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _left_over(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in ("big.png", "big.kq"))  # (the inputs)


def test_sigint_while_encoding(tmp_path, huge_photo):
    source = tmp_path / "big.png"
    shutil.copy(huge_photo, source)
    target = tmp_path / "out.kq"
    proc = subprocess.Popen(
        [*KQUANT, "encode", str(source), str(target), "-k", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_enabled,
    )
    # past start-up (about 0.5 CPU-seconds), well before the end (about 4 here)
    code, err = _interrupt(proc, lambda: _cpu_seconds(proc.pid) > 1.0)
    assert code == 130, err
    assert err.strip() == "kquant: interrupted", err  # one line, no traceback
    assert _left_over(tmp_path) == []  # no output, no temporary file


SLOW_WRITER = """
import contextlib, sys, time
import kquant_codec.safe_write as sw
real = sw.atomic_output

@contextlib.contextmanager
def slow(path, **kw):
    with real(path, **kw) as fh:
        class Slow:
            def write(self, data):
                view = memoryview(data)
                for i in range(0, len(view), 4096):
                    fh.write(view[i : i + 4096]); fh.flush(); time.sleep(0.002)
        yield Slow()

sw.atomic_output = slow
from kquant_codec.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("existing", [False, True], ids=["new-output", "old-output-kept"])
def test_sigint_while_writing(tmp_path, big_kq, existing):
    """Interrupted in the middle of writing: the temporary file is removed and the target never touched."""
    source = tmp_path / "big.kq"
    shutil.copy(big_kq, source)
    target = tmp_path / "out.bmp"  # 4.5 MB of output, written slowly
    if existing:
        target.write_bytes(b"old contents")
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, "decode", str(source), str(target), "--force"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_enabled,
    )

    def writing() -> bool:
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".out.bmp.")]
        return bool(temps) and temps[0].stat().st_size > 64 * 1024

    code, err = _interrupt(proc, writing)
    assert code == 130, err
    assert err.strip() == "kquant: interrupted", err
    assert _left_over(tmp_path) == (["out.bmp"] if existing else [])
    if existing:
        assert target.read_bytes() == b"old contents"
