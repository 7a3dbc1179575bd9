"""A short, bounded fuzz campaign in the normal test suite (the long, coverage-guided one is ``make fuzz``).

A seeded mutator (``fuzz.contract.Mutator``: byte edits, header-field rewrites, decompress-edit-recompress
of the label and alpha streams, PNG chunk edits, CRCs recomputed so edits reach the payload decoders)
works on the seed corpus in ``fuzz/corpus`` for at most ``KQ_FUZZ_SECONDS`` seconds (default 30), and
every input must keep the decoder's contract (spec section 12; ``fuzz.contract.check``).

The default seed makes the run repeatable; set ``KQ_FUZZ_SEED`` to explore elsewhere. A failing input is
written to pytest's temporary directory, named in the failure message: fix the decoder, then copy the
file into ``tests/fuzz_regressions/`` as ``found-<what>.kq``.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

from fuzz.contract import ContractViolation, Mutator, check, pixel_limit

CORPUS = Path(__file__).resolve().parent.parent / "fuzz" / "corpus"
SECONDS = float(os.environ.get("KQ_FUZZ_SECONDS", "30"))
SEED = int(os.environ.get("KQ_FUZZ_SEED", "20260527"))
MAX_EXECUTIONS = 400_000


def test_seed_corpus_is_valid_and_small():
    files = sorted(CORPUS.glob("*.kq"))
    assert len(files) >= 50
    assert sum(p.stat().st_size for p in files) < 1 << 20
    with pixel_limit():
        for path in files:
            assert check(path.read_bytes()).decoded, path.name


def test_short_fuzz_campaign_keeps_the_contract(tmp_path):
    corpus = [p.read_bytes() for p in sorted(CORPUS.glob("*.kq"))]
    mutator = Mutator(corpus, seed=SEED)
    findings: dict[str, tuple[Path, str]] = {}
    outcomes: collections.Counter[str] = collections.Counter()
    executions = 0
    start = time.monotonic()
    with pixel_limit():
        while time.monotonic() - start < SECONDS and executions < MAX_EXECUTIONS:
            data = mutator.mutate(mutator.rng.choice(corpus))
            executions += 1
            try:
                outcome = check(data, round_trip=executions % 8 == 0)
            except ContractViolation as violation:
                if violation.key not in findings:
                    path = tmp_path / f"finding-{len(findings)}.kq"
                    path.write_bytes(data)
                    findings[violation.key] = (path, str(violation))
                continue
            outcomes[outcome.read if outcome.read == "ok" else f"{outcome.read}/{outcome.load}"] += 1
    elapsed = time.monotonic() - start
    print(f"short fuzz campaign: {executions} executions in {elapsed:.1f} s, outcomes {dict(outcomes)}")
    assert not findings, "\n".join(f"{key}: {message} (input: {path})" for key, (path, message) in findings.items())
    assert executions >= 1000, "the campaign ran far too few inputs"
    assert outcomes["ok"] > 0, "no mutated input decoded: the mutator no longer reaches the payload decoders"
