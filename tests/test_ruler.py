"""LongWrite-Ruler that finds the limit: lengths to 1,000 words, the first ``per_length`` requests of each, a
per-request cap that cannot change the max-output-length decision (ratio reach x n), the ruler's own ceiling,
and a max output length flagged censored (shown "≥ L") when it is only a lower bound."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from click.testing import CliRunner

from longwriter.benchmark import read_benchmark
from longwriter.config import build, read_params, section
from longwriter.errors import ConfigError
from longwriter.eval.answers import EvalConfig
from longwriter.eval.ruler import (
    RulerConfig,
    answers_per_length,
    decision_cap,
    decision_ratio,
    failed_requests,
    ruler_metrics,
    run_ruler,
    select_requests,
    shown_max,
)
from longwriter.generation import EvalModel, LengthCap, request_limit
from longwriter.llm import ClientSettings, ModelSpec, Sampling
from longwriter.schemas import Answers, empty, validate
from longwriter.scoring import bucket_of

ROOT = Path(__file__).parent.parent


def _params() -> tuple[RulerConfig, EvalConfig]:
    params = read_params(ROOT / "params.yaml")
    return (build(RulerConfig, section(params, "ruler"), "params.yaml:ruler"),
            build(EvalConfig, section(params, "eval"), "params.yaml:eval"))


# --------------------------------------------------------------------------------------------------- defaults


def test_the_default_ruler_asks_up_to_1000_words_one_english_request_each() -> None:
    cfg, eval_cfg = _params()
    assert cfg == RulerConfig()
    assert (cfg.lengths, cfg.per_length, cfg.reach, cfg.max_tokens) == ((100, 300, 1000), 1, 0.8, 2560)
    assert eval_cfg.sampling.max_tokens == 512  # LongBench-Write's ceiling, not the ruler's
    full = read_benchmark(ROOT / cfg.input, list(cfg.lengths))
    assert full.group_by("required", "lang").len().sort("required", "lang")["len"].to_list() == [4] * 6
    picked = select_requests(full, cfg.per_length)
    # what the params comment says: N = 1 takes the first of each length, the English one (no Chinese answer)
    assert picked["index"].to_list() == [0, 8, 16]
    assert picked["lang"].to_list() == ["en"] * 3 and picked["required"].to_list() == [100, 300, 1000]
    assert answers_per_length(picked) == 1 and answers_per_length(full) == 8


def test_no_default_request_is_capped_below_its_decision_lossless_cap() -> None:
    """The ruler's ceiling and the backends' context leave every default request its decision-lossless cap."""
    cfg, eval_cfg = _params()
    picked = select_requests(read_benchmark(ROOT / cfg.input, list(cfg.lengths)), cfg.per_length)
    cap = decision_cap(cfg, eval_cfg, answers_per_length(picked))
    assert cap.ratio == pytest.approx(0.8)
    specs = [m.spec for m in eval_cfg.models] + [ModelSpec()]  # the checkpoints, and the embedded model (8192)
    for spec in specs:
        for request in picked.to_dicts():
            assert request_limit(spec, request, cfg.max_tokens, cap) == cap.tokens(request["required"],
                                                                                   request["lang"])
    # the params comment's figures: 1,000 words at n = 1 en / zh, and at n = 8 (per_length null) zh
    assert (cap.tokens(1000, "en"), cap.tokens(1000, "zh")) == (2064, 2464) and cfg.max_tokens >= 2464
    assert decision_cap(cfg, eval_cfg, 8).tokens(1000, "zh") == 19264
    # the embedded context (n_ctx 8192) holds the longest default request's cap with its prompt
    longest = picked.filter(pl.col("required") == 1000).to_dicts()[0]
    assert request_limit(ModelSpec(), longest, 8192, cap) == 2064


def test_ruler_config_errors() -> None:
    for data, match in (({"per_length": 0}, "per_length"), ({"max_tokens": 0}, "max_tokens"),
                        ({"reach": 1.5}, "reach"), ({"lengths": []}, "lengths")):
        with pytest.raises(ConfigError, match=match):
            build(RulerConfig, data, "params.yaml:ruler")
    assert build(RulerConfig, {"per_length": None}, "ruler").per_length is None


# --------------------------------------------------------------------------------------------- per_length


def _bench(rows: list[tuple[int, str]]) -> pl.DataFrame:
    return pl.DataFrame([{"index": i, "prompt": f"p{i}", "type": None, "required": r, "lang": lang,
                          "bucket": bucket_of(r)} for i, (r, lang) in enumerate(rows)],
                        schema={"index": pl.Int64, "prompt": pl.Utf8, "type": pl.Utf8, "required": pl.Int64,
                                "lang": pl.Utf8, "bucket": pl.Utf8})


def test_per_length_takes_the_first_n_of_each_length_in_file_order() -> None:
    bench = _bench([(300, "zh"), (100, "en"), (300, "en"), (100, "zh"), (100, "en"), (300, "zh")])
    assert select_requests(bench, 1)["index"].to_list() == [0, 1]
    assert select_requests(bench, 2)["index"].to_list() == [0, 1, 2, 3]
    assert select_requests(bench, None)["index"].to_list() == list(range(6))
    assert select_requests(bench, 9)["index"].to_list() == list(range(6))  # more than there are: all
    assert select_requests(bench.reverse(), 1)["index"].to_list() == [0, 1]  # file order, not row order
    uneven = _bench([(100, "en"), (100, "zh"), (100, "en"), (300, "en")])
    assert answers_per_length(uneven) == 3 and answers_per_length(uneven, samples=2) == 6
    assert answers_per_length(select_requests(uneven, 2)) == 2


# ------------------------------------------------------------------------------- the decision-lossless cap


def test_the_cap_ratio_is_reach_times_answers_per_length() -> None:
    assert decision_ratio(0.8, 1) == pytest.approx(0.8) and decision_ratio(0.8, 8) == pytest.approx(6.4)
    assert decision_ratio(0.5, 4) == 2.0
    with pytest.raises(ValueError, match="n must be"):
        decision_ratio(0.8, 0)
    eval_cfg = EvalConfig(tokens_per_word={"en": 2.0, "zh": 3.0}, cap_margin=10)
    cap = decision_cap(RulerConfig(reach=0.5), eval_cfg, 3)
    assert cap == LengthCap(1.5, {"en": 2.0, "zh": 3.0}, 10)  # eval's tokens per word and margin
    # in tokens: room for reach x n x L words at the (upper-bound) tokens per word, margin aside
    for lang in ("en", "zh"):
        assert cap.tokens(1000, lang) - 10 >= 0.5 * 3 * 1000 * cap.per_word(lang)
    assert cap.tokens(1000, "en") == math.ceil(1.5 * 1000 * 2.0) + 10


def _answers(rows: list[dict[str, Any]], check: bool = True) -> pl.DataFrame:
    out = []
    for i, r in enumerate(rows):
        words = r["words"]
        out.append({"model": r.get("model", "m"), "index": i, "sample": 0, "prompt": "p", "type": None,
                    "lang": r.get("lang", "en"), "required": r["required"], "bucket": bucket_of(r["required"]),
                    "text": "x", "words": words, "finish_reason": r.get("finish", "stop"),
                    "max_tokens": r.get("max_tokens", 100_000), "prompt_tokens": 5, "completion_tokens": words,
                    "latency_s": 1.0, "cap_lossless": False, "cap_below_ask": False,
                    "effective_words": r.get("effective", words), "degenerate": r.get("effective", words) < words})
    frame = pl.DataFrame(out, schema=empty(Answers).schema)
    return validate(frame, Answers, "answers") if check else frame


def test_a_cut_at_reach_n_l_words_never_changes_the_max_output_length() -> None:
    """On random answers, cutting each at reach x n x L words (what the cap guarantees) gives the same max output
    length as the uncut answers, for every n and reach; a cut one word shorter can change it."""
    rng = random.Random(0)
    lengths = (100, 300, 1000)
    for trial in range(300):
        n, reach = rng.randint(1, 8), rng.choice((0.5, 0.8, 1.0))
        rows = []
        for length in lengths:
            for _ in range(n):
                # mostly short answers, some far over the ask (loops), some around the threshold
                words = rng.choice((0, rng.randint(0, length), rng.randint(length, 12 * length),
                                    int(reach * length) + rng.randint(-2, 2)))
                rows.append({"required": length, "words": max(words, 0)})
        uncut = ruler_metrics(_answers(rows, check=False), lengths, reach)["m"]
        cut = [{**r, "words": min(r["words"], math.ceil(reach * n * r["required"]))} for r in rows]
        assert ruler_metrics(_answers(cut, check=False), lengths, reach)["m"]["max_output_length"] == \
            uncut["max_output_length"], (trial, n, reach)
    # the bound is tight: one long answer among n carries the mean, and one word less misses
    n, reach = 4, 0.8
    rows = [{"required": 100, "words": 1000}] + [{"required": 100, "words": 0}] * (n - 1)
    assert ruler_metrics(_answers(rows), (100,), reach)["m"]["max_output_length"] == 100
    tight = [{**r, "words": min(r["words"], math.ceil(reach * n * 100))} for r in rows]
    short = [{**r, "words": min(r["words"], math.ceil(reach * n * 100) - 1)} for r in rows]
    assert ruler_metrics(_answers(tight), (100,), reach)["m"]["max_output_length"] == 100
    assert ruler_metrics(_answers(short), (100,), reach)["m"]["max_output_length"] == 0


def _failed(rows: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame([{"model": r.get("model", "m"), "required": r["required"], "lang": r.get("lang", "en")}
                         for r in rows], schema={"model": pl.Utf8, "required": pl.Int64, "lang": pl.Utf8})


def test_a_cut_never_changes_the_max_output_length_with_failed_requests_counted_as_0() -> None:
    """The same property with some requests failed: they count 0 words in the headline mean (over all n asked)
    and are left out of the answered-only one (over k <= n); a cut at reach x n x L changes neither maximum."""
    rng = random.Random(1)
    lengths = (100, 300, 1000)
    for trial in range(300):
        n, reach = rng.randint(1, 8), rng.choice((0.5, 0.8, 1.0))
        rows, lost = [], []
        for length in lengths:
            for _ in range(n):
                if rng.random() < 0.3:
                    lost.append({"required": length})
                    continue
                words = rng.choice((0, rng.randint(0, length), rng.randint(length, 12 * length),
                                    int(reach * length) + rng.randint(-2, 2)))
                rows.append({"required": length, "words": max(words, 0)})
        keys = ("max_output_length", "max_output_length_answered")
        uncut = ruler_metrics(_answers(rows, check=False), lengths, reach, failed=_failed(lost))["m"]
        cut = [{**r, "words": min(r["words"], math.ceil(reach * n * r["required"]))} for r in rows]
        after = ruler_metrics(_answers(cut, check=False), lengths, reach, failed=_failed(lost))["m"]
        assert [after[k] for k in keys] == [uncut[k] for k in keys], (trial, n, reach)
        assert uncut["requests"] == n * len(lengths) and uncut["failed"] == len(lost)


def test_a_failed_request_counts_0_words_with_the_answered_only_figures_beside() -> None:
    # a: one of its two 300-word requests failed; the other answered 300 words. b: its one 1000 request failed
    rows = [{"model": "a", "required": 100, "words": 100}, {"model": "a", "required": 100, "words": 90},
            {"model": "a", "required": 300, "words": 300, "effective": 200, "lang": "zh"},
            {"model": "b", "required": 100, "words": 100}, {"model": "b", "required": 300, "words": 300}]
    lost = [{"model": "a", "required": 300}, {"model": "b", "required": 1000, "lang": "zh"},
            {"model": "c", "required": 100}]
    m = ruler_metrics(_answers(rows), (100, 300, 1000), 0.8, failed=_failed(lost))
    a, b, c = m["a"], m["b"], m["c"]
    # a: 300 is at 150 words over both requests (failed = 0): missed, so 100 is its limit, not censored
    assert a["mean_words"] == {"100": 95.0, "300": 150.0} and a["mean_effective_words"] == {"100": 95.0, "300": 100.0}
    assert (a["max_output_length"], a["max_output_length_censored"]) == (100, False)
    assert (a["max_output_length_effective"], a["max_output_length_effective_censored"]) == (100, False)
    # answered only: 300 reached by its one answer, the longest it has answers for: at least 300
    assert a["mean_words_answered"] == {"100": 95.0, "300": 300.0}
    assert a["mean_effective_words_answered"] == {"100": 95.0, "300": 200.0}
    assert (a["max_output_length_answered"], a["max_output_length_answered_censored"]) == (300, True)
    assert (a["max_output_length_effective_answered"], a["max_output_length_effective_answered_censored"]) == (
        100, False)
    assert (shown_max(a), shown_max(a, answered=True)) == ("100", "≥ 300")
    assert (a["requests"], a["answers"], a["failed"]) == (4, 3, 1)
    assert a["counts_by_length"] == {"100": {"requests": 2, "answered": 2, "failed": 0},
                                     "300": {"requests": 2, "answered": 1, "failed": 1}}
    assert a["mean_words_by_lang"] == {"en": 63.3, "zh": 300.0}  # en: 100, 90 and a failed 0
    assert a["mean_words_by_lang_answered"] == {"en": 95.0, "zh": 300.0}
    # b failed the longest length asked: 1000 counts 0, so 300 is no longer censored (it was measured above it)
    assert b["mean_words"] == {"100": 100.0, "300": 300.0, "1000": 0.0}
    assert (b["max_output_length"], b["max_output_length_censored"]) == (300, False)
    assert (b["max_output_length_answered"], b["max_output_length_answered_censored"]) == (300, True)
    assert b["counts_by_length"]["1000"] == {"requests": 1, "answered": 0, "failed": 1}
    # c answered nothing: it is measured all the same, at 0
    assert (c["requests"], c["answers"], c["failed"], c["mean_words"], c["max_output_length"]) == (
        1, 0, 1, {"100": 0.0}, 0)
    assert c["mean_words_answered"] == {} and c["truncated_share"] is None
    # without failures the headline and answered-only figures are the same
    plain = ruler_metrics(_answers(rows), (100, 300, 1000), 0.8)["a"]
    assert plain["mean_words"] == plain["mean_words_answered"] == {"100": 95.0, "300": 300.0}
    assert plain["max_output_length"] == plain["max_output_length_answered"] == 300 and plain["failed"] == 0


def test_failed_requests_reads_the_failures_rows() -> None:
    bench = _bench([(100, "en"), (300, "zh")])
    rows = [{"instruction_id": "m/1", "section": 0}, {"instruction_id": "org/x/0", "section": 0}]
    assert failed_requests(bench, rows).to_dicts() == [{"model": "m", "required": 300, "lang": "zh"},
                                                       {"model": "org/x", "required": 100, "lang": "en"}]
    assert failed_requests(bench, []).height == 0


def test_answers_capped_below_the_decision_cap_are_counted_and_may_leave_a_lower_bound() -> None:
    cap = LengthCap(0.8, {"en": 2.5, "zh": 3.0}, 64)  # n = 1: 100 en -> 264 tokens, 300 en -> 664
    rows = [{"required": 100, "words": 120, "max_tokens": 264},                     # lossless
            {"required": 300, "words": 150, "max_tokens": 400, "finish": "length"},  # below, cut: a miss?
            {"model": "s", "required": 100, "words": 120, "max_tokens": 264},
            {"model": "s", "required": 300, "words": 150, "max_tokens": 400},        # below, but it stopped
            {"model": "z", "required": 100, "words": 50, "max_tokens": 200, "finish": "length"}]
    m = ruler_metrics(_answers(rows), (100, 300), 0.8, cap)
    assert (m["m"]["capped_below_decision"], m["s"]["capped_below_decision"]) == (1, 1)
    # m missed 300 with an answer cut below its decision cap: 100 is only a lower bound
    assert m["m"]["decision_uncertain"] == [300] and m["m"]["max_output_length"] == 100
    assert m["m"]["max_output_length_censored"] is True and shown_max(m["m"]) == "≥ 100"
    # s's answer stopped on its own before its limit: nothing lost, 100 is its limit
    assert m["s"]["decision_uncertain"] == [] and m["s"]["max_output_length_censored"] is False
    assert shown_max(m["s"]) == "100"
    # z reached nothing, but its one answer was cut below the cap: at least 0, not "0"
    assert (m["z"]["max_output_length"], m["z"]["max_output_length_censored"]) == (0, True)
    # without a cap nothing is counted below it
    assert ruler_metrics(_answers(rows), (100, 300), 0.8)["m"]["capped_below_decision"] == 0


# ---------------------------------------------------------------------------------------------- censoring


def test_reaching_the_longest_length_asked_is_censored() -> None:
    rows = [
        # a reaches 1000, the longest asked: at least 1000
        {"model": "a", "required": 100, "words": 150}, {"model": "a", "required": 300, "words": 400},
        {"model": "a", "required": 1000, "words": 900, "effective": 500},
        # b reaches 300 and misses 1000: its limit
        {"model": "b", "required": 100, "words": 150}, {"model": "b", "required": 300, "words": 250},
        {"model": "b", "required": 1000, "words": 700},
        # c reaches nothing: 0, not censored
        {"model": "c", "required": 100, "words": 10}, {"model": "c", "required": 300, "words": 10},
        {"model": "c", "required": 1000, "words": 10},
    ]
    m = ruler_metrics(_answers(rows), (100, 300, 1000), 0.8)
    a, b, c = m["a"], m["b"], m["c"]
    assert (a["max_output_length"], a["max_output_length_censored"]) == (1000, True)
    # on the effective words a misses 1000 (500 < 800): 300 is its effective limit, not censored
    assert (a["max_output_length_effective"], a["max_output_length_effective_censored"]) == (300, False)
    assert (shown_max(a), shown_max(a, effective=True)) == ("≥ 1000", "300")
    assert (b["max_output_length"], b["max_output_length_censored"]) == (300, False)
    assert (b["max_output_length_effective"], b["max_output_length_effective_censored"]) == (300, False)
    assert (c["max_output_length"], c["max_output_length_censored"], shown_max(c)) == (0, False, "0")
    # the same answers asked only up to 300: b is censored too
    narrow = ruler_metrics(_answers([r for r in rows if r["required"] < 1000]), (100, 300), 0.8)
    assert narrow["b"]["max_output_length_censored"] is True and shown_max(narrow["b"]) == "≥ 300"
    # a gap does not matter: the longest asked reached is censored whatever was missed below it
    gap = [{"required": 100, "words": 10}, {"required": 300, "words": 300}]
    assert ruler_metrics(_answers(gap), (100, 300), 0.8)["m"]["max_output_length_censored"] is True


# ------------------------------------------------------------------------------------------ the whole stage


def _bench_file(path: Path) -> Path:
    rows = [(100, "Write a 100-word note on rivers."), (100, "写一篇100字的短文。"),
            (300, "Write a 300-word note on rivers."), (300, "写一篇300字的短文。")]
    path.write_text("".join(json.dumps({"prompt": p, "type": "x", "length": n}, ensure_ascii=False) + "\n"
                            for n, p in rows), encoding="utf-8")
    return path


def _fake(srv: Any) -> tuple[EvalModel, ...]:
    return (EvalModel("fake", ModelSpec(provider="openai", base_url=srv.base_url, model="fake-model")),)


def test_run_ruler_caps_each_request_for_the_decision(fake_server, tmp_path: Path) -> None:
    bench = _bench_file(tmp_path / "bench.jsonl")
    out = {k: tmp_path / v for k, v in (("answers", "r.parquet"), ("failures", "f.parquet"), ("metrics", "r.json"),
                                        ("csv", "r.csv"), ("png", "r.png"))}
    with fake_server(words=120) as srv:  # 120 words = 160 of the fake's tokens, unless cut
        cfg = EvalConfig(models=_fake(srv), sampling=Sampling(temperature=0.5, max_tokens=64))
        settings = ClientSettings(cache_dir=str(tmp_path / "cache"))
        result = run_ruler(RulerConfig(input=str(bench), lengths=(100, 300)), cfg, settings, out["answers"],
                           out["failures"], out["metrics"], out["csv"], out["png"])["fake"]
        sent = [b["max_tokens"] for b in srv.bodies]
    # per_length 1: the English request of each length; n = 1, ratio 0.8: 0.8 x L x 2.5 + 64 tokens, under the
    # ruler's ceiling (2560), not eval's (64)
    assert sorted(sent) == [264, 664]
    assert result["answers"] == 2 and result["capped_below_decision"] == 0 and result["failed"] == 0
    # 120 words reach 100 (>= 80) and miss 300 (< 240): 100 is the limit, not censored
    assert (result["max_output_length"], result["max_output_length_censored"]) == (100, False)
    assert result["mean_words"] == {"100": 120.0, "300": 120.0}
    written = json.loads(out["metrics"].read_text())
    assert written["decision_cap"] == {"ratio": 0.8, "answers_per_length": 1, "max_tokens": 2560}
    assert written["fake"]["max_output_length_effective_censored"] is False
    assert "capped_below_lossless" not in written["fake"]  # LongBench-Write's 4x measure is not the ruler's
    curve = pl.read_csv(out["csv"])
    assert curve.columns == ["model", "required", "produced", "effective"]
    assert curve["required"].to_list() == [100, 300] and curve["produced"].to_list() == [120.0, 120.0]
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_ruler_counts_a_model_s_failed_requests_as_0_words(fake_server, tmp_path: Path) -> None:
    bench = _bench_file(tmp_path / "bench.jsonl")
    out = [tmp_path / v for v in ("r.parquet", "f.parquet", "r.json", "r.csv", "r.png")]
    with fake_server(words=120) as ok, fake_server(faults={"500": 1.0}) as bad:
        models = (EvalModel("ok", ModelSpec(provider="openai", base_url=ok.base_url, model="fake-model")),
                  EvalModel("bad", ModelSpec(provider="openai", base_url=bad.base_url, model="fake-model")))
        settings = ClientSettings(cache_dir=str(tmp_path / "cache"), max_retries=0, backoff_base_s=0.01,
                                  backoff_max_s=0.02)
        result = run_ruler(RulerConfig(input=str(bench), lengths=(100, 300)), EvalConfig(models=models), settings,
                           *out)
    bad_m = result["bad"]
    assert (bad_m["requests"], bad_m["answers"], bad_m["failed"]) == (2, 0, 2)
    assert bad_m["mean_words"] == {"100": 0.0, "300": 0.0} and bad_m["mean_words_answered"] == {}
    assert (bad_m["max_output_length"], bad_m["max_output_length_censored"]) == (0, False)
    assert result["ok"]["failed"] == 0 and result["ok"]["mean_words"] == result["ok"]["mean_words_answered"]
    failures = pl.read_parquet(out[1])
    assert sorted(failures.filter(pl.col("reason") != "left_out")["instruction_id"]) == ["bad/0", "bad/2"]
    # the file's other requests (the second of each length) are left_out rows, one per model
    left = failures.filter(pl.col("reason") == "left_out")
    assert sorted(left["instruction_id"]) == ["bad/1", "bad/3", "ok/1", "ok/3"]
    assert set(left["error"]) == {"past ruler.per_length 1 for length 100", "past ruler.per_length 1 for length 300"}
    # the curve is the headline's: the failed model's points are at 0 words
    curve = pl.read_csv(out[3]).filter(pl.col("model") == "bad")
    assert curve["required"].to_list() == [100, 300] and curve["produced"].to_list() == [0.0, 0.0]


def test_the_stage_says_at_least_and_warns_below_the_decision_cap(fake_server, tmp_path: Path) -> None:
    from stages.ruler import main

    bench = _bench_file(tmp_path / "bench.jsonl")
    with fake_server(words=120) as srv:
        spec = {"provider": "openai", "base_url": srv.base_url, "model": "fake-model"}
        params = tmp_path / "params.yaml"

        def run(ruler: dict[str, Any]) -> Any:
            params.write_text(yaml.safe_dump({"llm": {"cache_dir": str(tmp_path / "cache")},
                                              "eval": {"models": [{"name": "fake", "spec": spec}]},
                                              "ruler": {"input": str(bench), **ruler}}))
            args = ["--params", str(params)] + [f"--{k}={tmp_path / v}" for k, v in (
                ("output", "a.parquet"), ("failures", "f.parquet"), ("metrics", "m.json"), ("timings", "t.json"),
                ("plot-csv", "p.csv"), ("plot-png", "p.png"))]
            return CliRunner().invoke(main, args)

        # only 100 asked: 120 words reach it, the longest asked, so at least 100
        censored = run({"lengths": [100]})
        assert censored.exit_code == 0, censored.output
        assert "ruler fake: max output length ≥ 100 words (≥ 100 before loops)" in censored.stdout
        assert "warning" not in censored.stderr
        # a ceiling of 150 tokens is below both requests' caps (264, 664) and cuts both answers to 112 words:
        # counted, and the cut miss of 300 warned about
        low = run({"lengths": [100, 300], "max_tokens": 150})
        assert low.exit_code == 0, low.output
        assert "ruler fake: max output length ≥ 100 words" in low.stdout
        assert "warning: ruler fake: 2 of 2 answers had a token limit" in low.stderr
        assert "lengths [300] were missed" in low.stderr
        m = json.loads((tmp_path / "m.json").read_text())["fake"]
        assert m["mean_words"] == {"100": 112.0, "300": 112.0}
        assert (m["capped_below_decision"], m["decision_uncertain"], m["max_output_length_censored"]) == (
            2, [300], True)
        # a ceiling that is below the caps but cuts nothing (120 words in 160 tokens): counted, no decision lost
        roomy = run({"lengths": [100, 300], "max_tokens": 200})
        assert "max output length 100 words" in roomy.stdout
        assert "2 of 2 answers had a token limit" in roomy.stderr and "none of them changed" in roomy.stderr


def test_the_plot_marks_a_censored_maximum(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import matplotlib.axes

    from longwriter.eval.plots import length_png

    notes: list[str] = []
    labels: list[str] = []
    original_annotate, original_plot = matplotlib.axes.Axes.annotate, matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate",
                        lambda self, text, *a, **k: notes.append(text) or original_annotate(self, text, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: labels.append(k.get("label", "")) or original_plot(self, *a, **k))
    curve = pl.DataFrame({"model": ["a", "a", "b", "b"], "required": [100, 1000, 100, 1000],
                          "produced": [150.0, 900.0, 120.0, 300.0]})
    length_png(curve, tmp_path / "p.png", "t", lines=True, reach=0.8, maxima={"a": "≥ 1000", "b": "100"})
    assert notes == ["a: ≥ 1000"]
    assert labels == ["produced = required", "produced = 0.8 x required (reached)",
                      "a (max output length ≥ 1000)", "b (max output length 100)"]
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
