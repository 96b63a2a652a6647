"""llama.cpp's own ``llama-server`` and HF → GGUF converter, from the pinned llama-cpp-python's sources.

``provider: local`` serves a checkpoint directory on the CPU with llama.cpp's ``llama-server`` (parallel slots,
continuous batching): it made 79 / 110 / 170 tokens/s at 1 / 4 / 16 requests in flight where the hand-written
transformers server it replaced made 17 / 29 / 100 and ``transformers serve`` 17 / 32 / 61
(``bench/results/local_serving.json``). No package registry ships a Linux ``llama-server``: llama-cpp-python's
wheel has the libraries only. So ``make install`` builds it once per machine (``python -m
longwriter.llm.llama_cpp_engine``) from the sdist of the llama-cpp-python version installed, which vendors the
llama.cpp the embedded server runs, with the Makefile's portable flags (``CMAKE_ARGS``), and keeps the converter
(``convert_hf_to_gguf.py`` with its ``gguf-py``) of the same sources beside it: the converter and the server
then agree on the GGUF format.

Both live in ``$XDG_CACHE_HOME/longwriter/llama-server-<version>/`` (``~/.cache`` by default): every clone and
virtualenv of the machine shares one build, and a new llama-cpp-python version builds its own.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from longwriter.errors import ConfigError

PACKAGE = "llama_cpp_python"
# what the build keeps of the sources: the converter, its model classes and the gguf package it writes with
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py")


def engine_version() -> str:
    """The llama-cpp-python version whose llama.cpp the engine is built from (the embedded server's)."""
    return importlib.metadata.version(PACKAGE)


def engine_home() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "longwriter" / f"llama-server-{engine_version()}"


def server_binary() -> Path:
    """The built ``llama-server``; ConfigError (how to build it) when it is not there."""
    binary = engine_home() / "llama-server"
    if not binary.is_file():
        raise ConfigError(f"provider 'local' serves checkpoints with llama.cpp's llama-server, which is not built "
                          f"({binary} is missing): run `make install` (or `python -m longwriter.llm.llama_cpp_engine`"
                          f" with the Makefile's CMAKE_ARGS), once per machine")
    return binary


def converter() -> tuple[Path, Path]:
    """``convert_hf_to_gguf.py`` and the ``gguf-py`` directory it imports, of the engine's sources."""
    root = engine_home() / "convert"
    script, gguf_py = root / "convert_hf_to_gguf.py", root / "gguf-py"
    if not script.is_file() or not gguf_py.is_dir():
        raise ConfigError(f"llama.cpp's checkpoint converter is missing ({script}): run `make install` once")
    return script, gguf_py


def _sdist(version: str, into: Path) -> Path:
    """The llama-cpp-python sdist of ``version``, downloaded by pip (the machine's registry and its config)."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(into),
                    f"llama-cpp-python=={version}"], check=True, stdout=subprocess.DEVNULL)
    return next(into.glob("llama_cpp_python-*.tar.gz"))


def build(cmake_args: list[str], jobs: int | None = None) -> Path:
    """Build ``llama-server`` (target only, static) and keep the converter, unless both are there already;
    returns the binary. The sdist's sha256 is written beside it (``sdist.sha256``)."""
    home = engine_home()
    binary = home / "llama-server"
    if binary.is_file() and (home / "convert" / "convert_hf_to_gguf.py").is_file():
        return binary
    version = engine_version()
    started = time.perf_counter()
    print(f"building llama.cpp's llama-server from llama-cpp-python {version}'s sources into {home} "
          f"(once per machine: minutes)", file=sys.stderr, flush=True)
    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llama-server-", dir=home) as tmp:
        sdist = _sdist(version, Path(tmp))
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
            tar.extractall(Path(tmp) / "src", members=members, filter="data")
        source = next((Path(tmp) / "src").glob("*/vendor/llama.cpp"))
        convert = Path(tmp) / "convert"
        convert.mkdir()
        for name in CONVERTER_FILES:
            (shutil.copytree if (source / name).is_dir() else shutil.copy2)(source / name, convert / name)
        if not binary.is_file():
            flags = [*cmake_args, "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
                     "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON",
                     "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
                     "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF"]
            generator = ["-G", "Ninja"] if shutil.which("ninja") else []
            tree = Path(tmp) / "build"
            subprocess.run(["cmake", "-S", str(source), "-B", str(tree), *generator, *flags], check=True,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["cmake", "--build", str(tree), "--target", "llama-server", "-j",
                            str(jobs or len(os.sched_getaffinity(0)) or 1)], check=True, stdout=subprocess.DEVNULL)
            built = next(tree.rglob("bin/llama-server"))
            os.replace(built, binary)  # into place whole: a half-built engine is never found
            (home / "cmake_args").write_text(" ".join(flags) + "\n")
        shutil.rmtree(home / "convert", ignore_errors=True)
        os.replace(convert, home / "convert")
        (home / "sdist.sha256").write_text(digest + "\n")
    print(f"llama-server built in {time.perf_counter() - started:.0f} s: {binary}", file=sys.stderr)
    return binary


if __name__ == "__main__":  # `make install`: the flags come as the Makefile passes them to llama-cpp-python's build
    build(os.environ.get("CMAKE_ARGS", "").split())
