# bdense-study: one command to set up and run, one to set up and test.
#   make run    set up (venv, packages, Fashion-MNIST) and run the main job on the default preset
#   make test   set up and run the test suite (what CI runs)
#   make dashboard [STORAGE=...]  optuna-dashboard on a study's storage (default: the default study's journal)
#   make notebooks                rewrite the notebooks' cells and execute them against the published study
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist
ARGS   ?=
STORAGE ?= runs/optuna-journal.log

.PHONY: setup data run demo test test-all bench dashboard notebooks clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=python3 ...'"; exit 2; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[dev,offline-fid,dashboard,postgres]"
	touch $@

# Fashion-MNIST ships offline as Debian's dataset-fashion-mnist (the original idx files).
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then exit 0; fi; \
	if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null 2>&1; apt-get install -y -q dataset-fashion-mnist >/dev/null; } || \
	  echo "warning: could not install Debian's dataset-fashion-mnist; Fashion-MNIST will be downloaded by torchvision (needs internet)"; \
	else \
	  echo "note: Fashion-MNIST not found at $(FMNIST); install it with 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu) or let torchvision download it (needs internet)"; \
	fi

run: setup
	$(PY) study/run.py $(ARGS)

demo: setup
	$(PY) -m bdense_core.demo $(ARGS)

test: setup
	$(PY) -m pytest -q -m "not slow and not gpu" $(ARGS)

test-all: setup
	$(PY) -m pytest -q -m "not gpu" $(ARGS)

bench: setup
	$(PY) benchmarks/bench_core.py $(ARGS)

# optuna-dashboard takes a journal file as its bare path: journal:PATH and PATH both work here.
dashboard: setup
	$(VENV)/bin/optuna-dashboard $(patsubst journal:%,%,$(STORAGE)) $(ARGS)

notebooks: setup
	$(PY) notebooks/make_notebooks.py
	$(PY) notebooks/run_notebooks.py

clean:
	rm -rf $(VENV) .pytest_cache runs
