"""One coherent GPU lock: requirements/gpu.txt pins what requirements/cpu.lock pins (the packages vLLM forces
aside, listed below and in the Makefile), with hashes, a vLLM inside TRL's declared range, and a GPU install that
builds llama.cpp with the CPU install's portable flags. Pure parsing, and `make -n` where make is at hand."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parent.parent
CPU_LOCK = ROOT / "requirements" / "cpu.lock"
GPU_LOCK = ROOT / "requirements" / "gpu.txt"
MAKEFILE = ROOT / "Makefile"

# The packages whose GPU pin may differ from the CPU lock's, and why; nothing else may differ.
ALLOWED_TO_DIFFER = {
    # every vLLM from 0.23.0 (0.30.0 included) requires fastapi[standard]>=0.133.0,<0.137.0; the CPU lock has
    # 0.165.0 (through llama-cpp-python[server], which accepts either)
    "fastapi",
    # vLLM >= 0.27.0 requires mistral-common[image]>=1.11.6, which requires numpy<2.4 on Python < 3.13; the CPU
    # lock has 2.4.6. The vLLMs without it (0.22-0.26) pin torch 2.11.0, not the CPU lock's 2.13.0.
    "numpy",
}

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", flags=re.MULTILINE)


def _pins(path: Path) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in _PIN.findall(path.read_text(encoding="utf-8"))}


def _makefile_var(name: str) -> str:
    found = re.search(rf"^{name}\s*[:?]?=\s*(.*)$", MAKEFILE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert found, f"no {name} in the Makefile"
    return found.group(1).strip()


def test_the_gpu_lock_pins_the_cpu_locks_versions_but_for_the_documented_few() -> None:
    cpu, gpu = _pins(CPU_LOCK), _pins(GPU_LOCK)
    both = cpu.keys() & gpu.keys()
    assert {"transformers", "trl", "accelerate", "peft", "datasets", "llama-cpp-python"} <= both
    differ = {name: (cpu[name], gpu[name]) for name in both if cpu[name] != gpu[name]}
    assert set(differ) == ALLOWED_TO_DIFFER, f"cpu.lock vs gpu.txt (cpu, gpu): {differ}"
    # the same list the Makefile's `make lock` leaves unconstrained
    assert set(_makefile_var("GPU_LOCK_DIFFERS").split()) == ALLOWED_TO_DIFFER


def test_the_gpu_lock_has_the_cpu_torch_version_in_a_cuda_build() -> None:
    # the CPU lock leaves torch to the Makefile (TORCH) and torch-cpu.txt; the GPU lock holds its CUDA build
    cpu_torch = Version(_pins(ROOT / "requirements" / "torch-cpu.txt")["torch"]).public
    assert _makefile_var("TORCH") == f"torch=={cpu_torch}"
    gpu = _pins(GPU_LOCK)
    assert gpu["torch"] == cpu_torch
    assert any(name.startswith("nvidia-") for name in gpu)


def test_every_gpu_pin_has_a_hash() -> None:
    text = GPU_LOCK.read_text(encoding="utf-8")
    blocks = [b for b in re.split(r"^(?=[A-Za-z0-9])", text, flags=re.MULTILINE) if "==" in b]
    assert len(blocks) == len(_pins(GPU_LOCK)) > 100
    unhashed = [b.split("==")[0] for b in blocks if not re.search(r"--hash=sha256:[0-9a-f]{64}", b)]
    assert not unhashed, f"pins without a hash (pip --require-hashes refuses the file): {unhashed}"


def test_vllm_is_inside_the_range_trls_vllm_extra_declares() -> None:
    pinned_trl = _pins(GPU_LOCK)["trl"]
    installed = importlib.metadata.version("trl")
    assert installed == pinned_trl, f"installed trl {installed} is not the locked {pinned_trl} (run make install)"
    declared = [Requirement(r) for r in importlib.metadata.requires("trl") or []]
    vllm = [r for r in declared if canonicalize_name(r.name) == "vllm" and r.marker
            and r.marker.evaluate({"extra": "vllm"}) and not r.marker.evaluate({"extra": ""})]
    assert len(vllm) == 1 and vllm[0].specifier, f"trl declares no ranged vllm extra: {vllm}"
    pinned = _pins(GPU_LOCK)["vllm"]
    assert vllm[0].specifier.contains(pinned, prereleases=True), f"vllm {pinned} outside trl's {vllm[0].specifier}"


def _dry_run(target: str, *args: str) -> list[str]:
    drop = ("VIRTUAL_ENV", "PYTHON", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    done = subprocess.run(["make", "--no-print-directory", "-n", target, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True)
    # one line per command: continuation lines joined, runs of spaces collapsed
    return [" ".join(line.split()) for line in done.stdout.replace("\\\n", " ").splitlines()]


def _cmake_args(lines: list[str]) -> str:
    """The flags both llama.cpp builds get: llama-cpp-python's (the embedded server) and llama-server's
    (``longwriter.llm.llama_cpp_engine``, provider local), which must be the same."""
    found = [m.group(1) for line in lines for m in [re.search(r'CMAKE_ARGS="([^"]*)"', line)] if m]
    assert len(found) == 2 and found[0] == found[1], lines
    assert any("-m longwriter.llm.llama_cpp_engine" in line for line in lines), lines
    return found[0]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_gpu_install_builds_llama_cpp_with_the_portable_flags() -> None:
    portable = _makefile_var("LLAMA_CMAKE_ARGS")
    assert "-DGGML_NATIVE=OFF" in portable.split()
    assert _cmake_args(_dry_run("install")) == portable
    gpu = _dry_run("install-gpu")
    assert _cmake_args(gpu) == portable
    assert any("--require-hashes -r requirements/gpu.txt" in line for line in gpu)
    # a CUDA build adds to the portable flags instead of replacing them
    assert _cmake_args(_dry_run("install-gpu", "LLAMA_GPU_CMAKE_ARGS=-DGGML_CUDA=on")) == f"{portable} -DGGML_CUDA=on"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_lock_compiles_the_gpu_lock_with_hashes_against_the_cpu_pins() -> None:
    compile_gpu = [line for line in _dry_run("lock") if "uv pip compile" in line and "requirements/gpu.txt" in line]
    assert len(compile_gpu) == 1
    assert "--generate-hashes" in compile_gpu[0] and "--constraint" in compile_gpu[0]
    assert GPU_LOCK.read_text(encoding="utf-8").startswith(
        "# This file was autogenerated by uv via the following command:\n#    make lock\n")
