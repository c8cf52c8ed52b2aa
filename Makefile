# bayesfan: `make demo` and `make test` work on a fresh clone (they create .venv first).
SHELL := /bin/bash
PYTHON_BIN ?= $(shell for p in python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 python3.13 python3; do \
	if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then command -v $$p; break; fi; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Two test workers: most tests wait on process start-up, servers and compiles, so two overlap well on 2 cores.
PYTEST_ARGS ?= -n 2 --dist loadfile
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_HOME ?= $(CURDIR)/.cache/prefect
export BAYESFAN_CACHE_DIR ?= $(CURDIR)/.cache/bayesfan

.PHONY: setup demo test bench chaos infra-check clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PYTHON_BIN)" || { echo "error: Python 3.12 or newer not found (set PYTHON_BIN=...)"; exit 2; }
	test -x $(PY) || $(PYTHON_BIN) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	mkdir -p $(PREFECT_HOME) $(BAYESFAN_CACHE_DIR)
	touch $(STAMP)

demo: setup
	@mkdir -p $(PREFECT_HOME) $(BAYESFAN_CACHE_DIR)
	$(VENV)/bin/bayesfan demo --out demo-out

test: setup
	@mkdir -p $(PREFECT_HOME) $(BAYESFAN_CACHE_DIR)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

bench: setup
	$(PY) -m pip install -q -r requirements-bench.lock
	$(VENV)/bin/bayesfan bench all --json benchmarks/results.json
	$(PY) -m benchmarks.report benchmarks/results.json
	BAYESFAN_BENCH=1 $(PY) -m pytest -q -s tests/test_recovery_hmm.py

chaos: setup
	$(PY) scripts/chaos.py $(CHAOS_ARGS)

infra-check: setup
	$(VENV)/bin/cfn-lint infra/bayesfan.yaml && $(VENV)/bin/hadolint Dockerfile && bash infra/checkov.sh

clean:
	rm -rf $(VENV) .cache demo-out .pytest_cache
