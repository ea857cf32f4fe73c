# Set-up and checks for hf_repsim. `make test` creates .venv on first use and installs into it once;
# later runs reuse it until pyproject.toml changes.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Pinned so pip takes the CPU wheel; an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
# The stamp's name carries a checksum of pyproject.toml, so editing the dependencies triggers a reinstall.
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: venv install test demo clean distclean

venv: $(BIN)/python

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(STAMP)

$(STAMP): | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install $(TORCH_PIN)
	$(BIN)/pip install -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

# No model hub and no dataset hub at run time: everything runs from local files.
test demo: export HF_HUB_OFFLINE := 1
test demo: export HF_DATASETS_OFFLINE := 1

test: install
	$(BIN)/python -m pytest -q -m "not slow"

demo: install
	$(BIN)/hf-repsim compare

# Build outputs and tool caches; the virtual environment stays (see distclean).
clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

# Everything clean removes, and the virtual environment.
distclean: clean
	rm -rf $(VENV)
