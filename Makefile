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
