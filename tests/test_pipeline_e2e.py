"""End to end: `dvc repro` of the whole pipeline (AgentWrite, training, evaluation) in a fresh DVC repo on a
tiny params file, against the real embedded llama.cpp server and a really trained checkpoint; then a no-op
rerun and a forced rerun of every model-calling stage served from the response cache. The DVC workflows on the
same run are test_pipeline_workflows.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
from e2e_pipeline import EVAL_STAGES, LLM_STAGES, copy_pipeline, dvc, metrics, server_starts

from longwriter.failures import Failures
from longwriter.judge import DIMENSIONS
from longwriter.llm.local import checkpoint_identity
from longwriter.schemas import (
    Answers,
    Chat,
    Comparisons,
    Instructions,
    JudgeRatings,
    LongSamples,
    Pairs,
    Plans,
    Scores,
    Sections,
    validate,
)


@pytest.fixture(scope="module")
def repo(reproduced_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_pipeline(reproduced_pipeline, tmp_path_factory.mktemp("e2e") / "repo")


def test_repro_produces_valid_tables_and_metrics(repo, tmp_path):
    selected = validate(pl.read_parquet(repo / "data/selected.parquet"), Instructions, "selected")
    plans = validate(pl.read_parquet(repo / "data/plans.parquet"), Plans, "plans")
    sections = validate(pl.read_parquet(repo / "data/sections.parquet"), Sections, "sections")
    samples = validate(pl.read_parquet(repo / "data/long_samples.parquet"), LongSamples, "samples")
    for stage in ("select", "plan", "write", "postprocess", "general", "dpo_pairs", *EVAL_STAGES):
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
        assert m["sent_calls"] > 0 and m["failed_calls"] == 0 and m["completion_tokens"] > 0
    shown = dvc("metrics", "show", cwd=repo)
    for stage in ("select", "plan", "write", "postprocess", "export"):
        assert f"metrics/{stage}.json" in shown
    # the same samples as a Hugging Face dataset, one shard per row here
    from datasets import load_dataset

    # the test's own datasets cache: an earlier or a concurrent run's dataset info would be checked against it
    exported = load_dataset(str(repo / "data" / "hf_dataset"), cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert exported["id"] == samples["id"].to_list() and metrics(repo, "export")["shards"] == samples.height


def test_every_row_is_accounted_for_and_a_lost_row_is_found(repo, tmp_path):
    from longwriter.conservation import check, render

    flows = check(repo)
    assert {f.stage for f in flows} >= {"select", "plan", "write", "postprocess", "general", "mix", "dpo_pairs",
                                        "grpo", "ruler", "longbench_answer", "longbench", "compare", "segments",
                                        "nll"}
    assert all(f.ok for f in flows), render(flows)
    # dpo_pairs: the tiny instructions ask more than its ceiling; length_target: off, it looks at nothing
    assert all(f.inputs for f in flows if f.stage not in ("dpo_pairs", "length_target")), render(flows)
    # the same run with one failures row lost and one output row also given a failures row: both are found
    copy = tmp_path / "run"
    shutil.copytree(repo / "data", copy / "data")
    shutil.copy(repo / "dvc.yaml", copy / "dvc.yaml")
    shutil.copy(repo / "params.yaml", copy / "params.yaml")
    select = pl.read_parquet(copy / "data/failures/select.parquet")
    lost = select.filter(pl.col("section").is_null())["instruction_id"][0]
    chosen = pl.read_parquet(copy / "data/selected.parquet")["id"][0]
    twice = select.head(1).with_columns(pl.lit(chosen).alias("instruction_id"))
    pl.concat([select.filter(pl.col("instruction_id") != lost), twice]).write_parquet(
        copy / "data/failures/select.parquet")
    flow = next(f for f in check(copy) if f.stage == "select")
    assert flow.neither == {lost} and flow.both == {chosen} and not flow.ok
    assert "FAILED" in flow.line() and lost in flow.line()


def test_training_stages_train_real_checkpoints(repo):
    from transformers import AutoModelForCausalLM

    assert metrics(repo, "base")["parameters"] == AutoModelForCausalLM.from_pretrained(
        str(repo / "tiny-base")).num_parameters()
    general = validate(pl.read_parquet(repo / "data/general_chat.parquet"), Chat, "general")
    general_failed = pl.read_parquet(repo / "data/failures/general.parquet")
    assert general.height + general_failed.height == 3 and general.height >= 1
    mix = metrics(repo, "mix")
    assert mix["train"]["long"]["examples"] + mix["validation"]["long"]["examples"] >= 1
    for split in ("train", "validation"):
        validate(pl.read_parquet(repo / f"data/mix/{split}.parquet"), Chat, split)
    sft = metrics(repo, "sft")
    assert sft["steps"] == 2 and sft["train_loss_first"] > 0 and sft["train_tokens"] > 0
    pairs = validate(pl.read_parquet(repo / "data/dpo_pairs.parquet"), Pairs, "pairs")
    dp = metrics(repo, "dpo_pairs")
    assert dp["pairs"] == pairs.height
    assert dp["samples"] == 2 * (dp["prompts"] - dp["over_ceiling"] - dp["no_required_length"])
    dpo = metrics(repo, "dpo")
    assert dpo["trained"] == (pairs.height > 0)
    for name in ("base", "sft", "dpo"):
        assert (repo / "models" / name / "model.safetensors").is_file()
    AutoModelForCausalLM.from_pretrained(str(repo / "models" / "dpo"))
    assert "step" in (repo / "plots" / "sft_loss.csv").read_text()


def test_evaluation_stages_write_tables_metrics_and_plots(repo):
    ruler = validate(pl.read_parquet(repo / "data/eval/ruler_answers.parquet"), Answers, "ruler")
    assert ruler.height == 12 and set(ruler["model"]) == {"a", "b", "c"}  # 4 requests x 3 models
    r = metrics(repo, "ruler")
    for name in ("a", "b", "c"):
        assert r[name]["answers"] == 4 and r[name]["failed"] == 0 and r[name]["requests"] == 4
        assert r[name]["mean_words_answered"] == r[name]["mean_words"]  # nothing failed: the same means
        assert set(r[name]["mean_words"]) == {"100", "300"}
        assert r[name]["max_output_length"] in (0, 100, 300)
        assert r[name]["llm"]["calls"] == 4
    # a and b were asked; c (grpo's checkpoint) too, unless its one step left sft's weights as they were (both
    # completions rewarded alike: no advantage, no update), when c is b by content and b's answers are its own
    unchanged = checkpoint_identity(str(repo / "models/grpo")) == checkpoint_identity(str(repo / "models/sft"))
    assert [r[name]["llm"]["sent_calls"] for name in ("a", "b", "c")] == [4, 4, 0 if unchanged else 4]
    scores = validate(pl.read_parquet(repo / "data/eval/longbench_scores.parquet"), Scores, "scores")
    assert scores.height == 6
    assert metrics(repo, "longbench_answer")["requests"] == {"in_file": 2, "asked": 2, "left_out_by_per_lang": 0,
                                                             "no_length": 0, "length_targets": 0}
    lb = metrics(repo, "longbench")
    for name in ("a", "b", "c"):
        m = lb[name]
        assert m["answers"] == 2 and m["unanswered"] == 0
        assert set(m["buckets"]) == {"0-500", "500-2k"} and set(m["lang"]) == {"en", "zh"}
        assert m["judged"] + m["judge_failed"] == 2
        if m["judged"]:
            assert 0 <= m["S_q"] <= 100 and m["S"] == pytest.approx((m["S_l"] + m["S_q"]) / 2, abs=0.01)
    judged = scores.filter(pl.col("quality_score").is_not_null())
    for dim in ("relevance", "accuracy", "coherence", "clarity", "breadth_and_depth", "reading_experience"):
        assert judged[dim].is_between(1, 5).all()
    ag = metrics(repo, "agreement")
    both = validate(pl.read_parquet(repo / "data/eval/agreement.parquet"), JudgeRatings, "agreement")
    assert ag["sampled"] == min(2, judged.height) and ag["rated_by_both"] + ag["reference_failed"] == ag["sampled"]
    assert both.height == 2 * ag["rated_by_both"] and set(ag["dimensions"]) == set(DIMENSIONS)
    validate(pl.read_parquet(repo / "data/failures/agreement.parquet"), Failures, "agreement")
    comparisons = validate(pl.read_parquet(repo / "data/eval/compare.parquet"), Comparisons, "compare")
    assert comparisons.height == 2
    assert set(metrics(repo, "compare")["a_vs_b"]) >= {"win_rate", "tie_rate", "loss_rate", "judged"}
    assert metrics(repo, "compare")["left_out_by_requests"] == 0  # 2 requests, compare.requests 4
    for name in ("ruler.csv", "ruler.png", "longbench.csv", "longbench.png"):
        assert (repo / "plots" / name).stat().st_size > 0
    assert (repo / "plots" / "ruler.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dvc("plots", "show", "-o", "plots-html", cwd=repo)
    html = (repo / "plots-html" / "index.html").read_text()
    assert "ruler.csv" in html and "longbench.csv" in html and "ruler.png" in html and "sft_loss.csv" in html
    shown = dvc("metrics", "show", cwd=repo)
    assert "metrics/ruler.json" in shown and "a.max_output_length" in shown


def test_grpo_trains_from_sft_and_is_evaluated(repo):
    g = metrics(repo, "grpo")
    # the tiny pool's two prompts (the selected instructions ask more than 96 tokens hold: left out, recorded)
    assert g["start"] == "sft" and g["steps"] == 1 and g["prompts"] >= 2
    assert set(g["left_out"]) <= {"over_max_length", "no_required_length"}
    for key in ("reward", "length", "quality", "repetition", "overlong", "completion_length", "clipped_ratio"):
        assert key in g["last"]
    assert g["completions"] == 2 and g["judge_llm"]["calls"] >= 2  # one group of 2, each judged (re-asks add)
    failures = validate(pl.read_parquet(repo / "data/failures/grpo.parquet"), Failures, "grpo")
    assert failures.height == sum(g["left_out"].values()) + g["judge_failed"]
    assert (repo / "models/grpo/model.safetensors").is_file()
    curve = pl.read_csv(repo / "plots/grpo_rewards.csv")
    assert curve["step"].to_list() == [1] and curve["reward"].is_not_null().all()
    assert "c" in metrics(repo, "longbench") and "c" in metrics(repo, "ruler")



def test_second_repro_does_nothing(repo):
    out = dvc("repro", cwd=repo)
    assert "didn't change, skipping" in out and "Running stage" not in out


def test_forced_repro_pays_for_nothing(repo):
    before = pl.read_parquet(repo / "data/sections.parquet").drop("latency_s")
    starts = server_starts(repo)
    assert starts >= 3  # select, plan and write each started the embedded server on their first paid call
    dvc("repro", "-f", "-s", *LLM_STAGES, cwd=repo)
    assert server_starts(repo) == starts  # every call was cached: no server was started
    for stage in ("select", "plan", "write", "general"):
        m = metrics(repo, stage)["llm"]
        assert m["sent_calls"] == 0 and m["cache_hit_rate"] == 1.0, (stage, m)
    asked = 0
    for m in (metrics(repo, "ruler")["a"]["llm"], metrics(repo, "ruler")["b"]["llm"],
              metrics(repo, "longbench_answer")["b"]["llm"], metrics(repo, "dpo_pairs")["generation_llm"],
              metrics(repo, "dpo_pairs")["judge_llm"], metrics(repo, "longbench")["judge_llm"],
              metrics(repo, "compare")["judge_llm"], metrics(repo, "agreement")["llm"]):
        # every call answered from the cache (a stage may have had nothing to ask: dpo_pairs' judge when every
        # sample of the tiny model was cut off)
        assert m["sent_calls"] == 0 and m["cache_hits"] == m["calls"], m
        asked += m["calls"]
    assert asked > 0
    after = pl.read_parquet(repo / "data/sections.parquet").drop("latency_s")
    assert after.equals(before)
    assert "didn't change" in dvc("status", cwd=repo) or "up to date" in dvc("status", cwd=repo)


# ------------------------------------------------------------------ DVC workflows on the repo above
