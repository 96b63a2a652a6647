"""The two commands in any Python environment (which interpreter `make` installs into and runs with), and the
lockfile they install from: every dependency pinned with hashes, torch aside."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
LOCK = ROOT / "requirements" / "cpu.lock"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _dry_run(target: str, *args: str, env: dict[str, str] | None = None) -> list[str]:
    # as from a shell: no environment chosen, and not inside another make (`make test` runs this suite), whose
    # MAKELEVEL would add "Entering directory" lines
    drop = ("VIRTUAL_ENV", "PYTHON", "MAKELEVEL", "MAKEFLAGS", "MFLAGS")
    base = {k: v for k, v in os.environ.items() if k not in drop}
    done = subprocess.run(["make", "--no-print-directory", "-n", target, *args], cwd=ROOT,
                          env={**base, **(env or {})},
                          capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


def test_no_environment_given_makes_the_project_venv_and_runs_everything_with_it() -> None:
    lines = _dry_run("test")
    venv = ROOT / ".venv"
    assert any("venv" in line and ".venv" in line for line in lines[:2])  # made first (uv venv or python3 -m venv)
    py = f"{venv}/bin/python"
    assert f"{py} -m pip install torch==2.13.0" in lines
    assert any(line.endswith(f"{py} -m pip install --no-cache-dir --no-deps --require-hashes -r requirements/cpu.lock")
               for line in lines)
    assert lines[-1] == f'PATH="{venv}/bin:$PATH" {py} -m pytest'


def test_an_activated_venv_is_used(tmp_path: Path) -> None:
    lines = _dry_run("run", env={"VIRTUAL_ENV": str(tmp_path / "env")})
    py = f"{tmp_path}/env/bin/python"
    assert lines[0] == f"{py} -m pip install torch==2.13.0"  # no venv made
    assert f"{py} -m dvc repro" in lines[-3] and f"{py} -m longwriter.report" in lines[-2]
    assert f"{py} -m longwriter.conservation" in lines[-1]


def test_python_given_wins_and_its_bin_goes_first_on_path(tmp_path: Path) -> None:
    # a virtualenv that is not activated: dvc.yaml's bare `python` must be its interpreter
    lines = _dry_run("test", f"PYTHON={sys.executable}", env={"VIRTUAL_ENV": str(tmp_path / "other")})
    assert lines[0] == f"{sys.executable} -m pip install torch==2.13.0"  # no venv made
    assert not any("other" in line for line in lines)
    assert lines[-1] == f'PATH="{Path(sys.executable).parent}:$PATH" {sys.executable} -m pytest'


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_the_lock_pins_every_dependency_with_hashes_and_leaves_torch_to_the_makefile() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]} - {"torch"}
    text = LOCK.read_text(encoding="utf-8")
    pins = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+) \\$", text, flags=re.MULTILINE))
    assert wanted <= set(pins), f"not in {LOCK.name} (run make lock): {sorted(wanted - set(pins))}"
    assert "torch" not in pins and "pip" not in pins
    # every pin carries at least one hash: pip's --require-hashes refuses the file otherwise
    blocks = re.split(r"^(?=[a-z0-9])", text, flags=re.MULTILINE)
    unhashed = [b.split("==")[0] for b in blocks if "==" in b and "--hash=sha256:" not in b]
    assert not unhashed
    # the llama-cpp-python the Makefile builds is the locked one
    assert pins["llama-cpp-python"] == "0.3.36"
    # the lock resolved torch's own dependencies against its CPU build: no CUDA packages
    assert not [p for p in pins if p.startswith(("nvidia-", "triton"))]


def test_the_gpu_constraints_pin_torch_vllm_and_deepspeed() -> None:
    text = (ROOT / "requirements" / "gpu.txt").read_text(encoding="utf-8")
    pins = dict(re.findall(r"^([a-z0-9][a-z0-9._-]*)==(\S+) \\$", text, flags=re.MULTILINE))  # hashes follow
    assert {"torch", "vllm", "deepspeed", "trl", "transformers", "dvc"} <= set(pins)
