# One command per chore, the same in CI and on a laptop.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

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

# The client is a distribution of its own (clients/python); the tests use it.
$(VENV)/.installed-test: pyproject.toml clients/python/pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[$(EXTRA),test,dev]' -e './clients/python[bfloat16,progress]'
	touch $@ $(VENV)/.installed

# make run HOST=0.0.0.0 PORT=9000: a flag only for what the make command line gives, so that
# SCE_HOST/SCE_PORT/PORT in the environment still count (zsh exports HOST as the machine's name).
given = $(if $(filter command line,$(origin $(1))),--$(2) $($(1)))
run: $(VENV)/.installed
	$(PY) -m service $(call given,HOST,host) $(call given,PORT,port)

# KServe 0.21 for tests/test_kserve_client.py (its client) and make bench (its server): kserve pins protobuf below what onnx
# needs here, so it gets a venv of its own.
KSERVE_VENV := .venv-kserve
$(KSERVE_VENV)/.installed:
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet kserve==0.21.0
	touch $@

# Debian's chromium for tests/test_docs_offline.py (/docs and /redoc in a real browser):
# installed when missing and we are root; otherwise a message (the test then skips, and
# fails under CI=true). The stamp is written only once chromium is there.
$(VENV)/.chromium: | $(PY)
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq --no-install-recommends chromium; \
	  else \
	    echo "chromium is missing: run 'sudo apt-get install chromium' for the docs test" >&2; \
	  fi; }
	@if command -v chromium >/dev/null; then touch $@; fi

test: $(VENV)/.installed-test $(KSERVE_VENV)/.installed $(VENV)/.chromium
	$(PY) -m ruff check service clients tests bench openapi examples requirements
	$(PY) -m ruff format --check service clients tests bench openapi examples requirements
	$(PY) -m mypy
	$(PY) -m pytest

lint: $(VENV)/.installed-test
	$(PY) -m ruff check service clients tests bench openapi examples requirements
	$(PY) -m ruff format --check service clients tests bench openapi examples requirements
	$(PY) -m mypy

openapi: $(VENV)/.installed-test
	$(PY) openapi/generate.py

lock: $(VENV)/.installed-test
	$(PY) requirements/lock.py cpu gpu

# Needs wrk (apt-get install wrk) and curl; PyTorch, MLServer and KServe rows appear when
# `pip install torch` was done in .venv and `make bench-peers` made bench/.venv-mlserver,
# .venv-kserve and bench/.venv-tf (their pins clash with the service's: venvs of their own).
bench: $(VENV)/.installed-test
	$(PY) -m pip install --quiet -e '.[$(EXTRA),test,dev,bench]'
	$(PY) -m bench.run

bench-peers: $(KSERVE_VENV)/.installed
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
	rm -rf $(VENV) $(KSERVE_VENV) .pytest_cache .mypy_cache .ruff_cache
