"""The DVC workflows a user runs on the pipeline, on a copy of the end-to-end run (conftest.py's
``reproduced_pipeline``): push and pull, a param change on a branch, exactly the stages a param reads, `dvc exp
run` and a queued sweep on the response cache, and the README's imports of the public files."""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import io
import json
import re
import shlex
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
import yaml
from e2e_pipeline import (
    EVAL_STAGES,
    ROOT,
    TINY_PARAMS,
    copy_pipeline,
    dvc,
    git,
    metrics,
    server_starts,
    sh,
    stages_run,
)
from tiny_repo import FIXTURES, make_repo
from wildchat import shard_from_pool


@pytest.fixture(scope="module")
def repo(reproduced_pipeline: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_pipeline(reproduced_pipeline, tmp_path_factory.mktemp("workflows") / "repo")


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
    (("judge", "max_attempts"), 3, {"longbench", "compare", "dpo_pairs", "agreement", "segments", "grpo",
                                    "criteria", "length_target"}),
    (("sft", "train", "learning_rate"), 1e-4, {"sft"}),                     # no data generation
    (("write", "mode"), "parallel", {"write", "export"}),  # the dataset card names the mode
    (("eval", "sampling", "max_tokens"), 64, {"ruler", "longbench_answer", "criteria"}),
    # how many requests are in flight changes no output, except select's judging windows (llm/spec.py)
    (("llm", "max_concurrency"), 2, {"select"}),
    (("llm", "max_retries"), 3, {"select", "plan", "write", "general", "dpo_pairs", "grpo", *EVAL_STAGES,
                                 "agreement", "segments", "criteria", "length_target"}),
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
    # generation or training stage ran after it; length_target reads longbench.input (off: the same empty table)
    assert {"ruler", "longbench_answer"} <= ran <= {"select", "length_target", *EVAL_STAGES}, out
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
