# make demo: install into .venv and run the embedded demo.
# make test: install with the test extra into .venv and run the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test install install-test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: the pinned CPU build comes from local disk in seconds,
# while an unpinned resolve could pull a multi-GB CUDA build.
install: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e .

install-test: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'

demo: install
	$(BIN)/raygen demo

test: install-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

bench: install-test
	$(BIN)/python bench/generate_throughput.py
	$(BIN)/python bench/serve_load.py

clean:
	rm -rf out .pytest_cache
