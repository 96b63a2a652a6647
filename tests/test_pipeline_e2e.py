"""End to end: `dvc repro` of the whole pipeline (AgentWrite, training, evaluation) in a fresh DVC repo on a
tiny params file, against the real embedded llama.cpp server and a really trained checkpoint; then a no-op
rerun and a forced rerun of every model-calling stage served from the response cache."""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml
from tiny_repo import FIXTURES, TINY_BASE, add_tiny_base, make_repo, training_params
from wildchat import shard_from_pool

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

ROOT = Path(__file__).parent.parent
EMBEDDED = {"provider": "embedded", "n_ctx": 4096}
TINY_PARAMS = {
    "llm": {"cache_dir": ".llm-cache", "max_concurrency": 1, "request_timeout_s": 300, "max_retries": 2},
    "select": {"pools": ["data/pool/instructions.jsonl"], "per_lang": 1, "min_estimated_words": 200,
               "max_required_words": 1000, "selector": EMBEDDED,
               "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "seed": 0}},
    "plan": {"min_paragraphs": 2, "max_paragraphs": 3, "min_words": 60, "max_words": 150, "generator": EMBEDDED,
             "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 400, "seed": 0}},
    "write": {"mode": "sequential", "max_continuations": 1, "generator": EMBEDDED,
              "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": 400, "seed": 0}},
    # keep every written answer: training needs at least one long sample
    "postprocess": {"min_words_ratio": 0.0, "max_repetition": 1.0, "min_words": None},
    "export": {"shard_rows": 1},
    "segments": {"parts": 4, "n": 2, "min_words": 20},
    "nll": {"min_tokens": 16, "window": 256, "max_texts": 2, "positions": [8, 16]},
    "agreement": {"reference": EMBEDDED, "sample": 3, "bootstrap": 50},
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
              "max_attempts": 3, "max_answer_words": None},
    "compare": {"pairs": [["a", "b"]]},
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


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    repo = make_repo(tmp_path_factory.mktemp("e2e"), TINY_PARAMS)
    add_tiny_base(repo, tokenizer)
    dvc("repro", cwd=repo)
    return repo


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
    assert all(f.inputs for f in flows if f.stage not in ("dpo_pairs",)), render(flows)
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
    assert metrics(repo, "longbench_answer")["requests"] == {"in_file": 2, "asked": 2, "left_out_by_per_lang": 0}
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
    assert ag["sampled"] == min(3, judged.height) and ag["rated_by_both"] + ag["reference_failed"] == ag["sampled"]
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


def server_starts(repo: Path) -> int:
    return (repo / ".llm-cache" / "embedded-server.log").read_text().count("Uvicorn running on")


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


def git(*args: str, cwd: Path) -> str:
    return sh(["git", *args], cwd)


@pytest.fixture(scope="module")
def shared(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The repo committed and pushed to a local DVC remote, and a fresh clone of it with everything pulled."""
    base = tmp_path_factory.mktemp("shared")
    remote, clone = base / "remote", base / "clone"
    dvc("remote", "add", "-d", "-f", "local", str(remote), cwd=repo)
    git("add", "-A", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "pipeline", cwd=repo)
    started = time.perf_counter()
    dvc("push", cwd=repo)
    push_s = time.perf_counter() - started
    git("clone", "-q", str(repo), str(clone), cwd=base)
    started = time.perf_counter()
    dvc("pull", cwd=clone)
    pull_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in remote.rglob("*") if p.is_file())
    print(f"dvc push {push_s:.1f} s, pull {pull_s:.1f} s, remote {size / 2**20:.0f} MiB")
    return {"remote": remote, "clone": clone}


def test_push_then_pull_in_a_fresh_clone_restores_every_output(shared):
    clone = shared["clone"]
    assert not (clone / ".llm-cache").exists()  # the response cache is not shared: nothing could be replayed
    assert "up to date" in dvc("status", cwd=clone)
    out = dvc("repro", cwd=clone)
    assert "Running stage" not in out  # no model call, no training step
    for path in ("models/sft/model.safetensors", "data/eval/longbench_scores.parquet", "data/mix/train.parquet"):
        assert (clone / path).is_file(), path


def test_a_param_change_on_a_branch_shows_in_params_and_metrics_diff(shared):
    clone = shared["clone"]
    main = git("rev-parse", "--abbrev-ref", "HEAD", cwd=clone).strip()
    git("checkout", "-q", "-b", "shorter-ruler", cwd=clone)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["ruler"]["lengths"] = [100]
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc("repro", cwd=clone)
    ran = stages_run(out)
    assert ran == {"ruler"}, out  # only the stage that reads the param
    assert "ruler.lengths" in dvc("params", "diff", main, cwd=clone)
    diff = dvc("metrics", "diff", main, cwd=clone)
    assert "metrics/ruler.json" in diff and "a.answers" in diff and "b.answers" in diff
    dvc("plots", "diff", main, "-o", "plots-diff", cwd=clone)
    assert "ruler.csv" in (clone / "plots-diff" / "index.html").read_text()
    git("add", "-A", cwd=clone)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "shorter ruler", cwd=clone)
    git("checkout", "-q", main, cwd=clone)
    dvc("checkout", cwd=clone)
    # the branch's ruler run paid for its answers; switching back restores main's outputs, not the cache's
    assert (clone / ".llm-cache" / "responses.sqlite").is_file()
    assert "up to date" in dvc("status", cwd=clone)


@pytest.mark.parametrize(("key", "value", "expected"), [
    # judging only (pairs are judged; agreement asks the reference with the judge's settings; segments may judge;
    # grpo's quality reward is the judge's)
    (("judge", "max_attempts"), 2, {"longbench", "compare", "dpo_pairs", "agreement", "segments", "grpo"}),
    (("sft", "train", "learning_rate"), 1e-4, {"sft"}),                     # no data generation
    (("write", "mode"), "parallel", {"write", "export"}),  # the dataset card names the mode
    (("eval", "sampling", "max_tokens"), 64, {"ruler", "longbench_answer"}),
    # how many requests are in flight changes no output, except select's judging windows (llm/spec.py)
    (("llm", "max_concurrency"), 2, {"select"}),
    (("llm", "max_retries"), 3, {"select", "plan", "write", "general", "dpo_pairs", "grpo", *EVAL_STAGES,
                                 "agreement", "segments"}),
])
def test_each_param_invalidates_exactly_the_stages_that_read_it(shared, key, value, expected):
    clone = shared["clone"]
    original = (clone / "params.yaml").read_text()
    params = yaml.safe_load(original)
    node = params
    for k in key[:-1]:
        node = node[k]
    node[key[-1]] = value
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = json.loads(sh([sys.executable, "-m", "dvc", "status", "--json"], clone))
    finally:
        (clone / "params.yaml").write_text(original)
    changed_params = {stage for stage, changes in status.items()
                      if any(isinstance(c, dict) and "params.yaml" in c.get("changed deps", {}) for c in changes)}
    assert changed_params == expected and set(status) == expected, status


def test_exp_run_reruns_only_the_stages_that_read_the_param(shared):
    clone = shared["clone"]
    out = dvc("exp", "run", "-S", "ruler.reach=0.3", cwd=clone)
    ran = stages_run(out)
    assert ran == {"ruler"}, out
    shown = dvc("exp", "show", "--csv", cwd=clone)
    assert "a.max_output_length" in shown and "ruler.reach" in shown
    # docs/dvc-workflows.md's key columns, as written
    line = next(x for x in (ROOT / "docs" / "dvc-workflows.md").read_text().splitlines()
                if x.startswith("dvc exp show --drop"))
    rows = list(csv.reader(io.StringIO(dvc(*shlex.split(line, comments=True)[1:], "--csv", cwd=clone))))
    assert set(rows[0]) == {"Experiment", "a.S", "b.S", "c.S", "a.max_output_length", "b.max_output_length",
                            "c.max_output_length", "train_loss_last", "sft.train.learning_rate",
                            "dpo.train.learning_rate", "grpo.train.learning_rate", "write.mode", "ruler.reach"}, rows[0]
    assert len(rows) >= 3  # workspace, baseline, the experiment


def exp_metrics(repo: Path) -> dict[str, dict]:
    """Each experiment's ruler metrics by its ruler.reach, from ``dvc exp show --json``."""
    found = {}
    for baseline in json.loads(dvc("exp", "show", "--json", cwd=repo)):
        for exp in [baseline, *[e for run in baseline.get("experiments") or [] for e in run["revs"]]]:
            data = exp["data"]
            reach = data["params"]["params.yaml"]["data"]["ruler"]["reach"]
            found[reach] = data["metrics"]["metrics/ruler.json"]["data"]
    return found


def test_a_queued_sweep_runs_each_experiment_on_the_workspace_cache(repo, shared):
    # queued experiments run in copies of the workspace under .dvc/tmp/exps; the response cache stays the
    # workspace's, so the sweep pays for nothing already paid for
    starts = server_starts(repo)
    dvc("exp", "run", "--queue", "-S", "ruler.reach=0.25,0.6", cwd=repo)
    out = dvc("exp", "run", "--run-all", cwd=repo)
    found = exp_metrics(repo)
    assert {0.25, 0.6} <= set(found), (found, out)
    for reach in (0.25, 0.6):
        for name in ("a", "b"):
            llm = found[reach][name]["llm"]
            assert llm["sent_calls"] == 0 and llm["cache_hits"] == 4, (reach, name, llm)
    assert server_starts(repo) == starts
    assert "up to date" in dvc("status", cwd=repo)  # the workspace itself is untouched


# ------------------------------------------------------------------ imports, tested as the README writes them

IMPORTED = {  # what the README imports, and the tiny files served under the same paths
    "raw.githubusercontent.com/THUDM/LongWriter/main/evaluation/longbench_write.jsonl": "tiny_longbench.jsonl",
    "raw.githubusercontent.com/THUDM/LongWriter/main/evaluation/longwrite_ruler.jsonl": "tiny_ruler.jsonl",
    "huggingface.co/datasets/allenai/WildChat-1M/resolve/main/data/train-00000-of-00014.parquet": "tiny_pool.jsonl",
}


@contextlib.contextmanager
def serving(root: Path) -> Iterator[str]:
    """A static HTTP server on loopback for ``root`` (what the public hosts serve, offline)."""
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def readme_import_block() -> str:
    """docs/dvc-workflows.md's import commands, as written."""
    readme = (ROOT / "docs" / "dvc-workflows.md").read_text()
    block = re.search(r"\*\*Import public data\.\*\*.*?```bash\n(.*?)```", readme, re.S)
    assert block, "docs/dvc-workflows.md: no 'Import public data' block"
    return block.group(1)


@pytest.fixture(scope="module")
def public_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("public")
    for path, fixture in IMPORTED.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        if path.endswith(".parquet"):
            shard_from_pool(FIXTURES / fixture, root / path)
        else:
            (root / path).write_bytes((FIXTURES / fixture).read_bytes())
    with serving(root) as url:
        yield url


def import_as_readme(repo: Path, url: str) -> dict[str, str]:
    """Run the README's import block in ``repo``, the local server in place of the public hosts; returns each
    imported file's path by its name."""
    block = readme_import_block()
    assert {u.removeprefix("https://") for u in re.findall(r"https://\S+", block)} == set(IMPORTED), block
    script = f'dvc() {{ "{sys.executable}" -m dvc "$@"; }}\n' + block.replace("https://", url)
    sh(["bash", "-euo", "pipefail", "-c", script], repo)
    outs = {}
    for public in IMPORTED:
        name = public.rsplit("/", 1)[1]
        found = [p.relative_to(repo).as_posix() for p in repo.glob(f"data/**/{name}")]
        assert len(found) == 1 and (repo / (found[0] + ".dvc")).is_file(), found
        outs[name] = found[0]
    return outs


def test_imported_benchmark_files_feed_the_evaluation_stages(repo, shared, public_files):
    outs = import_as_readme(repo, public_files)
    before = {stage: metrics(repo, stage) for stage in EVAL_STAGES}
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["ruler"]["input"] = outs["longwrite_ruler.jsonl"]
    params["longbench"]["input"] = outs["longbench_write.jsonl"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc("repro", cwd=repo)
    ran = stages_run(out)
    # the shard imported into data/pool changed select's dependency: select reran to the same table, so no
    # generation or training stage ran after it
    assert {"ruler", "longbench_answer"} <= ran <= {"select", *EVAL_STAGES}, out
    assert metrics(repo, "select")["llm"]["sent_calls"] == 0
    for stage in EVAL_STAGES:  # the same requests, read from the imported files: the same figures, all cached
        after = metrics(repo, stage)
        for name, m in after.items():
            if not isinstance(m, dict):  # a stage-wide count (compare's requests)
                assert m == before[stage][name], (stage, name)
                continue
            for key in ("answers", "S", "S_l", "max_output_length", "mean_words"):
                if key in m:
                    assert m[key] == before[stage][name][key], (stage, name, key)
            for llm in (v for k, v in m.items() if k.endswith("llm")):
                assert llm["sent_calls"] == 0, (stage, name, llm)
    assert "up to date" in dvc("status", cwd=repo)
    dvc("update", outs["longbench_write.jsonl"] + ".dvc", cwd=repo)  # re-fetches only when the source changed
    assert "up to date" in dvc("status", cwd=repo)


def test_an_imported_wildchat_shard_is_an_instruction_pool(repo, shared, public_files, tmp_path):
    # a new project with the same tiny params, the pool a WildChat-1M shard imported as the README shows
    params = {**TINY_PARAMS, "llm": {**TINY_PARAMS["llm"], "cache_dir": str(repo / ".llm-cache")},
              "select": {**TINY_PARAMS["select"], "pools": ["data/pool/wildchat"]}}
    other = make_repo(tmp_path / "other", params)
    outs = import_as_readme(other, public_files)
    assert outs["train-00000-of-00014.parquet"].startswith("data/pool/wildchat")
    dvc("repro", "select", cwd=other)
    chosen = pl.read_parquet(other / "data/selected.parquet")
    expected = pl.read_parquet(repo / "data/selected.parquet")
    # the same prompts chosen from the shard's first user turns as from the JSONL pool, keyed by
    # conversation_hash, every selector call served from the cache the JSONL run paid for
    assert chosen.select("id", "prompt", "lang").equals(expected.select("id", "prompt", "lang"))
    assert set(chosen["source"]) == {"wildchat"}
    m = metrics(other, "select")
    assert m["read"] == 8 and m["llm"]["sent_calls"] == 0 and m["llm"]["calls"] > 0
