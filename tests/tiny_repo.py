"""A throwaway DVC repo of the whole pipeline with tiny inputs, for the end-to-end and secrets tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from longwriter.llm.spec import ClientSettings

ROOT = Path(__file__).parent.parent
FIXTURES = ROOT / "tests" / "fixtures"


def training_params(generator: dict[str, Any]) -> dict[str, Any]:
    """The training stages at the smallest size that still trains: two SFT steps, two DPO steps."""
    return {
        "base": {"model": "embedded", "dtype": "float32", "trust_remote_code": False},
        "general": {"prompts": "data/general/prompts.jsonl", "generator": generator,
                    "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 128, "seed": 0}},
        "mix": {"long": "data/long_samples.parquet", "general": "data/general_chat.parquet",
                "general_per_long": 2.0, "validation_fraction": 0.3, "seed": 0},
        "train": {"launch": "python"},
        "sft": {"eval_steps": None, "train": {"learning_rate": 1e-5, "max_steps": 2, "max_length": 512}},
        "dpo_pairs": {"samples": 2, "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 128, "seed": 0}},
        "dpo": {"train": {"learning_rate": 1e-6, "max_steps": 2, "max_length": 512}},
        # one step of one group of two short completions: the stage runs, trains and is evaluated
        "grpo": {"start": "sft", "pool": "data/rl/prompts.jsonl", "num_generations": 2, "max_completion_length": 96,
                 "overlong_buffer": 16, "train": {"learning_rate": 1e-6, "max_steps": 1,
                                                  "per_device_train_batch_size": 2}},
    }


# the base model of the pipeline tests: a tiny random Llama saved in the repo (see add_tiny_base)
TINY_BASE = {"model": "tiny-base", "dtype": "float32", "trust_remote_code": False}


def add_tiny_base(repo: Path, tokenizer: Any) -> None:
    """Save a 2-layer random Llama with the embedded model's tokenizer as ``repo/tiny-base`` (``TINY_BASE``).

    Every training and local-checkpoint stage then runs the same code as with the 135M model, in seconds: the
    GGUF conversion of the embedded model has its own test (test_local_model.py), and the default run
    (bench/default_run.py) trains the 135M model itself."""
    from conftest import tiny_llama

    from longwriter.train.checkpoint import save_checkpoint

    save_checkpoint(tiny_llama(tokenizer), tokenizer, repo / TINY_BASE["model"])


def make_repo(repo: Path, params: dict[str, Any]) -> Path:
    """Code, dvc.yaml, plot templates and tiny inputs in a new git + DVC repo at ``repo``."""
    for name in ("longwriter", "stages", "configs"):  # configs: the launcher files are the training stages' deps
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    inputs = {"tiny_pool.jsonl": "data/pool/instructions.jsonl", "tiny_ruler.jsonl": "data/eval/ruler.jsonl",
              "tiny_longbench.jsonl": "data/eval/longbench.jsonl", "tiny_general.jsonl": "data/general/prompts.jsonl",
              "tiny_rl.jsonl": "data/rl/prompts.jsonl"}
    for fixture, target in inputs.items():
        (repo / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(FIXTURES / fixture, repo / target)
    shutil.copy(ROOT / "data" / "eval" / "criteria.jsonl", repo / "data" / "eval" / "criteria.jsonl")
    # dvc.yaml declares llm keys one by one, and DVC refuses a declared key params.yaml lacks: the defaults fill in
    declared = {p.split(".", 1)[1] for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values()
                for p in stage.get("params") or [] if p.startswith("llm.")}
    defaults = ClientSettings()
    params = {**params, "llm": {**{k: getattr(defaults, k) for k in sorted(declared)}, **(params.get("llm") or {})}}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text(".llm-cache/\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=repo, check=True)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots", dirs_exist_ok=True)
    return repo


def chat_frame(conversations: list[list[dict[str, str]]], prefix: str) -> Any:
    """A ``Chat`` table (mix's output) of ``conversations``, ids ``<prefix>-<i>``, every row a long sample."""
    import polars as pl

    from longwriter.schemas import MESSAGES

    return pl.DataFrame({"id": [f"{prefix}-{i}" for i in range(len(conversations))],
                         "source": ["long"] * len(conversations), "messages": conversations},
                        schema_overrides={"messages": MESSAGES})
