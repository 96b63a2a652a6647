"""End to end: `dvc repro` of select -> plan -> write -> postprocess in a fresh DVC repo on a tiny params
file, against the real embedded llama.cpp server; then a no-op rerun and a forced rerun served from the
response cache."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from longwriter.schemas import Failures, Instructions, LongSamples, Plans, Sections, validate

ROOT = Path(__file__).parent.parent
EMBEDDED = {"provider": "embedded", "n_ctx": 4096}
TINY_PARAMS = {
    "llm": {"cache_dir": ".llm-cache", "max_concurrency": 1, "request_timeout_s": 300, "max_retries": 2},
    "select": {"pools": ["data/pool/instructions.jsonl"], "per_lang": 1, "min_estimated_words": 200,
               "max_required_words": 1000, "selector": EMBEDDED,
               "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "seed": 0}},
    "plan": {"min_paragraphs": 2, "max_paragraphs": 3, "min_words": 60, "max_words": 150, "generator": EMBEDDED,
             "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 400, "seed": 0}},
    "write": {"max_continuations": 1, "generator": EMBEDDED,
              "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 400, "seed": 0}},
    "postprocess": {"min_words_ratio": 0.3, "max_repetition": 0.5},
}


def sh(args: list[str], cwd: Path, timeout: int = 900) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def dvc(*args: str, cwd: Path) -> str:
    return sh([sys.executable, "-m", "dvc", *args], cwd)


def metrics(repo: Path, stage: str) -> dict:
    return json.loads((repo / "metrics" / f"{stage}.json").read_text())


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("e2e")
    for name in ("longwriter", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    (repo / "data" / "pool").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "fixtures" / "tiny_pool.jsonl", repo / "data" / "pool" / "instructions.jsonl")
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS, sort_keys=False))
    (repo / ".gitignore").write_text(".llm-cache/\n")
    sh(["git", "init", "-q"], repo)
    dvc("init", "-q", cwd=repo)
    dvc("repro", cwd=repo)
    return repo


def test_repro_produces_valid_tables_and_metrics(repo):
    selected = validate(pl.read_parquet(repo / "data/selected.parquet"), Instructions, "selected")
    plans = validate(pl.read_parquet(repo / "data/plans.parquet"), Plans, "plans")
    sections = validate(pl.read_parquet(repo / "data/sections.parquet"), Sections, "sections")
    samples = validate(pl.read_parquet(repo / "data/long_samples.parquet"), LongSamples, "samples")
    for stage in ("select", "plan", "write", "postprocess"):
        validate(pl.read_parquet(repo / f"data/failures/{stage}.parquet"), Failures, stage)
    assert 1 <= selected.height <= 2
    assert metrics(repo, "select")["read"] == 8 and metrics(repo, "select")["after_dedup"] == 7
    # real plans and multi-section answers from the embedded model
    assert plans.height >= 2 and plans["instruction_id"].n_unique() >= 1
    assert sections.height >= 2 and sections["words"].sum() > 50
    assert (sections.group_by("instruction_id").len()["len"] >= 2).all()
    post = metrics(repo, "postprocess")
    assert post["kept"] == samples.height
    assert post["kept"] + sum(post["dropped"].values()) == post["written"]
    for stage in ("select", "plan", "write"):
        m = metrics(repo, stage)["llm"]
        assert m["paid_calls"] > 0 and m["failed_calls"] == 0 and m["completion_tokens"] > 0
    shown = dvc("metrics", "show", cwd=repo)
    for stage in ("select", "plan", "write", "postprocess"):
        assert f"metrics/{stage}.json" in shown


def test_second_repro_does_nothing(repo):
    out = dvc("repro", cwd=repo)
    assert "didn't change, skipping" in out and "Running stage" not in out


def server_starts(repo: Path) -> int:
    return (repo / ".llm-cache" / "embedded-server.log").read_text().count("Uvicorn running on")


def test_forced_repro_pays_for_nothing(repo):
    before = pl.read_parquet(repo / "data/sections.parquet").drop("latency_s")
    starts = server_starts(repo)
    assert starts >= 3  # select, plan and write each started the embedded server on their first paid call
    dvc("repro", "-f", cwd=repo)
    assert server_starts(repo) == starts  # every call was cached: no server was started
    for stage in ("select", "plan", "write"):
        m = metrics(repo, stage)["llm"]
        assert m["paid_calls"] == 0 and m["cache_hit_rate"] == 1.0, (stage, m)
    after = pl.read_parquet(repo / "data/sections.parquet").drop("latency_s")
    assert after.equals(before)
    assert "didn't change" in dvc("status", cwd=repo) or "up to date" in dvc("status", cwd=repo)
