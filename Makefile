# Shortcuts for the README's two commands (which need only Python 3.11+, not make).
.PHONY: demo test bench-quantizers clean

demo:
	python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/kquant demo

test:
	python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest

bench-quantizers:
	.venv/bin/python benchmarks/quantizers.py

clean:
	rm -rf .venv build *.egg-info

# Fuzz the .kq decoder for FUZZ_SECONDS (or FUZZ_RUNS executions); prints executions and findings.
# Coverage-guided with atheris (pip install -e ".[fuzz]"), else a seeded mutator. See fuzz/run.py.
FUZZ_SECONDS ?= 300
FUZZ_RUNS ?= -1
.PHONY: fuzz
fuzz:
	.venv/bin/python fuzz/run.py --seconds $(FUZZ_SECONDS) --runs $(FUZZ_RUNS)

# Issue 4: .kq vs PNG / oxipng / WebP lossless / JPEG XL on the sample photos and gradients (pip install -e ".[bench]").
.PHONY: bench-compression
bench-compression:
	.venv/bin/python benchmarks/compression.py
