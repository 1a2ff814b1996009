# The two entry points of README.md: `make demo` (main job, embedded default) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test unit lint bench

install: $(VENV)/.installed

# torch is pinned first: this machine serves a local CPU wheel of 2.13.0, while an unpinned
# torch (asked for by another package) would pull a CUDA build of several GB.
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/ris demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The tests that need no service (no Redis, worker or Milvus): `pytest -m unit`, in seconds.
unit: install
	$(VENV)/bin/pytest -m unit

# netfilterqueue (packet delay in tests/system/test_multihost.py) builds against libnetfilter-queue's
# headers, which .ci/run installs; without them only that test skips, and `make demo` never
# needs them.
test: lint
	$(PY) -m pip install -q "netfilterqueue>=1.1" || echo "netfilterqueue unavailable: the delay test will skip"
	$(VENV)/bin/pytest

bench: install
	$(PY) benchmarks/ingest.py
	$(PY) benchmarks/query.py
