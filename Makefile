# Two commands a newcomer needs: `make train` and `make test`. Each sets itself up in .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCHMARK ?= resnet50
ARGS ?=
EXTRAS ?= test

.PHONY: train test notebook install clean FORCE

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	echo '$(EXTRAS)' > $(STAMP)

# EXTRAS the venv was not installed with (e.g. EXTRAS=test,torch after a plain install) reinstall
ifeq ($(findstring $(EXTRAS),$(shell cat $(STAMP) 2>/dev/null)),)
$(STAMP): FORCE
endif
FORCE:

install: $(STAMP)

## Train a benchmark's tiny track (synthetic data, 2 CPU cores): N runs, olympic mean, table.
# ... then one self-contained HTML page of those runs (tables and plots; its path is printed last).
TRAIN_WORKDIR = $(or $(patsubst --workdir=%,%,$(filter --workdir=%,$(ARGS))),runs)
train: $(STAMP)
	$(PY) -m mlperf_jax.train --benchmark=$(BENCHMARK) --noresume $(ARGS)
	$(PY) -m mlperf_jax.report html --runs=$(TRAIN_WORKDIR) --benchmark=$(BENCHMARK) --newest

## The test suite (fake CPU devices for sharding; runs the MLPerf compliance checker on our logs).
test: $(STAMP)
	$(PY) -m pytest -q tests

## Execute notebooks/quickstart.ipynb end to end (QUICK=1: the ~1 min run the tests do; else ~5 min)
notebook: $(STAMP)
	$(PY) scripts/run_notebook.py notebooks/quickstart.ipynb $(if $(QUICK),--quick)

clean:
	rm -rf $(VENV) runs .pytest_cache
