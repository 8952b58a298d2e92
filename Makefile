# wikiembed: one venv, the right torch for the machine, then the project.
#   make sample   install, then embed the built-in sample on the CPU (no network)
#   make test     install with the test and index extras, then run the whole test suite (what CI runs)
#   make test-fast  the same without the `slow` tier (whole flows, servers, subprocesses)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A bare `torch` requirement can pull a multi-GB CUDA build; on a CPU machine
# pin the CPU build first. On a GPU machine:
#   make install TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
SAMPLE ?= sample:2000
# Tests run on one worker process more than there are cores (at most 8): much of a test's time is a
# subprocess starting or a server answering, and the extra worker runs while another waits (on 2 cores,
# 3 workers took 10 min 14 s where 2 took about 12). TEST_WORKERS=0 runs them in this process. A test
# file runs on one worker (its module fixtures built once), files handed out in collection order:
# longest first (tests/conftest.py FILE_SECONDS), so that the last file to start is a short one.
TEST_WORKERS ?= $(shell $(PY) -c "import os; print(min((os.cpu_count() or 1) + 1, 8))")
XDIST := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install sample test test-fast bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test,index]'
	touch $@

install: $(VENV)/.installed

sample: install
	$(BIN)/wikiembed run --source $(SAMPLE) --store runs/sample --shard-rows 500 --summary-json runs/sample-summary.json

# The suite starts about 250 Python processes (CLI runs, worker pools, stand-in containers, bench scripts):
# with the bytecode cache on, each reads the project's compiled modules instead of compiling them again.
# A shell or CI image that sets PYTHONDONTWRITEBYTECODE turns it off; the tests turn it back on (about 4%
# of the suite's CPU on 2 cores). The cache lands in __pycache__/ folders, which git ignores.
TEST_ENV := PYTHONDONTWRITEBYTECODE=

test: install
	$(TEST_ENV) $(BIN)/python -m pytest -q $(XDIST) tests

test-fast: install
	$(TEST_ENV) $(BIN)/python -m pytest -q $(XDIST) -m "not slow" tests

bench: install
	$(BIN)/python bench/pipeline.py --quick --json bench/results/pipeline-quick.json

clean:
	rm -rf runs .pytest_cache
