# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and
# install what they need; both are idempotent (stamp files track what was installed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO_DIR ?= demo_out

# The prepared offline copy of CIFAR-10 sits beside the checkout; use it unless the user
# already pointed tensorflow-datasets elsewhere.
SHARED_TFDS := $(abspath ../shared/tensorflow_datasets)
ifeq ($(origin TFDS_DATA_DIR), undefined)
ifneq ($(wildcard $(SHARED_TFDS)/cifar10),)
export TFDS_DATA_DIR := $(SHARED_TFDS)
endif
endif
export KKTJAX_CIFAR_DUPLICATES ?= $(wildcard $(abspath ../shared/data/cifair10_duplicates_mapped.csv))

.PHONY: demo test bench install clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/activate setup.py
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.py
	$(PIP) install -q -e ".[test,bench]"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed setup.py
	$(PIP) install -q -e ".[bench]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m launch.demo --workdir=$(DEMO_DIR)

test: $(VENV)/.installed-test
	$(PY) -m pytest tests -n 2 -rs -q

bench: $(VENV)/.installed-bench
	$(PY) -m benchmarks.throughput

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
