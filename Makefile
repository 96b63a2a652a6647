# Two commands for a fresh machine:  `make run` (install + dvc repro + a one-screen summary of the results,
# `python -m longwriter.report`)  and  `make test` (install + pytest).
#
# The interpreter: PYTHON=... when given (a virtualenv's python, activated or not, or any other); else the
# activated virtualenv's; else the project's own .venv, made on first use (with `uv venv` when uv is on PATH,
# else `python3 -m venv`). Installing is pip's either way, because it honours the machine's pip config
# (find-links, constraints) that `uv pip` ignores.
ifdef PYTHON
  PY := $(PYTHON)
else ifdef VIRTUAL_ENV
  PY := $(VIRTUAL_ENV)/bin/python
else
  PY := $(CURDIR)/.venv/bin/python
  MAKE_VENV := $(PY)
endif
BOOTSTRAP_PYTHON ?= python3

# dvc.yaml's commands run a bare `python`: the directory of the interpreter installed into goes first on PATH,
# so every stage runs with it, activated or not.
# (.venv's is known before it exists; another interpreter is asked, once it is installed into)
PY_BIN = $(if $(MAKE_VENV),$(CURDIR)/.venv/bin,$(shell $(PY) -c 'import os, sys; print(os.path.dirname(sys.executable))'))
WITH_BIN = PATH="$(PY_BIN):$$PATH"

# llama.cpp is compiled from source. A -march=native build of ggml 0.3.36 crashed (general protection fault
# in libggml-cpu during batched prompt evaluation) on the AVX-512 Xeons we test on; a portable AVX2 build
# without the llamafile kernels runs everywhere x86-64-v3 does. Override for other CPUs or GPUs.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_LLAMAFILE=OFF

# torch first, pinned: an unpinned `torch` requirement pulls a multi-GB CUDA build. 2.13.0 is a CPU build here;
# on a GPU node install requirements/gpu.txt instead (docs/scale.md).
TORCH ?= torch==2.13.0

# Every other dependency, pinned with hashes (`make lock` writes it from pyproject.toml's ranges).
LOCK := requirements/cpu.lock
# Where `make lock` finds the CPU build of torch, whose dependencies (no CUDA packages) the lock records: this
# machine's wheel directory when pip has one, else PyTorch's CPU index.
LOCK_TORCH_SOURCE ?= $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
LOCK_PLATFORM := --python-version 3.11 --python-platform x86_64-manylinux_2_28

.PHONY: install run test lint lock

$(MAKE_VENV):
	if command -v uv >/dev/null 2>&1; then uv venv --seed --python $(BOOTSTRAP_PYTHON) .venv; \
	else $(BOOTSTRAP_PYTHON) -m venv .venv; fi

# --no-deps: the lock is the whole set (torch aside); --no-cache-dir: never reuse a llama-cpp-python wheel pip
# cached from a build with other flags
install: | $(MAKE_VENV)
	$(PY) -m pip install $(TORCH)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --no-cache-dir --no-deps --require-hashes -r $(LOCK)
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -m pip check

run: install
	$(WITH_BIN) $(PY) -m dvc repro
	$(WITH_BIN) $(PY) -m longwriter.report

test: install
	$(WITH_BIN) $(PY) -m pytest

lint:
	$(PY) -m ruff check .

# Regenerate the locks after changing pyproject.toml's dependencies (needs the package registries).
lock:
	$(PY) -m pip install uv
	$(PY) -m uv pip compile pyproject.toml --extra dev --generate-hashes $(LOCK_PLATFORM) \
	  --constraint requirements/torch-cpu.txt $(LOCK_TORCH_SOURCE) --no-emit-package torch --no-emit-package pip \
	  --output-file $(LOCK)
	$(PY) -m uv pip compile pyproject.toml requirements/gpu.in $(LOCK_PLATFORM) --no-emit-package pip \
	  --output-file requirements/gpu.txt
