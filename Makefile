# Two entry points for a fresh machine: `make demo` and `make test`.
# MXNet uses half the cores unless OMP_NUM_THREADS is set; default to all of them.
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)
export MXNET_HOME ?= $(HOME)/.mxnet

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Reinstall whenever setup.py (the one place pins live) changes.
STAMP  := $(VENV)/.installed-$(shell cksum setup.py | cut -d' ' -f1)
MXNET_EXTRA ?= cpu

.PHONY: install demo test bench clean mutate

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(MXNET_EXTRA),test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# NaiveEngine runs MXNet ops on the calling thread: ~5% faster for small CPU models.
demo: $(STAMP)
	MXNET_ENGINE_TYPE=NaiveEngine $(PY) -m gluon_tricks table demo --run
	$(PY) -m gluon_tricks plot demo

test: $(STAMP)
	$(PY) -m pytest -q tests

# Each behaviour mutant of tools/mutate.py against the tests that pin it (~30 min; docs/testing.md).
mutate: $(STAMP)
	$(PY) tools/mutate.py

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
