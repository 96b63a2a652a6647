"""Judge agreement: the correlations against hand-worked values, the figures, and the stage on the fake server."""

from __future__ import annotations

import json

import polars as pl
import pytest

from longwriter.eval.agreement import AgreementConfig, agreement_metrics, kendall_tau_b, run_agreement, spearman
from longwriter.failures import Failures
from longwriter.judge import DIMENSIONS, JudgeConfig
from longwriter.llm import ClientSettings, ModelSpec
from longwriter.schemas import Answers, JudgeRatings, Scores, validate


def test_spearman_and_kendall_on_hand_worked_examples():
    # no ties: d = (-1, 1, -1, 1, 0), rho = 1 - 6 * 4 / (5 * 24) = 0.8; 2 of 10 pairs discordant: tau = 0.6
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert kendall_tau_b([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.6)
    # ties: ranks (1.5, 1.5, 3, 4) and (1, 2.5, 2.5, 4): rho = 3.75 / 4.5; C = 4, D = 0, one tie on each side of
    # 6 pairs: tau_b = 4 / sqrt(5 * 5) = 0.8
    assert spearman([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(3.75 / 4.5)
    assert kendall_tau_b([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # a judge that gives every answer the same score ranks nothing
    assert spearman([3, 3, 3], [1, 2, 3]) is None and kendall_tau_b([1, 2, 3], [4, 4, 4]) is None


def _ratings(values: list[int]) -> list[dict[str, int]]:
    return [dict.fromkeys(DIMENSIONS, v) for v in values]


def test_agreement_figures_and_warning():
    cfg = AgreementConfig(bootstrap=200, min_spearman=0.9)
    m = agreement_metrics(_ratings([1, 2, 3, 4, 5]), _ratings([2, 1, 4, 3, 5]), cfg)
    d = m["dimensions"]["coherence"]
    assert (d["spearman"], d["kendall_tau_b"], d["exact"], d["within_one"]) == (0.8, 0.6, 0.2, 1.0)
    # S_q: scores 1..5 -> 0, 25, 50, 75, 100 for both judges (the same multiset): difference 0
    assert m["S_q"]["judge"] == m["S_q"]["reference"] == 50.0 and m["S_q"]["reference_minus_judge"] == 0.0
    lo, hi = m["S_q"]["interval"]
    assert lo <= 0.0 <= hi
    assert "below 0.9" in m["warning"] and "coherence" in m["warning"]
    # a reference 1 point higher everywhere: +25 S_q, an interval of one point, no rank disagreement
    same = agreement_metrics(_ratings([1, 2, 3, 4]), _ratings([2, 3, 4, 5]), AgreementConfig(bootstrap=50))
    assert same["S_q"]["reference_minus_judge"] == 25.0 and same["S_q"]["interval"] == [25.0, 25.0]
    assert same["dimensions"]["accuracy"]["exact"] == 0.0 and same["warning"] is None
    assert same["mean_spearman"] == 1.0


def _tables(tmp_path, n: int):
    answers, scores = [], []
    for i in range(n):
        text = f"Answer number {i}. " * 20
        answers.append({"model": "m", "index": i, "sample": 0, "prompt": f"Write about topic {i}.", "type": None,
                        "lang": "en", "required": 100, "bucket": "0-500", "text": text, "words": 60,
                        "finish_reason": "stop", "max_tokens": 400, "prompt_tokens": 10, "completion_tokens": 80,
                        "latency_s": 0.1, "cap_lossless": True, "cap_below_ask": False, "effective_words": 60,
                        "degenerate": False})
        rated = i != 0  # the judge failed on answer 0: it is not sampled
        scores.append({"model": "m", "index": i, "lang": "en", "bucket": "0-500", "required": 100, "produced": 60,
                       "answered": True, "length_score": 80.0, "effective_words": 60, "degenerate": False,
                       "length_score_effective": 80.0,
                       **{d: (1 + (i + k) % 5 if rated else None) for k, d in enumerate(DIMENSIONS)},
                       "quality_score": 50.0 if rated else None, "judge_attempts": 1, "judge_truncated": False,
                       "analysis": None})
    a, s = tmp_path / "answers.parquet", tmp_path / "scores.parquet"
    validate(pl.DataFrame(answers, schema_overrides={"type": pl.Utf8}), Answers, a).write_parquet(a)
    validate(pl.DataFrame(scores, schema_overrides={"analysis": pl.Utf8, "quality_score": pl.Float64,
                                                    **dict.fromkeys(DIMENSIONS, pl.Int64)}), Scores, s
             ).write_parquet(s)
    return s, a


def run(tmp_path, srv, cfg: AgreementConfig):
    scores, answers = _tables(tmp_path, 6)
    settings = ClientSettings(cache_dir=str(tmp_path / "cache"), max_retries=0, backoff_base_s=0.01)
    out = {k: tmp_path / f"{k}.{ext}" for k, ext in
           (("output", "parquet"), ("failures", "parquet"), ("metrics", "json"), ("plot", "csv"))}
    result = run_agreement(cfg, JudgeConfig(model=ModelSpec(provider="openai", base_url=srv.base_url, model="j")),
                           settings, scores, answers, out["output"], out["failures"], out["metrics"], out["plot"])
    return result, out


def test_stage_rates_a_sample_with_the_reference_and_records_failures(fake_server, tmp_path):
    with fake_server(script=["ok", "500"]) as srv:
        spec = ModelSpec(provider="openai", base_url=srv.base_url, model="reference")
        result, out = run(tmp_path, srv, AgreementConfig(reference=spec, sample=4, bootstrap=20))
        asked = [b for b in srv.bodies if b["model"] == "reference"]
    # 5 answers were rated by the judge; 4 sampled; the reference's second call failed (no retries)
    assert len(asked) == 4 and result["sampled"] == 4 and result["reference_failed"] == 1
    assert result["rated_by_both"] == 3 and result["reference"] == "openai:reference"
    both = validate(pl.read_parquet(out["output"]), JudgeRatings, "agreement")
    assert both.height == 6 and sorted(set(both["judge"])) == ["judge", "reference"]
    failures = validate(pl.read_parquet(out["failures"]), Failures, "agreement")
    assert failures["reason"].to_list() == ["llm_error"] and failures["instruction_id"][0].startswith("m:")
    assert 0 not in both["index"].to_list()  # the answer the judge did not rate is never sampled
    llm = json.loads(out["metrics"].read_text())["llm"]
    assert (llm["sent_calls"], llm["failed_calls"]) == (3, 1)
    plot = pl.read_csv(out["plot"])
    assert plot["dimension"].to_list() == list(DIMENSIONS)


def test_sample_null_takes_every_rated_answer_and_config_is_checked(fake_server, tmp_path):
    with fake_server() as srv:
        spec = ModelSpec(provider="openai", base_url=srv.base_url, model="reference")
        result, _ = run(tmp_path, srv, AgreementConfig(reference=spec, sample=None, bootstrap=10))
    assert result["sampled"] == 5 and result["rated_by_both"] == 5
    with pytest.raises(ValueError, match="sample must be at least 2"):
        AgreementConfig(sample=1)
