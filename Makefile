# Every target creates .venv itself, so each works on a fresh clone with only Python and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-moto test-b2 run demo bench soak lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,local]'
	touch $(STAMP)

# The whole suite, the daemon's tests on moto AND on the B2-faithful server (docs/b2.md), spread
# by pytest-xdist over TEST_WORKERS processes (each its own moto and B2-faithful server): most of
# a daemon test is waiting on a subprocess. ~10 min on 2 idle cores.
TEST_WORKERS ?= 4
test: $(STAMP)
	$(BIN)/python -m pytest -q --servers both -n $(TEST_WORKERS) --dist worksteal

# The same suite on moto alone, one test at a time (~14 min): for bisecting a failure.
test-moto: $(STAMP)
	$(BIN)/python -m pytest -q

# Kept as a name: the doubled suite is now `make test`.
test-b2: test

# With no S3 endpoint or bucket configured, `run` starts the embedded local S3 server.
run: $(STAMP)
	$(BIN)/b2-zip-watcher run

demo: $(STAMP)
	$(BIN)/b2-zip-watcher demo

BENCH_STAMP := $(VENV)/.installed-bench
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,local,bench]'
	touch $(BENCH_STAMP)

# DATASETS=small,mixed,large RUNS=3; QUICK=1 for a one-minute smoke run
DATASETS ?= small,mixed,large,media
RUNS ?= 3
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.run --datasets $(DATASETS) --runs $(RUNS) $(if $(QUICK),--quick,)
	$(BIN)/python -m bench.many_small $(if $(QUICK),--objects 1000 --runs 1,)
	$(BIN)/python -m bench.deflate $(if $(QUICK),--member-mib 64 --text-mib 16 --candidate-mib 4 --candidate-rounds 1 --scaling-repeats 1 --wait-idle 0,)

# The > 4 GiB reader-matrix archive runs on SeaweedFS (the bench extra): moto holds it in RAM.
soak: $(BENCH_STAMP)
	$(BIN)/python -m pytest -q -m soak -rP

lint: $(STAMP)
	$(BIN)/ruff check watcher tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
