"""Run a bounded fuzz campaign against the ``.kq`` decoder and print executions and findings.

    .venv/bin/python fuzz/run.py --seconds 300            # what ``make fuzz`` runs
    .venv/bin/python fuzz/run.py --runs 1000000 --seconds 0   # a fixed number of executions

With atheris installed (``pip install -e ".[fuzz]"``) this is the coverage-guided target
``fuzz/fuzz_decoder.py`` under libFuzzer, one process, one core; its growing corpus is kept in
``fuzz/work/corpus`` (not committed) on top of the seeds in ``fuzz/corpus``. Without atheris it falls
back to the seeded in-process mutator of ``fuzz/contract.py`` (the same one the test suite runs briefly).

Findings (inputs that break the contract) go to ``fuzz/findings/``, one file per distinct bug; copy each
into ``tests/fuzz_regressions/`` once it is fixed. Exit status: 0 with no findings, 1 with findings.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def _atheris(args: argparse.Namespace, findings: Path) -> tuple[int, float, list[str]]:
    work = HERE / "work" / "corpus"
    work.mkdir(parents=True, exist_ok=True)
    options = [
        f"-max_total_time={args.seconds}" if args.seconds > 0 else "-max_total_time=0",
        f"-runs={args.runs}",
        f"-max_len={args.max_len}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_limit_mb}",
        f"-dict={HERE / 'kq.dict'}",
        f"-artifact_prefix={findings}/",
        "-print_final_stats=1",
        "-print_pcs=0",
    ]
    if args.seed is not None:
        options.append(f"-seed={args.seed}")
    command = [sys.executable, str(HERE / "fuzz_decoder.py"), *options, str(work), str(HERE / "corpus")]
    print("$", " ".join(command), flush=True)
    env = {**os.environ, "KQ_FUZZ_FINDINGS": str(findings)}
    start = time.monotonic()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    executions = 0
    log, keys = [], []
    assert proc.stderr is not None
    for line in proc.stderr:
        log.append(line)
        if line.startswith("FINDING"):
            keys.append(line.split(": ", 1)[0].removeprefix("FINDING "))
        if line.startswith(("FINDING", "Done ", "stat::")) or "ERROR:" in line:
            print(line.rstrip(), flush=True)
        elif args.verbose or re.match(r"#\d+\s+(pulse|DONE|INITED)", line):
            print(line.rstrip(), flush=True)
        match = re.match(r"stat::number_of_executed_units:\s+(\d+)", line)
        if match:
            executions = int(match.group(1))
    code = proc.wait()
    seconds = time.monotonic() - start
    if code != 0 and not executions:
        sys.stderr.write("".join(log[-40:]))
    if code == 72:  # libFuzzer's exit status when interrupted (SIGINT/SIGTERM): the figures above still hold
        print("campaign interrupted", flush=True)
    elif code != 0:  # libFuzzer stops at a crash, timeout or out-of-memory, and saves the input
        keys.append(f"libFuzzer stopped with exit status {code} (crash, timeout or out-of-memory)")
    return executions, seconds, keys


def _mutator(args: argparse.Namespace, findings: Path) -> tuple[int, float, list[str]]:
    from fuzz.contract import ContractViolation, Mutator, check, pixel_limit

    corpus = [p.read_bytes() for p in sorted((HERE / "corpus").glob("*.kq"))]
    mutator = Mutator(corpus, seed=args.seed or 0)
    seen: set[str] = set()
    start = time.monotonic()
    executions = 0
    with pixel_limit():
        while (args.seconds <= 0 or time.monotonic() - start < args.seconds) and (
            args.runs < 0 or executions < args.runs
        ):
            data = mutator.mutate(mutator.rng.choice(corpus))
            executions += 1
            try:
                check(data, round_trip=executions % 4 == 0)
            except ContractViolation as violation:
                if violation.key not in seen:
                    seen.add(violation.key)
                    findings.mkdir(parents=True, exist_ok=True)
                    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", violation.key)[:80]
                    (findings / f"{name}-{executions}.kq").write_bytes(data)
                    print(f"FINDING {violation.key}: {violation}", flush=True)
            if executions % 100000 == 0:
                print(f"#{executions} {executions / (time.monotonic() - start):.0f} exec/s", flush=True)
    return executions, time.monotonic() - start, sorted(seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=300, help="time budget (0: no limit; default 300)")
    parser.add_argument("--runs", type=int, default=-1, help="execution budget (-1: no limit)")
    parser.add_argument("--engine", choices=("auto", "atheris", "mutator"), default="auto")
    parser.add_argument("--seed", type=int, default=None, help="random seed (libFuzzer -seed / mutator seed)")
    parser.add_argument("--max-len", type=int, default=4096, help="largest input libFuzzer makes")
    parser.add_argument("--timeout", type=int, default=10, help="seconds before one input counts as a hang")
    parser.add_argument("--rss-limit-mb", type=int, default=2048, help="memory before an input counts as a leak/bomb")
    parser.add_argument("--findings", type=Path, default=HERE / "findings")
    parser.add_argument("--verbose", action="store_true", help="show libFuzzer's NEW/REDUCE lines")
    args = parser.parse_args(argv)
    if args.seconds <= 0 and args.runs < 0:
        parser.error("give --seconds or --runs")
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "mutator"
    if engine == "mutator":
        print("atheris is not installed: using the seeded mutator of fuzz/contract.py (no coverage guidance)")
    # Codec 3's numba kernels with bounds checks (an out-of-bounds access becomes an IndexError, a finding);
    # cached kernels ignore the setting, hence a cache of their own. The atheris target sets the same.
    os.environ["NUMBA_BOUNDSCHECK"] = "1"
    os.environ["NUMBA_CACHE_DIR"] = str(HERE / "work" / "numba-boundscheck")
    args.findings.mkdir(parents=True, exist_ok=True)
    before = set(args.findings.glob("*"))
    executions, seconds, keys = (_atheris if engine == "atheris" else _mutator)(args, args.findings)
    new = sorted(set(args.findings.glob("*")) - before)
    print(f"engine: {engine}")
    print(f"executions: {executions}")
    print(f"time: {seconds:.0f} s ({executions / max(seconds, 1e-9):.0f} exec/s)")
    print(f"findings: {len(keys)}" + "".join(f"\n  {key}" for key in keys))
    if new:
        print("saved inputs:" + "".join(f"\n  {p}" for p in new))
    return 1 if keys else 0


if __name__ == "__main__":
    sys.exit(main())
