# precond: `make run` (main job) and `make test` (tests) install into .venv first when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# torch 2.14.1 / torchvision 0.29.1 lie on this kind of machine's disk; the code runs on torch >= 2.9.
# --no-cache-dir: torch's CUDA build alone takes ~5.5 GB in .venv, and a CI run once ran out of disk during the
# install: pip's cache would keep second copies of the downloaded wheels that nothing reads again.
TORCH   ?= torch==2.14.1 torchvision==0.29.1

.PHONY: help install run test test-slow test-gpu lint bench results recheck stability clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 12

install: $(BIN)/precond-train  ## create .venv with torch and precond (editable) and its dev/cluster/tune extras

# torch's CUDA build needs ~6 GiB on this disk (5.5 GiB in .venv, plus pip's unpacking): say so before pip fails
# half-way with "No space left on device".
NEED_GIB ?= 7
DISK_CHECK = import shutil, sys; free = shutil.disk_usage('.').free / 2**30; sys.exit(0 if free >= $(NEED_GIB) else \
	f'error: installing torch needs about $(NEED_GIB) GiB free on the disk of {sys.argv[1]} ({free:.1f} GiB free): free some '\
	'space (old clones with their .venv are 6 GiB each), or install a CPU build of torch into .venv first (see docs/usage.md)')

$(BIN)/precond-train: pyproject.toml
	@$(BIN)/python -c "import torch" 2>/dev/null || $(PY) -c "$(DISK_CHECK)" "$(CURDIR)"
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --no-cache-dir --upgrade pip
	$(BIN)/pip install -q --no-cache-dir $(TORCH)
	$(BIN)/pip install -q --no-cache-dir -e '.[dev,cluster,tune]'
	touch $@

run: install  ## main job: tuned SGD (± momentum) vs AdaGrad vs RMSProp vs Adam (β₁ = 0.9, 0) on the embedded ill-conditioned problem
	$(BIN)/precond-train experiment=compare_preconditioners

# one pytest worker per core the process may use, at most 4 (each worker imports torch: ~0.5 GB)
TEST_WORKERS ?= $(shell $(PY) -c "import os; print(min(4, len(os.sched_getaffinity(0))))" 2>/dev/null || echo 2)

test: install  ## fast tests (slow and GPU tests excluded), one worker per core; each run uses one CPU thread
	@echo "tests run in $(TEST_WORKERS) workers with PRECOND_THREADS=1 OMP_WAIT_POLICY=PASSIVE (tests/conftest.py): one thread per run is fastest for their small models, and the workers use the cores"
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --durations=15

test-slow: install  ## every experiment end to end (marker slow)
	$(BIN)/python -m pytest -q -m slow

test-gpu: install  ## CUDA tests (marker gpu)
	$(BIN)/python -m pytest -q -m gpu

lint: install  ## ruff: lint and import order (config in pyproject.toml)
	$(BIN)/ruff check .

bench: install  ## benchmarks (incl. basic vs packed sweeps): tables with the baseline in the same run (ARGS="--device cuda" on a GPU)
	$(BIN)/python scripts/bench_optimizer.py $(ARGS)
	$(BIN)/python scripts/bench_curvature.py $(ARGS)
	$(BIN)/python scripts/bench_bnp.py $(ARGS)
	$(BIN)/python scripts/bench_threads.py
	$(BIN)/python scripts/bench_threads.py --loaded
	$(BIN)/python scripts/bench_sweep.py $(ARGS)

results: install  ## every claim's experiment → docs/results/ and docs/results.md (reruns what training changed, re-judges the rest; ARGS=--fresh: all)
	$(BIN)/python scripts/results.py $(ARGS)

recheck: install  ## recompute every committed verdict from its per-seed values with scipy.stats (exit 1 on any difference)
	$(BIN)/python scripts/recheck_verdicts.py

stability: install  ## re-confirm every tuned experiment on two fresh seed draws → docs/stability.md (after make results)
	$(BIN)/python scripts/stability.py $(ARGS)

clean:  ## remove run/sweep outputs and caches
	rm -rf outputs/runs outputs/sweeps .pytest_cache .ruff_cache
