# Shortcuts for the README's two commands (which need only Python 3.11+, not make).
.PHONY: demo test bench-quantizers clean

demo:
	python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/kquant demo

test:
	python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && .venv/bin/python -m pytest

bench-quantizers:
	.venv/bin/python benchmarks/quantizers.py

clean:
	rm -rf .venv build *.egg-info kquant_codec/_aot_*.so kquant_codec/_aot_*.pyd

# Rebuild the ahead-of-time kernels in place after editing a kernel module (pip install -e . does it too).
.PHONY: kernels
kernels:
	.venv/bin/python kquant_codec/_native_build.py

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

# Issue 5: speed, memory and quality of rgb/global/channel at 0.3, 1, 12 and 24 MP next to pngquant, Pillow and
# MiniBatchKMeans (about 25 min; BENCH_ARGS=--quick for about 5 min).
BENCH_ARGS ?=
.PHONY: bench
bench:
	.venv/bin/python benchmarks/speed.py $(BENCH_ARGS)

# Issue 7: kquant batch throughput, --jobs 1 and 2, on 100 one-megapixel images made from the bundled photos
# (BATCH_BENCH_ARGS=--count 20 for a quick look).
BATCH_BENCH_ARGS ?=
.PHONY: bench-batch
bench-batch:
	.venv/bin/python benchmarks/batch.py $(BATCH_BENCH_ARGS)
