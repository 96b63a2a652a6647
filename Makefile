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
# on a GPU node `make install-gpu` installs the GPU lock's CUDA build instead (docs/scale.md).
TORCH ?= torch==2.13.0

# Every other dependency, pinned with hashes (`make lock` writes it from pyproject.toml's ranges).
LOCK := requirements/cpu.lock
# Where `make lock` finds the CPU build of torch, whose dependencies (no CUDA packages) the lock records: this
# machine's wheel directory when pip has one, else PyTorch's CPU index.
LOCK_TORCH_SOURCE ?= $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
LOCK_PLATFORM := --python-version 3.11 --python-platform x86_64-manylinux_2_28

# The GPU lock (`make install-gpu`, docs/scale.md): the CPU lock's pins and torch's version (a CUDA build), plus
# vLLM (in the range TRL's `vllm` extra declares) and DeepSpeed, with hashes. `make lock` compiles it constrained
# to every pin of $(LOCK) except these, which vLLM forces lower (tests/test_gpu_lock.py allows exactly these):
# fastapi (every vLLM from 0.23 caps fastapi[standard] below 0.137) and numpy (vLLM >= 0.27 needs
# mistral-common >= 1.11.6, which caps numpy below 2.4 on Python < 3.13; vLLM < 0.27 pins torch 2.11).
GPU_LOCK := requirements/gpu.txt
GPU_LOCK_DIFFERS := fastapi numpy
# what llama.cpp's GPU-node build adds to the portable flags, e.g. -DGGML_CUDA=on (needs the CUDA toolkit)
LLAMA_GPU_CMAKE_ARGS ?=

.PHONY: install install-gpu run test lint lock

$(MAKE_VENV):
	if command -v uv >/dev/null 2>&1; then uv venv --seed --python $(BOOTSTRAP_PYTHON) .venv; \
	else $(BOOTSTRAP_PYTHON) -m venv .venv; fi

# --no-deps: the lock is the whole set (torch aside); --no-cache-dir: never reuse a llama-cpp-python wheel pip
# cached from a build with other flags. Last, llama.cpp's llama-server (provider local on the CPU) is built from the
# same llama-cpp-python's sources with the same flags, once per machine (minutes; a no-op afterwards):
# longwriter/llm/llama_cpp_engine.py
install: | $(MAKE_VENV)
	$(PY) -m pip install $(TORCH)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m pip install --no-cache-dir --no-deps --require-hashes -r $(LOCK)
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PY) -m longwriter.llm.llama_cpp_engine

# A CUDA node: the GPU lock (CUDA torch included) in place of torch + the CPU lock, llama.cpp with the same portable
# flags (a -march=native build crashes on AVX-512 Xeons, above)
install-gpu: | $(MAKE_VENV)
	CMAKE_ARGS="$(strip $(LLAMA_CMAKE_ARGS) $(LLAMA_GPU_CMAKE_ARGS))" $(PY) -m pip install --no-cache-dir --no-deps \
	  --require-hashes -r $(GPU_LOCK)
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	CMAKE_ARGS="$(strip $(LLAMA_CMAKE_ARGS) $(LLAMA_GPU_CMAKE_ARGS))" $(PY) -m longwriter.llm.llama_cpp_engine

run: install
	$(WITH_BIN) $(PY) -m dvc repro
	$(WITH_BIN) $(PY) -m longwriter.report
	$(WITH_BIN) $(PY) -m longwriter.conservation

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
	{ sed -n 's/^\([a-z0-9][a-z0-9._-]*==[^ ]*\) \\$$/\1/p' $(LOCK) | grep -v $(foreach p,$(GPU_LOCK_DIFFERS),-e '^$(p)=='); \
	  sed -n 's/^\(torch==[^+]*\).*/\1/p' requirements/torch-cpu.txt; } > requirements/cpu-pins.tmp
	$(PY) -m uv pip compile pyproject.toml requirements/gpu.in --constraint requirements/cpu-pins.tmp --generate-hashes \
	  $(LOCK_PLATFORM) --no-emit-package pip --custom-compile-command 'make lock' --output-file $(GPU_LOCK)
	rm requirements/cpu-pins.tmp
