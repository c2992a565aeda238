# One command sets up everything (venv, torch, the package, test deps) on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build by default; on a CUDA machine: make TORCH=torch
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install test demo clean
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
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[envs,dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/pa-rl train --preset cpu --dataset pointmaze-umaze --data-dir datasets --train.reward-bias -1 --name demo $(DEMO_ARGS)

clean:
	rm -rf $(VENV) runs
