"""The tiny end-to-end pipeline: its params, the helpers its tests share, and the one `dvc repro` of it that
both end-to-end modules copy (conftest.py's ``reproduced_pipeline``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tiny_repo import TINY_BASE, add_tiny_base, make_repo, training_params

ROOT = Path(__file__).parent.parent
ROOT = Path(__file__).parent.parent
EMBEDDED = {"provider": "embedded", "n_ctx": 4096}
TINY_PARAMS = {
    "llm": {"cache_dir": ".llm-cache", "max_concurrency": 1, "request_timeout_s": 300, "max_retries": 2},
    "select": {"pools": ["data/pool/instructions.jsonl"], "per_lang": 1, "min_estimated_words": 200,
               "max_required_words": 1000, "selector": EMBEDDED,
               "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "seed": 0}},
    "plan": {"min_paragraphs": 2, "max_paragraphs": 3, "min_words": 60, "max_words": 150, "generator": EMBEDDED,
             "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 300, "seed": 0}},
    "write": {"mode": "sequential", "max_continuations": 1, "generator": EMBEDDED,
              "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 256, "seed": 0}},
    # keep every written answer: training needs at least one long sample
    "postprocess": {"min_words_ratio": 0.0, "max_repetition": 1.0, "min_words": None},
    "export": {"shard_rows": 1},
    "segments": {"parts": 4, "n": 2, "min_words": 20},
    "nll": {"min_tokens": 16, "window": 256, "max_texts": 2, "positions": [8, 16]},
    "agreement": {"reference": EMBEDDED, "sample": 2, "bootstrap": 50},
    **training_params(EMBEDDED),
    "base": TINY_BASE,  # trained and served by the same code as the 135M model, in seconds
    # the embedded model and the checkpoint SFT just trained, served by transformers in-process
    "eval": {"models": [{"name": "a", "spec": EMBEDDED},
                        {"name": "b", "spec": {"provider": "local", "path": "models/sft", "max_batch": 4}},
                        {"name": "c", "spec": {"provider": "local", "path": "models/grpo", "max_batch": 4}}],
             "sampling": {"temperature": 0.5, "top_p": 1.0, "max_tokens": 96, "seed": 0}},
    # every request of the tiny file (2 per length), under the eval ceiling's 96 tokens
    "ruler": {"input": "data/eval/ruler.jsonl", "lengths": [100, 300], "per_length": None, "reach": 0.8,
              "max_tokens": 96},
    "longbench": {"input": "data/eval/longbench.jsonl"},
    "judge": {"model": EMBEDDED, "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 256, "seed": 0},
              "max_attempts": 2, "max_answer_words": None},
    "compare": {"pairs": [["a", "b"]]},
    # off as in the laptop default: the stage runs and writes its empty outputs (tests/test_criteria.py runs it on)
    "criteria": {"enabled": False, "input": "data/eval/criteria.jsonl"},
    # off as in the laptop default: an empty targets table (tests/test_length_target.py runs it on)
    "length_target": {"enabled": False},
}
EVAL_STAGES = ("ruler", "longbench_answer", "longbench", "compare")
LLM_STAGES = ("select", "plan", "write", "general", "dpo_pairs", *EVAL_STAGES, "agreement")


def sh(args: list[str], cwd: Path, timeout: int = 900) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dvc(*args: str, cwd: Path) -> str:
    return sh([sys.executable, "-m", "dvc", *args], cwd)


def stages_run(repro_output: str) -> set[str]:
    """The stages a ``dvc repro`` / ``dvc exp run`` ran, from its output."""
    return {line.split("'")[1] for line in repro_output.splitlines() if line.startswith("Running stage")}


def metrics(repo: Path, stage: str) -> dict:
    return json.loads((repo / "metrics" / f"{stage}.json").read_text())


def git(*args: str, cwd: Path) -> str:
    return sh(["git", *args], cwd)



def server_starts(repo: Path) -> int:
    return (repo / ".llm-cache" / "embedded-server.log").read_text().count("Uvicorn running on")


def build_pipeline(repo: Path, tokenizer: Any) -> Path:
    """A new DVC repo of the whole pipeline on ``TINY_PARAMS`` at ``repo``, reproduced."""
    make_repo(repo, TINY_PARAMS)
    add_tiny_base(repo, tokenizer)
    dvc("repro", cwd=repo)
    return repo


def copy_pipeline(built: Path, repo: Path) -> Path:
    """A copy of the reproduced repo ``built`` (git, DVC cache, response cache) at ``repo``, for a module to change."""
    shutil.copytree(built, repo, symlinks=True)
    return repo
