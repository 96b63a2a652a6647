"""The per-request evaluation cap (lossless at 4x the required words), the degeneration measure (loop start,
effective words) and what the answer tables and metrics record of both; top_k in the eval sampling."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from longwriter.benchmark import read_benchmark
from longwriter.config import build, read_params, section
from longwriter.errors import ConfigError
from longwriter.eval.answers import EvalConfig, answer_metrics
from longwriter.eval.longbench import LongBenchConfig, longbench_metrics, score_row, unanswered_row
from longwriter.eval.ruler import RulerConfig, ruler_metrics
from longwriter.generation import LOSSLESS_RATIO, EvalModel, LengthCap, answer_row, generate_answers, request_limit
from longwriter.judge import DIMENSIONS, Rating, RatingOutcome
from longwriter.llm import ClientSettings, ModelSpec, Sampling
from longwriter.repetition import degeneration, loop_start, repetition
from longwriter.schemas import Answers, Scores, empty, validate
from longwriter.scoring import bucket_of, length_score
from longwriter.wordcount import count_words

ROOT = Path(__file__).parent.parent


# ------------------------------------------------------------------------------------------------ the cap rule


def test_length_cap_tokens_by_language() -> None:
    cap = LengthCap()
    assert cap.ratio == LOSSLESS_RATIO == 4.0
    assert cap.tokens(100, "en") == math.ceil(4 * 100 * 2.5) + 64 == 1064
    assert cap.tokens(100, "zh") == 4 * 100 * 3 + 64 == 1264
    assert cap.tokens(100, "other") == cap.tokens(100, "zh")  # no entry: the largest, never undershooting
    assert cap.tokens(100, "en", ratio=1.0) == 250 + 64
    assert LengthCap(ratio=2.0, tokens_per_word=1.3, margin=0).tokens(7, "zh") == math.ceil(2 * 7 * 1.3) == 19


def test_lossless_ratio_is_where_the_length_score_reaches_zero() -> None:
    assert length_score(100, int(100 * LOSSLESS_RATIO)) == 0.0
    assert length_score(100, int(100 * LOSSLESS_RATIO) - 1) > 0.0


def test_eval_config_defaults_are_the_paper_s_sampling_under_the_laptop_ceiling() -> None:
    cfg = EvalConfig()
    assert cfg.sampling == Sampling(temperature=0.5, top_p=0.8, top_k=50, max_tokens=512)
    assert (cfg.cap_ratio, cfg.tokens_per_word, cfg.cap_margin) == (4.0, {"en": 2.5, "zh": 3.0}, 64)
    assert cfg.length_cap == LengthCap()


def test_params_yaml_eval_and_ruler_are_laptop_sized() -> None:
    params = read_params(ROOT / "params.yaml")
    cfg = build(EvalConfig, section(params, "eval"), "params.yaml:eval")
    assert cfg.sampling.max_tokens == 512  # the ceiling
    assert (cfg.sampling.temperature, cfg.sampling.top_p, cfg.sampling.top_k) == (0.5, 0.8, 50)
    assert cfg.cap_ratio == 4.0 and cfg.tokens_per_word == {"en": 2.5, "zh": 3.0}
    # the ruler has its own ceiling and decision-lossless caps (tests/test_ruler.py)
    assert build(RulerConfig, section(params, "ruler"), "params.yaml:ruler").lengths == (100, 300, 1000)
    # what the params comment says: above ~44 en / 37 zh words a cap is below lossless, above ~179 / 149 below
    # the ask
    cap = cfg.length_cap
    for lang, lossless, ask in (("en", 44, 179), ("zh", 37, 149)):
        assert cap.tokens(lossless, lang) <= 512 < cap.tokens(lossless + 1, lang)
        assert cap.tokens(ask, lang, 1.0) <= 512 < cap.tokens(ask + 1, lang, 1.0)


def test_defaults_never_cap_a_request_below_what_it_asks() -> None:
    """The laptop defaults' ceiling holds every default LongBench-Write request's ask (issue 13), for each default
    eval model. (The ruler's caps are lossless for its decision, under its own ceiling: tests/test_ruler.py.)"""
    params = read_params(ROOT / "params.yaml")
    cfg = build(EvalConfig, section(params, "eval"), "params.yaml:eval")
    longbench = build(LongBenchConfig, section(params, "longbench"), "params.yaml:longbench")
    requests = read_benchmark(ROOT / longbench.input).to_dicts()
    assert len(requests) == 16
    specs = [m.spec for m in cfg.models] + [ModelSpec()]  # the checkpoints, and the embedded model
    for spec in specs:
        for request in requests:
            limit = request_limit(spec, request, cfg.sampling.max_tokens, cfg.length_cap)
            assert limit >= cfg.length_cap.tokens(request["required"], request["lang"], 1.0), (spec, request)
    # the four-bucket file asks what only a GPU run's ceiling holds: it is not a default
    buckets = read_benchmark(ROOT / "data" / "eval" / "longbench_buckets.jsonl").to_dicts()
    assert max(cfg.length_cap.tokens(r["required"], r["lang"], 1.0) for r in buckets) == 30064


@pytest.mark.parametrize(("data", "match"), [
    ({"tokens_per_word": {"fr": 2.0}}, "languages"),
    ({"tokens_per_word": {}}, "languages"),
    ({"tokens_per_word": 0}, "positive"),
    ({"tokens_per_word": {"en": -1}}, "positive"),
    ({"tokens_per_word": "many"}, "positive"),
    ({"cap_ratio": 0}, "cap_ratio"),
    ({"cap_margin": -1}, "cap_margin"),
    ({"sampling": {"top_k": 0}}, "top_k"),
])
def test_eval_config_errors(data: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build(EvalConfig, data, "params.yaml:eval")


def test_eval_config_accepts_one_number_and_ints() -> None:
    cfg = build(EvalConfig, {"tokens_per_word": 2, "cap_ratio": 5}, "eval")
    assert cfg.tokens_per_word == 2.0 and isinstance(cfg.tokens_per_word, float)
    assert cfg.length_cap.tokens(10, "zh") == 5 * 10 * 2 + 64
    assert build(EvalConfig, {"tokens_per_word": {"en": 2}}, "eval").tokens_per_word == {"en": 2.0}


def test_request_limit_is_the_least_of_cap_ceiling_and_context() -> None:
    spec = ModelSpec(provider="openai", base_url="http://127.0.0.1:9/v1", model="m")
    short = {"prompt": "Write 10 words.", "required": 10, "lang": "en"}
    long_ = {"prompt": "Write 1000 words.", "required": 1000, "lang": "en"}
    assert request_limit(spec, short, 32768, LengthCap()) == 164  # the cap
    assert request_limit(spec, long_, 1024, LengthCap()) == 1024  # the ceiling
    assert request_limit(spec, long_, 1024, None) == 1024 and request_limit(spec, short, 1024, None) == 1024
    small = ModelSpec(provider="openai", base_url="http://127.0.0.1:9/v1", model="m", context_window=200)
    assert request_limit(small, short, 32768, LengthCap()) < 164  # the context


def _request(index: int, prompt: str, required: int, lang: str) -> dict[str, Any]:
    return {"index": index, "prompt": prompt, "type": None, "required": required, "lang": lang,
            "bucket": bucket_of(required)}


def test_answer_row_records_cap_and_loop() -> None:
    looped = "Once upon a time there was a girl. " + "She walked to the sea and sang a song all day. " * 10
    row = answer_row("m", _request(0, "p", 10, "en"), 0, looped, "length", 164, 5, 200, 1.0)
    assert row["cap_lossless"] is True and row["cap_below_ask"] is False
    assert row["degenerate"] is True and row["effective_words"] == 8 + 11 < row["words"] == 8 + 110
    plain = answer_row("m", _request(0, "p", 1000, "zh"), 0, "写一篇文章。", "stop", 1024, 5, 6, 1.0)
    assert plain["cap_lossless"] is False and plain["cap_below_ask"] is True  # zh 1000 asks 3064 tokens
    assert plain["degenerate"] is False and plain["effective_words"] == plain["words"] == 5


BENCH = pl.DataFrame([
    _request(0, "Write a 10-word note.", 10, "en"),          # cap 164 >= 160 tokens of the fake's 120 words
    _request(1, "Write a 100-word story.", 100, "en"),       # cap 1064 > ceiling 1024: below lossless
    _request(2, "写一篇四百字的文章。", 400, "zh"),            # ask 1264 > 1024: below the ask too
], schema={"index": pl.Int64, "prompt": pl.Utf8, "type": pl.Utf8, "required": pl.Int64, "lang": pl.Utf8,
           "bucket": pl.Utf8})


def _fake_model(srv: Any) -> tuple[EvalModel, ...]:
    return (EvalModel("fake", ModelSpec(provider="openai", base_url=srv.base_url, model="fake-model")),)


def test_generate_answers_caps_each_request(fake_server, tmp_path: Path) -> None:
    sampling = Sampling(temperature=0.5, top_p=0.8, top_k=50, max_tokens=1024)
    with fake_server(words=120) as srv:
        answers, failures, stats = generate_answers(BENCH, _fake_model(srv), sampling,
                                                    ClientSettings(cache_dir=str(tmp_path)), "test",
                                                    cap=LengthCap())
        sent = {b["messages"][0]["content"]: b for b in srv.bodies}
    assert failures == []
    validate(answers, Answers, "answers")
    assert [sent[p]["max_tokens"] for p in BENCH["prompt"]] == [164, 1024, 1024]
    assert all(b["top_k"] == 50 for b in sent.values())
    assert answers["max_tokens"].to_list() == [164, 1024, 1024]
    assert answers["cap_lossless"].to_list() == [True, False, False]
    assert answers["cap_below_ask"].to_list() == [False, False, True]
    assert answers["finish_reason"].to_list() == ["stop"] * 3
    assert answer_metrics(answers) == {"capped_below_lossless": 2, "capped_below_ask": 1, "truncated_share": 0.0,
                                       "degenerate_share": 0.0}
    assert stats["fake"].truncated == 0


def test_generate_answers_counts_truncation_and_keeps_the_uncapped_path(fake_server, tmp_path: Path) -> None:
    with fake_server(words=120) as srv:
        # a ceiling of 100 tokens cuts every 160-token answer of the fake
        answers, _, stats = generate_answers(BENCH, _fake_model(srv), Sampling(max_tokens=100),
                                             ClientSettings(cache_dir=str(tmp_path)), "test", cap=LengthCap())
        assert answers["finish_reason"].to_list() == ["length"] * 3
        assert answer_metrics(answers)["truncated_share"] == 1.0 and stats["fake"].truncated == 3
        assert answer_metrics(answers)["capped_below_lossless"] == 3
        # no cap (dpo_pairs): the ceiling for every request, as before
        srv.bodies.clear()
        generate_answers(BENCH, _fake_model(srv), Sampling(max_tokens=2000), ClientSettings(cache_dir=str(tmp_path)),
                         "test")
        assert [b["max_tokens"] for b in srv.bodies] == [2000] * 3
        assert all("top_k" not in b for b in srv.bodies)


def test_a_cap_ratio_below_four_is_not_lossless(fake_server, tmp_path: Path) -> None:
    with fake_server(words=120) as srv:
        answers, _, _ = generate_answers(BENCH.head(1), _fake_model(srv), Sampling(max_tokens=1024),
                                         ClientSettings(cache_dir=str(tmp_path)), "test", cap=LengthCap(ratio=2.0))
    assert answers["max_tokens"].to_list() == [2 * 10 * 2.5 + 64] and answers["cap_lossless"].to_list() == [False]
    assert answers["finish_reason"].to_list() == ["length"]  # 114 < 160 tokens


# ---------------------------------------------------------------------------------------------- degeneration

LOOP_EN = ("Once upon a time there was a small village near the sea where people fished. "  # 15 words
           + "The sea was blue and the boats were many and the fishermen sang songs all day long. " * 10)  # 17 each
PROSE = ("The river runs through the old town, past the market and the stone bridge, and on summer evenings the "
         "children gather on its banks to watch the boats come home. Their grandparents remember a time when the "
         "water was clear enough to see the fish, before the factories arrived upstream and the mills turned the "
         "current brown. Today a small group of volunteers tests the water every week, writes down what it finds "
         "and sends the numbers to the city council, which has promised a new treatment plant within five years. "
         "Whether the promise is kept will decide what the next generation of children sees when it looks down "
         "from the bridge.")


def test_repetition_is_postprocess_s() -> None:
    from longwriter.agentwrite import postprocess

    assert postprocess.repetition is repetition  # one measure, in one place


def test_an_exact_loop_starts_at_its_second_copy() -> None:
    assert loop_start(LOOP_EN) == 15 + 17
    assert degeneration(LOOP_EN) == (32, True)
    assert degeneration(LOOP_EN)[0] == 32 and count_words(LOOP_EN) == 15 + 170


def test_a_loop_with_small_changes_is_found() -> None:
    copies = [f"Step {i}: the {w} goes into the large bowl with two cups of flour and a little salt, then we stir it."
              for i, w in zip(range(1, 9), ["egg", "milk", "sugar", "butter", "egg", "milk", "sugar", "butter"],
                              strict=True)]
    text = "Here is how to bake bread at home without a machine. " + " ".join(copies)
    start = loop_start(text)
    intro = count_words("Here is how to bake bread at home without a machine.")
    copy = count_words(copies[0])
    # the digits are no words; each copy differs from the first in one word: the loop starts in the second copy
    assert start is not None and intro + copy <= start < intro + 2 * copy


def test_a_chinese_loop_counts_characters() -> None:
    first = "秋天的北京天高云淡，香山的红叶像一团团燃烧的火焰。"
    copy = "胡同里飘来糖炒栗子的香味，老人们坐在门口晒太阳。"
    assert (count_words(first), count_words(copy)) == (23, 22)  # one word per character
    assert degeneration(first + copy * 6) == (23 + 22, True)


def test_prose_and_a_short_echo_are_not_loops() -> None:
    assert degeneration(PROSE) == (count_words(PROSE), False)
    # the closing sentence repeats the opening one (16 words): a repeated tail under min_loop_words
    opening = "The river runs through the old town, past the market and the stone bridge, to the sea."
    assert degeneration(f"{opening} {PROSE} {opening}")[1] is False
    assert loop_start(f"{opening} {PROSE} {opening}", min_loop_words=10) is not None
    assert degeneration("") == (0, False) and degeneration("word") == (1, False)


def test_the_loop_start_is_the_best_dominated_tail() -> None:
    # novel text, a loop, then novel text again that is longer than the loop: no tail is dominated by repeats
    novel = " ".join(f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(300))
    loop = "we go round and round the same old song again " * 7  # 10 words a copy
    assert loop_start(novel + " " + loop) == 300 + 10
    assert loop_start(loop + " " + novel) is None


# ---------------------------------------------------------------------------------------- metrics and tables


def _answers(rows: list[tuple[str, int, str, int, int, bool, bool, str]]) -> pl.DataFrame:
    """(model, required, lang, words, effective, cap_lossless, cap_below_ask, finish_reason) rows."""
    out = []
    for i, (model, required, lang, words, effective, lossless, below, finish) in enumerate(rows):
        out.append({"model": model, "index": i, "sample": 0, "prompt": "p", "type": None, "lang": lang,
                    "required": required, "bucket": bucket_of(required), "text": "x", "words": words,
                    "finish_reason": finish, "max_tokens": 1024, "prompt_tokens": 5, "completion_tokens": 9,
                    "latency_s": 1.0, "cap_lossless": lossless, "cap_below_ask": below,
                    "effective_words": effective, "degenerate": effective < words})
    return validate(pl.DataFrame(out, schema=empty(Answers).schema), Answers, "answers")


def test_ruler_metrics_on_produced_and_effective_words() -> None:
    answers = _answers([
        ("a", 250, "en", 260, 260, False, False, "stop"),
        ("a", 250, "zh", 300, 100, False, False, "length"),   # looped after 100 words
        ("a", 500, "en", 700, 700, False, True, "length"),
        ("a", 500, "zh", 300, 300, False, True, "stop"),
    ])
    m = ruler_metrics(answers, (250, 500), 0.8)["a"]
    assert m["mean_words"] == {"250": 280.0, "500": 500.0} and m["max_output_length"] == 500
    assert m["mean_effective_words"] == {"250": 180.0, "500": 500.0}
    assert m["max_output_length_effective"] == 500  # 180 < 200 misses 250; 500 >= 400 still reaches 500
    # 500 is the longest length asked: both maxima are lower bounds
    assert m["max_output_length_censored"] is True and m["max_output_length_effective_censored"] is True
    assert m["degenerate_share"] == 0.25 and m["truncated_share"] == 0.5
    # the ruler counts limits below its decision-lossless cap (none given here), not LongBench-Write's 4x
    assert m["capped_below_decision"] == 0 and "capped_below_lossless" not in m
    strict = ruler_metrics(answers, (250,), 0.8)["a"]
    assert (strict["max_output_length"], strict["max_output_length_effective"]) == (250, 0)
    assert (strict["max_output_length_censored"], strict["max_output_length_effective_censored"]) == (True, False)


def _rated() -> RatingOutcome:
    return RatingOutcome(Rating(dict.fromkeys(DIMENSIONS, 3), "ok"), attempts=1, truncated=False)


def test_longbench_scores_on_effective_words() -> None:
    loop = {"model": "m", "index": 0, "lang": "en", "bucket": "500-2k", "required": 1000, "words": 1000,
            "effective_words": 500, "degenerate": True}
    fine = {"model": "m", "index": 1, "lang": "zh", "bucket": "0-500", "required": 100, "words": 100,
            "effective_words": 100, "degenerate": False}
    request = {"index": 2, "lang": "en", "bucket": "0-500", "required": 300}
    rows = [score_row(loop, _rated()), score_row(fine, _rated()), unanswered_row("m", request)]
    assert (rows[0]["length_score"], rows[0]["length_score_effective"]) == (100.0, 50.0)
    assert (rows[0]["effective_words"], rows[0]["degenerate"]) == (500, True)
    assert (rows[2]["effective_words"], rows[2]["degenerate"], rows[2]["length_score_effective"]) == (0, False, 0.0)
    scores = validate(pl.DataFrame(rows, schema=empty(Scores).schema), Scores, "scores")
    m = longbench_metrics(scores)["m"]
    # the paper's S_l (headline, unanswered 0) and S_l on the effective words beside it, over every request
    assert m["S_l"] == round((100 + 100 + 0) / 3, 2) and m["S_l_effective"] == 50.0
    assert m["S_l_answered"] == 100.0
    assert m["degenerate_share"] == 0.5  # of the answered
    assert m["buckets"]["500-2k"]["S_l_effective"] == 50.0 and m["lang"]["zh"]["S_l_effective"] == 100.0


# ------------------------------------------------------------------------------------------------ top_k
# (llama-server honouring it: tests/test_local_model.py)


def test_sampling_top_k_validation() -> None:
    assert Sampling().top_k is None and Sampling(top_k=50).top_k == 50
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="top_k"):
            Sampling(top_k=bad)  # type: ignore[arg-type]


def test_ruler_and_longbench_answer_stages_report_caps(fake_server, tmp_path: Path) -> None:
    import json

    from longwriter.eval.longbench import LongBenchConfig, run_longbench_answers
    from longwriter.eval.ruler import run_ruler
    from longwriter.files import read_table

    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"prompt": f"Write {n} words about rivers.", "type": "x", "length": n}) + "\n"
                             for n in (10, 100, 500)), encoding="utf-8")
    with fake_server(words=120) as srv:
        cfg = EvalConfig(models=_fake_model(srv), sampling=Sampling(temperature=0.5, max_tokens=1024))
        settings = ClientSettings(cache_dir=str(tmp_path / "cache"))
        ruler = run_ruler(RulerConfig(input=str(bench), lengths=(10, 100, 500), max_tokens=1024), cfg, settings,
                          tmp_path / "r.parquet", tmp_path / "rf.parquet", tmp_path / "r.json", tmp_path / "r.csv",
                          tmp_path / "r.png")["fake"]
        answered = run_longbench_answers(LongBenchConfig(input=str(bench), per_lang=None), cfg, settings,
                                         tmp_path / "l.parquet", tmp_path / "lf.parquet", tmp_path / "l.json")["fake"]
    # longbench, en: 10 words -> cap 164 (lossless); 100 -> 1064 > 1024; 500 -> ask 1314 > 1024
    assert (answered["capped_below_lossless"], answered["capped_below_ask"]) == (2, 1)
    assert answered["truncated_share"] == 0.0 and answered["degenerate_share"] == 0.0
    assert answered["llm"]["truncated"] == 0 and answered["mean_effective_words"] == 120.0
    # ruler, n = 1: caps of 0.8 x L words; 10 -> 84 tokens cuts the fake's 120 words (160 tokens) to 63, still
    # >= 8; 500 -> 1064 > the ceiling 1024: below its decision cap, yet it stopped on its own
    assert ruler["mean_words"] == {"10": 63.0, "100": 120.0, "500": 120.0}
    assert ruler["truncated_share"] == 0.3333 and ruler["llm"]["truncated"] == 1 and ruler["degenerate_share"] == 0
    assert (ruler["max_output_length"], ruler["max_output_length_effective"]) == (100, 100)
    assert ruler["capped_below_decision"] == 1 and ruler["decision_uncertain"] == []
    assert ruler["max_output_length_censored"] is False
    table = validate(read_table(tmp_path / "r.parquet"), Answers, "r.parquet")
    assert table["max_tokens"].to_list() == [84, 264, 1024]
    assert json.loads((tmp_path / "l.json").read_text())["fake"]["capped_below_ask"] == 1
