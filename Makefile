# One command per chore, the same in CI and on a laptop.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint openapi lock audit bench bench-peers soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Stamps record what is installed; they are redone when pyproject.toml changes.
# EXTRA=gpu installs onnxruntime-gpu instead of onnxruntime (never both: they overwrite
# each other); switching needs a fresh venv (make clean).
EXTRA ?= cpu

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[$(EXTRA)]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[$(EXTRA),test,dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(PY) -m service --host $(HOST) --port $(PORT)

test: $(VENV)/.installed-test
	$(PY) -m ruff check service tests bench openapi examples requirements
	$(PY) -m ruff format --check service tests bench openapi examples requirements
	$(PY) -m mypy
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(PY) -m ruff check service tests bench openapi examples requirements
	$(PY) -m ruff format --check service tests bench openapi examples requirements
	$(PY) -m mypy

openapi: $(VENV)/.installed-test
	$(PY) openapi/generate.py

lock: $(VENV)/.installed-test
	$(PY) requirements/lock.py cpu gpu

# Needs wrk (apt-get install wrk) and curl; PyTorch and MLServer rows appear when
# `pip install torch` was done in .venv and `make bench-peers` made bench/.venv-mlserver
# and bench/.venv-tf (TensorFlow's pins clash with the service's: its own venv).
bench: $(VENV)/.installed-test
	$(PY) -m pip install --quiet -e '.[$(EXTRA),test,dev,bench]'
	$(PY) -m bench.run

bench-peers:
	$(PYTHON) -m venv bench/.venv-mlserver
	bench/.venv-mlserver/bin/pip install --quiet mlserver==1.7.1
	$(PYTHON) -m venv bench/.venv-tf
	bench/.venv-tf/bin/pip install --quiet tensorflow-cpu==2.21.0

# pip-audit over the hashed locks; --strict fails when a package could not be checked.
# Needs PyPI's per-release JSON API or OSV (not reachable from the build machine here).
audit: $(VENV)/.installed-test
	$(PY) -m pip_audit --strict --disable-pip --require-hashes -r requirements/cpu.lock
	$(PY) -m pip_audit --strict --disable-pip --require-hashes -r requirements/gpu.lock

# Long runs, not part of make test: a 10-minute soak with RSS sampled, 64 clients for
# 60 s, and the property/schema fuzzers with many more examples.
soak: $(VENV)/.installed-test
	$(PY) -m bench.load --clients 64 --duration 60
	$(PY) -m bench.load --clients 64 --duration 600 --soak
	HYPOTHESIS_PROFILE=long $(PY) -m pytest -q tests/test_properties.py tests/test_schemathesis.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
