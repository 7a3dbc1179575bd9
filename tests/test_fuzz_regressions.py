"""Replay every input that ever broke the decoder's contract, plus hand-made hostile inputs.

``tests/fuzz_regressions/found-*.kq`` are fuzzer findings (each fixed in the decoder; see the README there),
``hostile-*.kq`` are written by ``fuzz/hostile.py``: bombs, impossible sizes, broken streams and PNG payloads.
Each must satisfy the contract of spec section 12 (``fuzz.contract.check``) under Pillow's default
decompression-bomb limit and under the fuzzer's small one; the verdicts listed below are pinned too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from fuzz.contract import FUZZ_MAX_IMAGE_PIXELS, check, pixel_limit

HERE = Path(__file__).resolve().parent / "fuzz_regressions"
FILES = sorted(HERE.glob("*.kq"))

# read_kq's verdict for each hand-made input ("ok": a valid file that must decode).
EXPECTED_READ = {
    "hostile-empty": "KqFormatError",
    "hostile-magic-only": "KqFormatError",
    "hostile-header-without-payload": "KqFormatError",
    "hostile-spec-example-trailing-byte": "KqFormatError",
    "hostile-labels-past-the-table": "KqFormatError",
    "hostile-zlib-bomb-64x64-L-4MiB": "KqFormatError",
    "hostile-lzma2-bomb-64x64-L-29MB": "KqFormatError",
    "hostile-alpha-zlib-bomb-64x64-LA-4MiB": "KqFormatError",
    "hostile-zlib-stream-short": "KqFormatError",
    "hostile-zlib-stream-preset-dictionary": "KqFormatError",
    "hostile-lzma2-bad-properties": "KqFormatError",
    "hostile-lzma2-no-dictionary-reset": "KqFormatError",
    "hostile-declared-16384x16384-tiny-stream": "DecompressionBombError",
    "hostile-declared-beyond-format-limit": "KqFormatError",
    "hostile-largest-header-1x1-CMYK": "ok",
    "hostile-png-idat-bomb-64x64-L-16MiB": "ok",  # Pillow stops inflating once the 64x64 image is full
    "hostile-png-ztxt-bomb": "ok",  # ancillary chunks are skipped, never inflated or judged (spec 9)
    "hostile-png-iccp-bomb": "ok",  # ancillary chunks are skipped, never inflated or judged (spec 9)
    "hostile-png-ihdr-100000x100000": "KqFormatError",
    "hostile-png-16-bit-grey-declared-L": "KqFormatError",
    "hostile-png-apng-oversized-frame": "ok",  # ancillary chunks are skipped, never inflated or judged (spec 9)
    "hostile-png-16-bit-RGB-declared-RGB": "KqFormatError",
    "hostile-png-2-bit-grey-declared-L": "KqFormatError",
    "hostile-png-16-bit-LA-declared-RGBA": "KqFormatError",
    "hostile-png-truncated-idat": "KqFormatError",
    "hostile-png-not-png": "KqFormatError",
    "hostile-png-P-as-RGB-declared-CMYK-mode": "KqFormatError",
    "hostile-png-without-IEND": "KqFormatError",
    "hostile-png-IDAT-CRC-wrong": "KqFormatError",
    "hostile-png-bytes-after-IEND": "KqFormatError",
    "hostile-png-P-index-past-PLTE": "KqFormatError",
    "hostile-png-second-IHDR-same-size": "KqFormatError",
    "hostile-png-IHDR-14-bytes": "KqFormatError",
    "hostile-png-IEND-with-data": "KqFormatError",
    "hostile-png-PLTE-after-IDAT": "KqFormatError",
    "found-png-comp-method-7": "KqFormatError",
    "found-png-interlace-9": "KqFormatError",
    "found-png-unknown-critical-chunk": "KqFormatError",
    "found-png-IDAT-split-nonconsecutive": "KqFormatError",
    "found-png-PLTE-in-grey": "KqFormatError",
    "found-png-PLTE-empty": "KqFormatError",
    "found-png-PLTE-len-not-mult3": "KqFormatError",
    "found-png-PLTE-300-entries": "KqFormatError",
    "found-png-PLTE-5-entries-1bit": "KqFormatError",
    "found-png-tRNS-before-PLTE": "KqFormatError",
    "found-png-tRNS-in-greyalpha": "KqFormatError",
    "found-png-IDAT-excess-rows": "ok",
    "found-png-too-few-rows": "KqFormatError",
    "found-png-zlib-stream-not-ended": "KqFormatError",
    "found-png-IDAT-trailing-garbage-in-zlib": "ok",
    "hostile-context-valid-16x16-4-stripes": "ok",
    "hostile-context-unknown-version": "KqFormatError",
    "hostile-context-reference-flag-on-first-plane": "KqFormatError",
    "hostile-context-stripe-height-0": "KqFormatError",
    "hostile-context-stripe-length-huge-varint": "KqFormatError",
    "hostile-context-odd-byte-count": "KqFormatError",
    "hostile-context-last-word-changed": "KqFormatError",
    "hostile-context-cut-short": "KqFormatError",
    "hostile-context-with-packing": "KqFormatError",
    "hostile-context-as-alpha-codec": "KqFormatError",
    "found-png-P-tRNS-longer-than-PLTE": "KqFormatError",
    "found-png-P-without-PLTE": "KqFormatError",
    "found-png-empty-iCCP-after-IDAT": "KqFormatError",
    "found-png-second-IHDR": "KqFormatError",
    "hostile-png-second-IHDR-12000x12000-RGBA": "KqFormatError",
}


def test_regression_corpus_is_present_and_small():
    assert len(FILES) >= len(EXPECTED_READ)
    assert {p.stem for p in FILES} >= set(EXPECTED_READ)
    assert sum(p.stat().st_size for p in FILES) < 1 << 20


@pytest.mark.parametrize("limit", [Image.MAX_IMAGE_PIXELS, FUZZ_MAX_IMAGE_PIXELS], ids=["pillow-limit", "fuzz-limit"])
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_regression_input_keeps_the_contract(path, limit):
    with pixel_limit(limit):
        outcome = check(path.read_bytes(), all_formats=True)
    expected = EXPECTED_READ.get(path.stem)
    if expected is not None:
        assert outcome.read == expected, outcome
    if path.stem.startswith("found-"):
        assert outcome.read != "ok" or outcome.round_trip  # either refused, or decoded and round-tripped


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("hostile-header-without-payload", "payload has 0 of 6 bytes"),
        ("hostile-spec-example-trailing-byte", "1 unexpected bytes after the payload CRC"),
        ("hostile-labels-past-the-table", "points past its 3-entry centroid table"),
    ],
)
def test_files_built_on_the_spec_example_fail_for_their_own_reason(name, message):
    """They were built on a hand copy of the example with two stray bytes, and all failed the header CRC."""
    import kquant_codec as kq

    with pytest.raises(kq.KqFormatError, match=message):
        kq.read_kq(HERE / f"{name}.kq")
