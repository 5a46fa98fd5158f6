# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)
DEMO_OUT ?= demo_output
SHARED_SAMPLES := ../shared/data/ievnet-samples

.PHONY: install demo test test-slow lint bench clean image image-test

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(PY) -m pip install -q -c requirements.lock torch==2.13.0
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: install
	$(PY) -m ievnet_bids.demo --out $(DEMO_OUT) $(if $(wildcard $(SHARED_SAMPLES)),--real-dir $(SHARED_SAMPLES))

test: install
	bash scripts/ensure_chromium.sh
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -n 2 --dist loadgroup

test-slow: install
	$(PY) -m pytest -m slow

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: install
	$(PY) benchmarks/bench_synth.py

# The container image ievnet:<version>: docker build when a Docker engine answers, else buildah
# from a local Debian bookworm base (built once, cached in ~/.cache/ievnet-image).
image:
	bash docker/build_image.sh

# Runs the image as an unprivileged uid on the demo dataset (read-only BIDS folder) and
# compares its outputs with the source install's (docker/image_test.sh).
# The previous image's deletion (minutes of file deletion here) runs while the source install does.
image-test: install
	IEVNET_IMAGE_DEFER_CLEANUP=1 bash docker/build_image.sh
	bash docker/image_test.sh

clean:
	rm -rf $(DEMO_OUT) .pytest_cache .ruff_cache
