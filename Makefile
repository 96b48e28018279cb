# Set-up and everyday commands. `make serve` and `make test` work on a fresh machine with Python >= 3.10.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch, pinned before the model packages so none of them pulls a CUDA build.
CONSTRAINTS ?= deploy/constraints-cpu.txt
EXTRAS ?= sevenn,chgnet,nequip,dev
# The models the README's examples use; `make serve SERVE_ARGS="--model NAME ..."` chooses others.
SERVE_ARGS ?= --model 7net-0 --model chgnet-0.3.0
# pip install into $(VENV), rerun when the network drops mid-download (deploy/pip-install.sh)
PIP = deploy/pip-install.sh $(VENV)

.PHONY: install serve test lint bench

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) deploy/pip-install.sh
	@echo "== creating $(VENV) (first time: about 3 minutes, 2 GB; later runs skip this)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	@echo "== installing CPU torch ($$(grep ^torch $(CONSTRAINTS)))"
	$(PIP) -c $(CONSTRAINTS) torch
	@echo "== installing mlipserve[$(EXTRAS)] and the model packages (sevenn, chgnet, nequip)"
	$(PIP) -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	@# the tests compare `mlipserve eval metrics` with matbench-discovery's own module, which needs none of its
	@# heavy dependencies (plotly, wandb, ...); the wheel asks for Python >= 3.11, its metrics module runs on 3.10
	$(PIP) --no-deps --ignore-requires-python matbench-discovery==1.3.1
	touch $@
	@echo "== $(VENV) ready: run .venv/bin/mlipserve, or 'source .venv/bin/activate' to put mlipserve on PATH"

serve: install  ## install, then serve SevenNet-0 and CHGNet on 127.0.0.1:8000
	@echo "== starting: $(VENV)/bin/mlipserve serve $(SERVE_ARGS)  (the models load in the background; /readyz says when)"
	$(VENV)/bin/mlipserve serve $(SERVE_ARGS)

lint: install  ## ruff, hadolint (deploy/docker), mypy (clients/, server/api/) and the layers' import rules (import-linter)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/hadolint deploy/docker/*.Dockerfile
	@# mypy and import-linter read the package from its folder: mlipserve/models, server and clients are links to
	@# the top-level folders that setuptools maps (package-dir), so they see the layout as installed
	$(VENV)/bin/mypy --config-file pyproject.toml
	$(VENV)/bin/lint-imports --no-cache

test: lint envs  ## install, lint, build the model families' worker environments, then run the test suite
	$(VENV)/bin/python -m pytest

bench: install
	$(VENV)/bin/python benchmarks/bench_predict.py --model 7net-0

# Model families whose pins conflict with the main environment's run in worker environments of their own beside it,
# .venv-FAMILY, made by deploy/make-env.sh from deploy/FAMILY/constraints.txt: mace-torch pins e3nn 0.4.4, which
# sevenn cannot share; fairchem-core pins one torch minor and setuptools<81; orb-models brings cloud storage clients
# (cached_path), and matgl lightning and boto3, that the main environment has no use for; mattersim requires
# torchvision, whose PyPI build needs CUDA torch; GRACE runs on TensorFlow (deploy/grace/ says how it installs).
FAMILY_ENVS ?= mace fairchem orb m3gnet mattersim grace
.PHONY: envs $(FAMILY_ENVS:%=env-%)
envs: $(FAMILY_ENVS:%=env-%)  ## create every family's worker environment (.venv-mace, ...)
$(FAMILY_ENVS:%=env-%): env-%: .venv-%/.installed  ## create .venv-FAMILY (mlipserve[FAMILY], editable) for its workers

.venv-%/.installed: pyproject.toml $(CONSTRAINTS) deploy/%/constraints.txt deploy/make-env.sh deploy/pip-install.sh $(wildcard deploy/*/requirements.txt deploy/*/no-deps.txt)
	@echo "== creating .venv-$*, the $* family's own worker environment (first time: a few minutes)"
	PYTHON=$(PYTHON) TORCH_CONSTRAINTS=$(CONSTRAINTS) deploy/make-env.sh $* .venv-$*
