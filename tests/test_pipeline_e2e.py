"""End to end: `dvc repro` of the AgentWrite stages and the evaluation stages in a fresh DVC repo on a tiny params
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

from longwriter.schemas import (
    Answers,
    Comparisons,
    Failures,
    Instructions,
    LongSamples,
    Plans,
    Scores,
    Sections,
    validate,
)

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
    # two names for the same model: the second is served entirely from the first one's cached answers
    "eval": {"models": [{"name": "a", "spec": EMBEDDED}, {"name": "b", "spec": EMBEDDED}],
             "sampling": {"temperature": 0.5, "top_p": 1.0, "max_tokens": 96, "seed": 0}},
    "ruler": {"input": "data/eval/ruler.jsonl", "lengths": [100, 300], "reach": 0.8},
    "longbench": {"input": "data/eval/longbench.jsonl"},
    "judge": {"model": EMBEDDED, "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 256, "seed": 0},
              "max_attempts": 3, "max_answer_words": None},
    "compare": {"pairs": [["a", "b"]]},
}
EVAL_STAGES = ("ruler", "longbench_answer", "longbench", "compare")


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
    (repo / "data" / "eval").mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "tiny_ruler.jsonl", repo / "data" / "eval" / "ruler.jsonl")
    shutil.copy(ROOT / "tests" / "fixtures" / "tiny_longbench.jsonl", repo / "data" / "eval" / "longbench.jsonl")
    shutil.copytree(ROOT / ".dvc" / "plots", repo / "plot-templates")
    (repo / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS, sort_keys=False))
    (repo / ".gitignore").write_text(".llm-cache/\n")
    sh(["git", "init", "-q"], repo)
    dvc("init", "-q", cwd=repo)
    shutil.copytree(repo / "plot-templates", repo / ".dvc" / "plots", dirs_exist_ok=True)
    dvc("repro", cwd=repo)
    return repo


def test_repro_produces_valid_tables_and_metrics(repo):
    selected = validate(pl.read_parquet(repo / "data/selected.parquet"), Instructions, "selected")
    plans = validate(pl.read_parquet(repo / "data/plans.parquet"), Plans, "plans")
    sections = validate(pl.read_parquet(repo / "data/sections.parquet"), Sections, "sections")
    samples = validate(pl.read_parquet(repo / "data/long_samples.parquet"), LongSamples, "samples")
    for stage in ("select", "plan", "write", "postprocess", *EVAL_STAGES):
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


def test_evaluation_stages_write_tables_metrics_and_plots(repo):
    ruler = validate(pl.read_parquet(repo / "data/eval/ruler_answers.parquet"), Answers, "ruler")
    assert ruler.height == 8 and set(ruler["model"]) == {"a", "b"}  # 4 requests x 2 models
    assert ruler.filter(pl.col("model") == "a").drop("model", "latency_s").equals(
        ruler.filter(pl.col("model") == "b").drop("model", "latency_s"))
    r = metrics(repo, "ruler")
    for name in ("a", "b"):
        assert r[name]["answers"] == 4 and r[name]["failed"] == 0
        assert set(r[name]["mean_words"]) == {"100", "300"}
        assert r[name]["max_output_length"] in (0, 100, 300)
    assert r["a"]["llm"]["paid_calls"] == 4 and r["b"]["llm"]["paid_calls"] == 0  # b: all from the cache
    scores = validate(pl.read_parquet(repo / "data/eval/longbench_scores.parquet"), Scores, "scores")
    assert scores.height == 4
    lb = metrics(repo, "longbench")
    for name in ("a", "b"):
        m = lb[name]
        assert m["answers"] == 2 and m["unanswered"] == 0
        assert set(m["buckets"]) == {"0-500", "500-2k"} and set(m["lang"]) == {"en", "zh"}
        assert m["judged"] + m["judge_failed"] == 2
        if m["judged"]:
            assert 0 <= m["S_q"] <= 100 and m["S"] == pytest.approx((m["S_l"] + m["S_q"]) / 2, abs=0.01)
    judged = scores.filter(pl.col("quality_score").is_not_null())
    for dim in ("relevance", "accuracy", "coherence", "clarity", "breadth_and_depth", "reading_experience"):
        assert judged[dim].is_between(1, 5).all()
    comparisons = validate(pl.read_parquet(repo / "data/eval/compare.parquet"), Comparisons, "compare")
    assert comparisons.height == 2
    assert set(metrics(repo, "compare")["a_vs_b"]) >= {"win_rate", "tie_rate", "loss_rate", "judged"}
    for name in ("ruler.csv", "ruler.png", "longbench.csv", "longbench.png"):
        assert (repo / "plots" / name).stat().st_size > 0
    assert (repo / "plots" / "ruler.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dvc("plots", "show", "-o", "plots-html", cwd=repo)
    html = (repo / "plots-html" / "index.html").read_text()
    assert "ruler.csv" in html and "longbench.csv" in html and "ruler.png" in html
    shown = dvc("metrics", "show", cwd=repo)
    assert "metrics/ruler.json" in shown and "a.max_output_length" in shown


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
    for m in (metrics(repo, "ruler")["a"]["llm"], metrics(repo, "longbench_answer")["a"]["llm"],
              metrics(repo, "longbench")["judge_llm"], metrics(repo, "compare")["judge_llm"]):
        assert m["paid_calls"] == 0 and m["cache_hit_rate"] == 1.0, m
    after = pl.read_parquet(repo / "data/sections.parquet").drop("latency_s")
    assert after.equals(before)
    assert "didn't change" in dvc("status", cwd=repo) or "up to date" in dvc("status", cwd=repo)
