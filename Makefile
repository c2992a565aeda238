# One command sets up everything (venv, torch, the package, test deps) on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build by default; on a CUDA machine: make TORCH=torch
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test demo clean bench-deps
# The demo replaces its own previous run (runs/demo); data sets are generated once into datasets/.
# Reward bias −1: the maze's 0/1 goal reward becomes −1 per step until the goal, as in the reference code.
DEMO_ARGS ?=

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	# Pin the installed torch so no later dependency swaps it for a multi-GB CUDA build.
	$(PY) -m pip freeze | grep -i '^torch==' > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[envs,dev,hf,lerobot-data]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/pa-rl train --preset cpu --dataset pointmaze-umaze --data-dir datasets --train.reward-bias -1 --name demo $(DEMO_ARGS)

# d3rlpy 2.8.1 for benchmarks/d3rlpy_reference.py (no test imports it). It pins gymnasium==1.0.0 but
# runs on ours, so it goes in without its dependencies; its light ones go in pinned to everything already
# installed, so neither torch nor gymnasium (nor numpy) can move. Needs an installed venv (make install):
# no dependency on $(STAMP), whose rule would reinstall into a shared venv.
# Its Requires-Dist less torch and gymnasium.
BENCH_DEPS := tqdm h5py gym click typing-extensions structlog colorama dataclasses-json scikit-learn
bench-deps:
	@test -x $(PY) || { echo "no venv at $(VENV): run make install first"; exit 1; }
	$(PY) -m pip freeze --exclude-editable | grep '==' > $(VENV)/bench-constraints.txt
	$(PY) -m pip install -q -c $(VENV)/bench-constraints.txt $(BENCH_DEPS)
	$(PY) -m pip install -q -c $(VENV)/constraints.txt --no-deps d3rlpy==2.8.1

clean:
	rm -rf $(VENV) runs
