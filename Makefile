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

# A .venv whose Python no longer runs (its base Python removed), is older than 3.11 or lacks pip is
# rebuilt: its stamp is dropped here, so the install below runs again (it had failed the same way on
# every `make run`, "exec: .venv/bin/python3: not found" or "No module named 'pip'").
VENV_CHECK := import sys, pip; sys.exit(sys.version_info < (3, 11))
ifneq ($(shell $(BIN)/python -c '$(VENV_CHECK)' >/dev/null 2>&1 && echo ok),ok)
$(shell rm -f $(STAMP))
endif

# One install at a time in this checkout (two `make run` at once had run pip into one .venv together
# and failed on each other's files): the install runs under a lock where `flock` exists.
$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	@if command -v flock >/dev/null 2>&1; then flock .venv.lock $(MAKE) --no-print-directory venv-install; \
	else $(MAKE) --no-print-directory venv-install; fi

.PHONY: venv-install
venv-install:
	$(BIN)/python -c '$(VENV_CHECK)' 2>/dev/null || $(PYTHON) -m venv --clear $(VENV)
	@$(BIN)/python -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "prh needs Python 3.11 or newer; " \
	  + "$(PYTHON) is " + sys.version.split()[0] + ": run make with PYTHON=python3.11 (or newer)")'
	# torch first, pinned; its build follows TORCH_INDEX (above)
	$(BIN)/python -m pip install --disable-pip-version-check -q torch==2.13.0$(if $(TORCH_INDEX), --index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.lock
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/prh run $(ARGS)

# Two test processes (pytest-xdist): much of the suite waits on the servers and subprocesses it
# starts, so two workers keep 2 cores busy; `--dist loadfile` keeps a file's tests on one worker
# (its module fixtures are built once). TEST_WORKERS=0 runs one process, as plain `pytest` does.
# --durations: the slowest tests at the end of the log, to keep `make test` inside its ~15 minutes
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=30 --durations-min=5 $(PYTEST_ARGS)

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
