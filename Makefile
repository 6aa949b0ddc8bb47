# Two entry points for a fresh machine: `make demo` and `make test`.
# MXNet uses half the cores unless OMP_NUM_THREADS is set; default to all of them.
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)
export MXNET_HOME ?= $(HOME)/.mxnet
# The data directory (cifar10-mini/, cifar100-mini/, pretrained/; README "Data"), if any,
# reaches the demo and the tests as an absolute path (the tests start processes elsewhere).
ifneq ($(GLUON_TRICKS_DATA),)
  override GLUON_TRICKS_DATA := $(abspath $(GLUON_TRICKS_DATA))
  export GLUON_TRICKS_DATA
endif

# The pins live in setup.py; these are the Pythons they have wheels for.
SUPPORTED   := 3.9 3.10 3.11
WHY         := gluon-tricks runs on Python 3.9, 3.10 or 3.11 (MXNet 1.9.1 needs numpy < 1.24, which has no wheels past 3.11)
py_version   = $(shell $(1) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
MXNET_EXTRA ?= cpu
VENV ?= .venv
PY   := $(VENV)/bin/python

ifneq ($(filter-out clean,$(or $(MAKECMDGOALS),install)),)
  # PYTHON=... overrides; otherwise the first supported one of these (a pyenv shim whose
  # version is not active fails to run, and is skipped).
  ifeq ($(origin PYTHON),undefined)
    PYTHON := $(firstword $(foreach p,python3 python3.11 python3.10 python3.9,$(if $(filter $(SUPPORTED),$(call py_version,$(p))),$(p))))
  endif
  ifeq ($(PYTHON),)
    $(error no Python 3.9-3.11 found: $(WHY); install one, e.g. sudo apt-get install python3.10-venv or sudo dnf install python3.11)
  endif
  PYVER := $(call py_version,$(PYTHON))
  ifeq ($(filter $(SUPPORTED),$(PYVER)),)
    $(error PYTHON=$(PYTHON) is $(if $(PYVER),Python $(PYVER),not a runnable Python): $(WHY))
  endif
endif

# Reinstall whenever setup.py (the one place pins live), the Python or the MXNet wheel changes.
STAMP := $(VENV)/.installed-py$(PYVER)-$(MXNET_EXTRA)-$(shell cksum setup.py | cut -d' ' -f1)
# mxnet and mxnet-cu112 both write the package `mxnet/`: a venv holds exactly one of them.
MXNET_OTHER := $(if $(filter gpu,$(MXNET_EXTRA)),mxnet,mxnet-cu112)

.PHONY: install demo test bench clean mutate

$(STAMP): setup.py
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || { echo "$(PYTHON) cannot make a venv: on Ubuntu, sudo apt-get install python$(PYVER)-venv"; exit 1; }
	@test "$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$(PYVER)" || { \
	  echo "making $(VENV) with $(PYTHON) (Python $(PYVER))"; rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	if $(PY) -m pip show -q $(MXNET_OTHER) 2>/dev/null; then $(PY) -m pip uninstall -y -q mxnet mxnet-cu112; fi
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

# Each behaviour mutant of tools/mutate.py against the tests that pin it (~4 min on 2 idle cores; docs/testing.md).
mutate: $(STAMP)
	$(PY) tools/mutate.py

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) runs .pytest_cache
