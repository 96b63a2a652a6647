# Two commands for a fresh machine:  `make run` (install + dvc repro)  and  `make test` (install + pytest).
PYTHON ?= python3
# llama.cpp is compiled from source. A -march=native build of ggml 0.3.36 crashed (general protection fault
# in libggml-cpu during batched prompt evaluation) on the AVX-512 Xeons we test on; a portable AVX2 build
# without the llamafile kernels runs everywhere x86-64-v3 does. Override for other CPUs or GPUs.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_LLAMAFILE=OFF

# torch first, pinned: an unpinned `torch` requirement pulls a multi-GB CUDA build. 2.13.0 is a CPU build here;
# on a GPU node use the build for its CUDA, e.g. `make install TORCH="torch==2.13.0 --index-url ..."`.
TORCH ?= torch==2.13.0

# dvc.yaml's commands run a bare `python`: the directory of the interpreter installed into goes first on PATH,
# so `make run PYTHON=/path/venv/bin/python` (a virtualenv that is not activated) runs every stage with it.
BIN := $(shell $(PYTHON) -c 'import os, sys; print(os.path.dirname(sys.executable))')
WITH_BIN := PATH="$(BIN):$$PATH"

.PHONY: install run test lint

install:
	$(PYTHON) -m pip install $(TORCH)
	# --no-cache-dir: never reuse a wheel pip cached from a build with other flags
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PYTHON) -m pip install --no-cache-dir "llama-cpp-python[server]==0.3.36"
	$(PYTHON) -m pip install -e ".[dev]"

run: install
	$(WITH_BIN) $(PYTHON) -m dvc repro
	$(WITH_BIN) $(PYTHON) -m dvc metrics show

test: install
	$(WITH_BIN) $(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check .
