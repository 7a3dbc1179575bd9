"""Bounded memory: hostile files are decoded in a child process under a hard address-space limit.

Each child imports the package and decodes small valid files of the same kinds (so lazy imports, numba's
compiled kernels for codec 3, and first-use allocations are done). It then resets its peak-RSS mark
(``/proc/self/clear_refs``, so ``VmHWM`` becomes this decode's peak; ``resource.getrusage`` is reported
too, but it also counts the parent's memory at fork), caps its own address space with
``resource.setrlimit(RLIMIT_AS)`` at its current size plus ``BUDGET_MB``, and decodes the hostile file
through ``read_kq`` or ``Image.open`` + ``load()``. Inflating any of the bombs below would need gigabytes,
so it would fail with ``MemoryError`` (a contract breach); instead each must be refused with the documented
error (or, for the PNG IDAT bomb, decoded: Pillow stops inflating once the image is full), and the growth
of peak RSS must stay within a small constant times what the header justifies. Codec 3 (the context coder)
has no stored-length floor: 112 bytes may truly hold a 16-megapixel image, so only its memory is bounded.

Run with ``-s`` to see the table of peak memory per input.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fuzz.hostile import (
    MiB,
    lzma2_unpacked,
    lzma2_zeros,
    native_l,
    native_la_alpha,
    png_chunk,
    png_payload,
    png_stream,
    zlib_zeros,
)
from kquant_codec import container as c
from kquant_codec import label_coder

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")

BUDGET_MB = 384  # address space the child may add after its warm-up: "a few hundred MB"

CHILD = r"""
import gc, json, os, resource, sys, warnings
from PIL import Image
import kquant_codec

path, how, budget_mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
warnings.simplefilter("ignore")

def decode(source):
    if how == "read_kq":
        return kquant_codec.read_kq(source).to_image().size
    img = Image.open(source)
    img.load()
    return img.size

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

for warm in sys.argv[4:]:  # small valid files of the same kind (codec 3: loads numba and its kernels)
    decode(warm)
gc.collect()
# ru_maxrss also counts the parent's memory at fork (Linux keeps the pre-exec peak), so the peak of this
# decode is read from VmHWM after resetting it to the current RSS (Linux >= 4.0), with getrusage as well.
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    reset = True
except OSError:
    reset = False
base_hwm, base_maxrss = status("VmHWM"), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
vm = status("VmSize") * 1024
limit = vm + budget_mb * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    decode(path)
    outcome = "ok"
except MemoryError:
    outcome = "MemoryError"
except Exception as exc:
    outcome = type(exc).__name__
print(json.dumps({
    "outcome": outcome, "reset": reset, "vm_kb": vm // 1024,
    "base_kb": base_hwm, "peak_kb": status("VmHWM"),
    "base_maxrss_kb": base_maxrss, "peak_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""


def _lzma2_bomb_for(raw: int) -> bytes:
    """The largest LZMA2 bomb of zeros that still passes the stored-length bound for ``raw`` bytes."""
    bound = raw + raw // 16 + 64
    dict_size = c.lzma2_dict_size(raw)
    probe = lzma2_zeros(2, dict_size)
    steady = len(probe) - len(lzma2_zeros(1, dict_size))
    return lzma2_zeros((bound - (len(probe) - 2 * steady)) // steady, dict_size)


def _zlib_bomb_for(raw: int) -> bytes:
    bound = raw + raw // 16 + 64
    return zlib_zeros((bound - 64) // len(zlib_zeros(1)))


def _with_size(data: bytes, width: int, height: int) -> bytes:
    """The file with another declared size, header and payload CRCs recomputed."""
    out = bytearray(data)
    struct.pack_into("<II", out, 16, width, height)
    header = c.unpack_header.__globals__["_fields_from_fixed"](bytes(out[: c.FIXED_HEADER_SIZE]))
    end = c.FIXED_HEADER_SIZE + header[1] + header[2]
    struct.pack_into("<I", out, end, zlib.crc32(out[:end]))
    return bytes(out)


def _cases() -> dict[str, tuple[bytes, int, float, str]]:
    """name -> (file, declared pixels, inflation the payload would reach in bytes, expected outcome)."""
    cases = {}
    side = 1024  # 1 MiB of 8-bit labels declared; the zlib bomb holds ~1 GiB
    bomb = _zlib_bomb_for(side * side)
    cases["zlib label bomb, 1024x1024 L"] = (native_l(side, side, c.CODEC_ZLIB, bomb), side * side, 0, "KqFormatError")
    side = 512  # 256 KiB declared; the LZMA2 bomb holds ~1.9 GB
    bomb = _lzma2_bomb_for(side * side)
    lzma_out = lzma2_unpacked(bomb)
    cases["lzma2 label bomb, 512x512 L"] = (
        native_l(side, side, c.CODEC_LZMA2, bomb),
        side * side,
        lzma_out,
        "KqFormatError",
    )
    cases["lzma2 alpha bomb, 512x512 LA"] = (
        native_la_alpha(side, side, c.CODEC_LZMA2, bomb),
        side * side,
        lzma_out,
        "KqFormatError",
    )
    side = 1024  # PNG payload: IDAT holds ~8 GiB of zeros, the PNG declares 1024x1024
    bound = 8 * side * side + 8 * side + 65536
    idat = zlib_zeros((bound - 200) // len(zlib_zeros(1)))
    cases["PNG IDAT bomb, 1024x1024 L"] = (
        png_payload("L", side, side, png_stream(side, side, idat)),
        side * side,
        0,
        "ok",
    )
    text = png_chunk(b"zTXt", b"Comment\x00\x00" + zlib_zeros(1000))  # ~1 GiB of text
    small_idat = zlib.compress(bytes(side * (side + 1)))
    cases["PNG zTXt bomb, 1024x1024 L"] = (  # ancillary chunks are skipped, never inflated (spec 9)
        png_payload("L", side, side, png_stream(side, side, small_idat, extra=text)),
        side * side,
        0,
        "ok",
    )
    # A second IHDR chunk (Pillow uses the last one) declaring 12000x12000 RGBA: 576 MB for Pillow to allocate.
    second_ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 8, 6, 0, 0, 0))
    rgba = png_stream(8, 8, zlib.compress(bytes(8 * 33)), colour_type=6, extra=second_ihdr)
    cases["PNG second IHDR 12000x12000, 8x8"] = (png_payload("RGBA", 8, 8, rgba), 64, 0, "KqFormatError")
    # Codec 3 (context coder): a 112-byte file that really is a 4096x4096 image (one label, every row a copy),
    # and the same stream cut short: the decoder may fill the declared planes, never more.
    side = 4096
    plane = label_coder.encode_plane(np.zeros((side, side), np.uint8), 1, np.zeros((1, 1), np.uint8))
    cases["codec 3, 4096x4096 L in 112 bytes"] = (native_l(side, side, 3, plane, 1), side * side, 0, "ok")
    cases["codec 3 cut short, 4096x4096 L"] = (native_l(side, side, 3, plane[:-6], 1), side * side, 0, "KqFormatError")
    # Codec 4 (predictive coder): a row that is all prediction costs the same bits at any width, so a few dozen
    # bytes may hold a 4-megapixel-wide row. Its decoder keeps two rows of per-column state (labels, residuals,
    # twelve sub-predictor errors), about 36 bytes per column (141 until its rows became 16- and 8-bit rings).
    wide = 1 << 22
    header = c.KqHeader(
        width=16,
        height=1,
        image_mode="L",
        quant_mode="global",
        channels=1,
        label_codec=c.CODEC_PREDICTIVE,
        label_length=1,
        table_sizes=(256,),
        tables=bytes(range(256)),
    )
    row = c.labels_to_predictive_stream(np.zeros((1, 16, 1), np.uint8), header)
    wide_file = c.pack_file(replace(header, width=wide, label_length=len(row)), row)
    cases[f"codec 4, {wide}x1 L in {len(wide_file)} bytes"] = (wide_file, wide, 0, "ok")
    tiny = native_l(1, 1, c.CODEC_ZLIB, zlib.compress(b"\x00"))
    cases["declared 16384x16384, tiny stream"] = (
        _with_size(tiny, 1 << 14, 1 << 14),
        1 << 28,
        0,
        "DecompressionBombError",
    )
    # Above Pillow's warning limit but below its error limit: decoding is attempted and the tiny stream
    # is refused; Image.open's loader reserves the declared image (144 MB of address space) first.
    cases["declared 12000x12000, tiny stream"] = (_with_size(tiny, 12000, 12000), 12000 * 12000, 0, "KqFormatError")
    for name, (data, *_rest) in cases.items():
        assert len(data) < 9 * MiB, name
    return cases


CASES = _cases()
SEEDS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"
WARM_UP = [SEEDS / "native-L-rgb-none-bytes-lzma2-3c.kq", SEEDS / "png-L.kq", SEEDS / "png-RGBA.kq"]
WARM_UP_CODEC_3 = WARM_UP + sorted(SEEDS.glob("context-*.kq"))[:3]
WARM_UP_CODEC_4 = WARM_UP + sorted(SEEDS.glob("predictive-*.kq"))[:3]


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    for i, (data, *_rest) in enumerate(CASES.values()):
        (folder / f"{i}.kq").write_bytes(data)
    return folder


def _run_child(path: Path, how: str, warm_up: list[Path]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), how, str(BUDGET_MB), *map(str, warm_up)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_bombs_are_real():
    """The streams are valid and would inflate far beyond the budget (checked on the headers, cheaply)."""
    data, pixels, inflated, _ = CASES["lzma2 label bomb, 512x512 L"]
    assert inflated > 1.5e9 and len(data) < 300_000
    assert len(zlib_zeros(1)) * 1024 < 1.1 * MiB  # 1 GiB of zeros in about 1 MiB of zlib stream
    assert zlib.decompress(zlib_zeros(3)) == bytes(3 * MiB)
    import lzma

    few = lzma2_zeros(3, c.lzma2_dict_size(pixels))
    filters = [{"id": lzma.FILTER_LZMA2, "dict_size": c.lzma2_dict_size(pixels)}]
    assert lzma.decompress(few, format=lzma.FORMAT_RAW, filters=filters) == bytes(lzma2_unpacked(few))


@pytest.mark.parametrize("how", ["read_kq", "Image.open"])
@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_under_address_space_limit(hostile_dir, name, how):
    index = list(CASES).index(name)
    data, pixels, _, expected = CASES[name]
    warm_up = {"codec 3": WARM_UP_CODEC_3, "codec 4": WARM_UP_CODEC_4}.get(name[:7], WARM_UP)  # kernels if needed
    result = _run_child(hostile_dir / f"{index}.kq", "read_kq" if how == "read_kq" else "open", warm_up)
    grown_mb = (result["peak_kb"] - result["base_kb"]) / 1024
    print(
        f"\n{name:34} {how:10} file {len(data) / MiB:5.2f} MiB -> {result['outcome']:22} "
        f"peak RSS {result['peak_kb'] / 1024:6.1f} MiB (+{grown_mb:.1f} over {result['base_kb'] / 1024:.1f}; "
        f"getrusage {result['peak_maxrss_kb'] / 1024:.1f}) under a {result['vm_kb'] / 1024 + BUDGET_MB:.0f} MiB cap"
    )
    assert result["outcome"] == expected
    # A small constant times what the header justifies: the declared image (1 byte per pixel here) and the
    # file itself (whose size the header bounds: ~1.07 x the labels, or 8 x the pixels for a PNG payload).
    allowed_mb = 8 + (8 * pixels + 2 * len(data)) / MiB
    if name.startswith("codec 4"):  # and codec 4's per-column state (spec section 12)
        allowed_mb += 40 * c.unpack_header(data).width / MiB
    assert grown_mb <= allowed_mb, result
