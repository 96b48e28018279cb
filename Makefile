# Set-up and everyday commands. `make serve` and `make test` work on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch, pinned before the model packages so none of them pulls a CUDA build.
CONSTRAINTS ?= deploy/constraints-cpu.txt
EXTRAS ?= sevenn,chgnet,nequip,dev
SERVE_ARGS ?=

.PHONY: install serve test lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -c $(CONSTRAINTS) torch
	$(VENV)/bin/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	touch $@

serve: install  ## install, then start the server on 127.0.0.1:8000 with SevenNet-0
	$(VENV)/bin/mlipserve serve $(SERVE_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint env-mace  ## install, lint, build the MACE worker environment, then run the test suite
	$(VENV)/bin/python -m pytest

bench: install
	$(VENV)/bin/python benchmarks/bench_predict.py --model 7net-0

# MACE's worker environment beside the main one: mace-torch pins e3nn 0.4.4, which sevenn cannot share.
MACE_VENV ?= .venv-mace
.PHONY: env-mace
env-mace: $(MACE_VENV)/.installed  ## create .venv-mace (mlipserve[mace], editable) for `mlipserve worker` of MACE models

$(MACE_VENV)/.installed: pyproject.toml $(CONSTRAINTS) deploy/mace/constraints.txt deploy/make-env.sh
	PYTHON=$(PYTHON) TORCH_CONSTRAINTS=$(CONSTRAINTS) deploy/make-env.sh mace $(MACE_VENV)
