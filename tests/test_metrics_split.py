"""write_metrics: a stage's results go to metrics/<stage>.json, its timing figures (which change on every run) to
metrics/timings/<stage>.json, so `dvc metrics diff` after a rerun shows only results that changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from longwriter.files import is_timing_key, split_metrics, timings_path, write_metrics
from longwriter.llm.client import CallStats

ROOT = Path(__file__).parent.parent
# every timing key name the stages write today (LLM call stats, trainers' wall time and throughput, base's seconds)
TIMING_NAMES = {"sent_seconds", "sent_tokens_per_s", "runtime_s", "tokens_per_s", "seconds"}


def leaves(obj: Any, path: tuple = ()) -> dict[tuple, Any]:
    if isinstance(obj, dict) and (obj or not path):  # a nested empty dict is a leaf
        return {p: v for k, value in obj.items() for p, v in leaves(value, (*path, k)).items()}
    return {path: obj}


@pytest.mark.parametrize("key", ["runtime_s", "sent_seconds", "sent_tokens_per_s", "tokens_per_s", "seconds",
                                 "latency_s", "latency", "p50_latency_ms", "wall_time", "throughput", "rows_per_s",
                                 "elapsed_seconds", "train_runtime", "duration"])
def test_timing_keys(key: str) -> None:
    assert is_timing_key(key)


@pytest.mark.parametrize("key", ["S", "S_l", "S_q", "S_l_effective", "sections_short", "too_short", "truncated_share",
                                 "degenerate_share", "mean_words", "completion_tokens", "steps", "cost_usd",
                                 "max_output_length", "words_by_lang", "labels_stripped", "first_shown_win_share",
                                 "tail_slope_per_1k", "judge_llm", "cache_hits", "s", "", 100])
def test_result_keys(key: Any) -> None:
    assert not is_timing_key(key)


@pytest.mark.parametrize("path", sorted((ROOT / "metrics").glob("*.json")), ids=lambda p: p.name)
def test_on_every_committed_metrics_file_only_timings_are_caught(path: Path) -> None:
    metrics = json.loads(path.read_text(encoding="utf-8"))
    results, timings = split_metrics(metrics)
    caught, kept, every = leaves(timings), leaves(results), leaves(metrics)
    assert {p[-1] for p in caught} <= TIMING_NAMES, caught
    assert not any(name in TIMING_NAMES for p in kept for name in p), kept  # none left behind
    assert caught | kept == every and not set(caught) & set(kept)  # nothing lost, nothing twice


def test_every_timing_of_the_llm_stats_and_nothing_else() -> None:
    stats = CallStats(calls=3, cache_hits=1, sent_calls=2, sent_completion_tokens=40, sent_seconds=2.5)
    results, timings = split_metrics({"llm": stats.as_metrics()})
    assert timings == {"llm": {"sent_seconds": 2.5, "sent_tokens_per_s": 16.0}}
    assert results["llm"]["cache_hits"] == 1 and "sent_seconds" not in results["llm"]


def test_split_is_recursive_and_leaves_its_input_alone() -> None:
    metrics = {"base": {"S": 44.26, "llm": {"calls": 16, "sent_seconds": 3184.8}},
               "timing": {"runtime_s": 1.0},          # emptied by the split: left out of the results
               "latency": {"p50": 0.1, "p90": 0.3},   # a timing key: its whole value moves
               "empty": {},                           # empty to begin with: kept
               "runs": [{"mode": "a", "seconds": 1.0}, {"mode": "b"}], "interval": [1.0, 2.0]}
    before = json.loads(json.dumps(metrics))
    results, timings = split_metrics(metrics)
    assert metrics == before
    assert results == {"base": {"S": 44.26, "llm": {"calls": 16}}, "empty": {},
                       "runs": [{"mode": "a"}, {"mode": "b"}], "interval": [1.0, 2.0]}
    assert timings == {"base": {"llm": {"sent_seconds": 3184.8}}, "timing": {"runtime_s": 1.0},
                       "latency": {"p50": 0.1, "p90": 0.3}, "runs": [{"seconds": 1.0}, {}]}


def test_write_metrics_writes_both_files(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "sft.json"
    result = {"steps": 12, "train_loss_last": 0.88, "runtime_s": 59.1, "tokens_per_s": 176.2}
    assert write_metrics(result, path) == {"steps": 12, "train_loss_last": 0.88}
    assert timings_path(path) == tmp_path / "metrics" / "timings" / "sft.json"
    assert json.loads(path.read_text()) == {"steps": 12, "train_loss_last": 0.88}
    assert json.loads(timings_path(path).read_text()) == {"runtime_s": 59.1, "tokens_per_s": 176.2}
    assert "runtime_s" in result  # the caller's dict is unchanged
    # a rerun with other timings leaves the results file byte for byte as it was
    before = path.read_bytes()
    write_metrics({**result, "runtime_s": 61.0, "tokens_per_s": 170.0}, path)
    assert path.read_bytes() == before
    assert json.loads(timings_path(path).read_text())["runtime_s"] == 61.0
    # no timings: the timings file is still written, empty
    write_metrics({"examples": 1}, tmp_path / "metrics" / "export.json")
    assert json.loads((tmp_path / "metrics" / "timings" / "export.json").read_text()) == {}
    assert not list(tmp_path.rglob("*.tmp"))
    # or to a path of the caller's
    write_metrics(result, tmp_path / "r.json", tmp_path / "elsewhere" / "t.json")
    assert json.loads((tmp_path / "elsewhere" / "t.json").read_text()) == {"runtime_s": 59.1, "tokens_per_s": 176.2}


def test_a_failed_write_keeps_both_old_files(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    write_metrics({"v": 1, "runtime_s": 1.0}, path)
    with pytest.raises(TypeError):
        write_metrics({"v": object(), "runtime_s": 2.0}, path)
    assert json.loads(path.read_text()) == {"v": 1}
    assert json.loads(timings_path(path).read_text()) == {"runtime_s": 1.0}
    assert not list(tmp_path.rglob("*.tmp"))


def test_every_stage_writes_its_metrics_with_write_metrics() -> None:
    """No stage module writes a metrics file with plain write_json (which would keep the timings in it)."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "longwriter").rglob("*.py")
                 if p.name != "files.py" and "write_json(" in p.read_text(encoding="utf-8")]
    assert offenders == []
