# Two commands on a fresh machine: `make run` and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Index torch is installed from. Empty: pip's own index and configuration decide the build (plain
# PyPI on Linux: the CUDA 13 build, several GB of cuda-toolkit/nvidia-* packages; a pip configured
# with a find-links folder holding torch-2.13.0+cpu: that CPU wheel). On a fresh .venv,
# TORCH_INDEX=https://download.pytorch.org/whl/cpu forces the CPU build (see README).
TORCH_INDEX ?=

.PHONY: run test install bench clean-store gpu-wheels

$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned; its build follows TORCH_INDEX (above)
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0$(if $(TORCH_INDEX), --index-url $(TORCH_INDEX))
	$(BIN)/pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(BIN)/pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/prh run $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/bench_metrics.py

# Wheels the GPU device image lacks (Python 3.12), for bench/gpu_checks.sh: carried as .whl/.
# A fresh .whl/ each time: a wheel left from an older pin would make the device's one
# `pip install .whl/*.whl` fail as a whole (two versions of a package).
gpu-wheels:
	rm -rf .whl
	mkdir -p .whl
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$(grep -i -E '^(pydantic|pydantic_core|annotated-types|typing-inspection|typing_extensions)==' requirements.lock)

clean-store:
	rm -rf store .prefect

# Local Prefect server + UI on 127.0.0.1:$(PORT), work pools, GPU concurrency limit, every
# deployment of prefect.yaml and a process worker; open the UI and click Run. Ctrl-C stops all.
PORT ?= $(or $(PRH_SERVE_PORT),4200)
.PHONY: serve
serve: $(STAMP)
	$(BIN)/python -m flows.serve --port $(PORT) $(ARGS)
