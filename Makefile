# make demo: install into .venv and run the embedded demo.
# make test: install with the test extra into .venv and run the whole suite (what CI runs).
# make check: the fast tier of that suite, for contributors' inner loop.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.13.0

.PHONY: demo test check docs install install-test browser bench clean

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

# The playground's tests (tests/serving/test_playground.py) drive Debian's Chromium: Playwright's own
# browser download cannot run offline. Installed when missing and run as root; else the tests say so.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the playground tests"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "could not install chromium: tests/serving/test_playground.py will fail and say so"; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium' for tests/serving/test_playground.py"; fi; }

test: install-test browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# The inner loop: unit tests only (no Ray cluster, no training, no servers), in about 3 minutes.
check: install-test
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not ray and not slow"

# The documentation site, built into site/ (strict: a broken link or a page out of the navigation fails).
docs: install-test
	DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

bench: install-test
	$(BIN)/python bench/generate_throughput.py
	$(BIN)/python bench/serve_load.py

clean:
	rm -rf out site .pytest_cache
