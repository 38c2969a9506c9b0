# precond: `make run` (main job) and `make test` (tests) install into .venv first when it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
# torch 2.14.1 / torchvision 0.29.1 lie on this kind of machine's disk; the code runs on torch >= 2.9.
TORCH   ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install run test test-slow test-gpu bench clean

install: $(BIN)/precond-train

$(BIN)/precond-train: pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev,cluster]'
	touch $@

# Main job: SGD vs AdaGrad vs RMSProp vs Adam (3 seeds) on the embedded ill-conditioned problem.
run: install
	$(BIN)/precond-train experiment=compare_preconditioners

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

test-gpu: install
	$(BIN)/python -m pytest -q -m gpu

# Benchmarks print tables with the baseline measured in the same run (add ARGS="--device cuda" on a GPU)
bench: install
	$(BIN)/python scripts/bench_optimizer.py $(ARGS)
	$(BIN)/python scripts/bench_curvature.py $(ARGS)
	$(BIN)/python scripts/bench_bnp.py $(ARGS)

clean:
	rm -rf outputs/runs outputs/sweeps .pytest_cache
