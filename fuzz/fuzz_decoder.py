"""Coverage-guided fuzz target for the ``.kq`` decoder (atheris + libFuzzer).

    .venv/bin/python fuzz/fuzz_decoder.py [libFuzzer options] WORK_CORPUS_DIR fuzz/corpus

Usually run through ``make fuzz`` (``fuzz/run.py``), which picks the options and sums up the results.

For every input, ``fuzz.contract.check`` runs ``kq_info``, ``read_kq`` and ``Image.open`` + ``load()``
and requires success with a consistent image or exactly the documented exception types (spec section 12).
A breach is written to ``fuzz/findings/`` (one file per distinct bug key, named after it) and reported on
stderr; the campaign goes on, so one run finds every distinct bug it can. Set ``KQ_FUZZ_CRASH=1`` to make
a breach crash the target instead (libFuzzer then minimizes/saves it as ``crash-*``).

Mutations: half libFuzzer's own byte-level mutations, half ``fuzz.contract.Mutator`` (header-field
rewrites, decompress-edit-recompress of the streams, PNG chunk edits), and most of the time the ``.kq``
CRCs are recomputed afterwards, so mutated inputs get past the CRC checks into the payload decoders.
Pillow's decompression-bomb limit is lowered to ``FUZZ_MAX_IMAGE_PIXELS`` to keep every execution cheap,
and the numba kernels of codec 3 are compiled with bounds checks (``NUMBA_BOUNDSCHECK=1``).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
# The context coder (codec 3) runs numba-compiled kernels, which do not check array bounds: compile them
# with bounds checks here, so an out-of-bounds access becomes an IndexError (a finding) instead of silent
# memory corruption. Cached kernels ignore the setting, hence a cache of their own.
os.environ["NUMBA_BOUNDSCHECK"] = "1"
os.environ["NUMBA_CACHE_DIR"] = str(HERE / "work" / "numba-boundscheck")

import atheris  # noqa: E402

with atheris.instrument_imports(include=["kquant_codec", "PIL"], exclude=["kquant_codec.label_coder"]):
    from PIL import Image

    Image.init()  # import (and so instrument) every Pillow plugin now, not lazily later
    import kquant_codec  # noqa: F401 - registers the KQ plugin

from fuzz.contract import ContractViolation, Mutator, check, fix_crcs, pixel_limit  # noqa: E402

FINDINGS = Path(os.environ.get("KQ_FUZZ_FINDINGS", HERE / "findings"))
CRASH = os.environ.get("KQ_FUZZ_CRASH") == "1"
ROUND_TRIP_EVERY = int(os.environ.get("KQ_FUZZ_ROUND_TRIP_EVERY", "4"))

_seen: set[str] = set()
_mutator = Mutator([p.read_bytes() for p in sorted((HERE / "corpus").glob("*.kq"))])


def _record(data: bytes, violation: ContractViolation) -> None:
    if violation.key in _seen:
        return
    _seen.add(violation.key)
    FINDINGS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", violation.key)[:80] + "-" + hashlib.sha1(data).hexdigest()[:10]
    (FINDINGS / f"{name}.kq").write_bytes(data)
    print(f"\nFINDING {violation.key}: {violation}\n  saved as {FINDINGS / name}.kq", file=sys.stderr, flush=True)


def test_one_input(data: bytes) -> None:
    round_trip = ROUND_TRIP_EVERY > 0 and zlib.crc32(data) % ROUND_TRIP_EVERY == 0
    try:
        check(data, round_trip=round_trip)
    except ContractViolation as violation:
        if CRASH:
            raise
        _record(data, violation)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    _mutator.rng.seed(seed)
    if _mutator.rng.random() < 0.5:
        out = atheris.Mutate(data, max_size)
        if _mutator.rng.random() < 0.8:
            out = fix_crcs(out)
    else:
        out = _mutator.mutate(data if data else _mutator.rng.choice(_mutator.corpus))
    return out[:max_size]


def main() -> None:
    pixel_limit().__enter__()  # for the whole process: a small bomb limit, warnings silenced
    # Compile the codec-3 kernels before the clock starts (the first input using them would look like a hang).
    for path in sorted((HERE / "corpus").glob("context-*.kq")):
        check(path.read_bytes(), round_trip=True)
    atheris.Setup(sys.argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
