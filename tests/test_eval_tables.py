"""Evaluation tables and metrics without a model: benchmark files, buckets, LongBench-Write and LongWrite-Ruler
scores, pairwise comparison and the max_tokens cap. Every expected number is worked out by hand here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from longwriter.benchmark import read_benchmark
from longwriter.errors import InputError
from longwriter.eval.compare import compare_metrics, outcome
from longwriter.eval.longbench import LongBenchConfig, asked_requests, longbench_metrics, score_row, unanswered_rows
from longwriter.eval.ruler import ruler_metrics
from longwriter.generation import fit_max_tokens
from longwriter.judge import DIMENSIONS, Rating, RatingOutcome
from longwriter.llm import ModelSpec
from longwriter.schemas import Answers, Comparisons, Scores, empty, validate
from longwriter.scoring import bucket_of

ROOT = Path(__file__).parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "eval"
COLUMNS = ["index", "prompt", "type", "required", "lang", "bucket"]


def _write_lines(path: Path, lines: list[Any]) -> Path:
    """One line per entry: dicts as JSON, strings verbatim (for malformed or blank lines)."""
    text = "".join((json.dumps(x, ensure_ascii=False) if isinstance(x, dict) else x) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


GOOD_EN = {"prompt": "Write a 300-word story about a cat.", "type": "Fiction", "length": 300}
GOOD_ZH = {"prompt": "写一篇800字的散文，描写秋天的北京。", "type": "散文", "length": 800}


# ---------------------------------------------------------------------------------------------- read_benchmark


def test_read_benchmark_every_field() -> None:
    path = FIXTURES / "longbench_format.jsonl"
    bench = read_benchmark(path)
    assert bench.columns == COLUMNS  # the unknown fields source_id and meta are dropped
    assert bench.schema["index"] == pl.Int64 and bench.schema["required"] == pl.Int64
    assert bench["index"].to_list() == list(range(10))
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert bench["prompt"].to_list() == [x["prompt"] for x in lines]
    assert bench["type"].to_list() == [x["type"] for x in lines]
    assert bench["required"].to_list() == [300, 499, 500, 1999, 2000, 3999, 4000, 19999, 20000, 30000]
    assert bench["lang"].to_list() == ["en", "zh"] * 5
    assert bench["bucket"].to_list() == ["0-500", "0-500", "500-2k", "500-2k", "2k-4k", "2k-4k",
                                         "4k-20k", "4k-20k", "4k-20k", "20k+"]


def test_read_benchmark_without_type_field_gives_null_types() -> None:
    bench = read_benchmark(FIXTURES / "longbench_no_type.jsonl")
    assert bench.columns == COLUMNS
    assert bench.schema["type"] == pl.Utf8
    assert bench["type"].to_list() == [None, None, None]
    assert bench["required"].to_list() == [300, 499, 500]
    assert bench["lang"].to_list() == ["en", "zh", "en"]


def test_project_longbench_files() -> None:
    laptop = read_benchmark(ROOT / "data" / "eval" / "longbench.jsonl")
    assert laptop.height == 16 and laptop["lang"].value_counts().sort("lang")["count"].to_list() == [8, 8]
    assert set(laptop["bucket"]) == {"0-500"} and laptop["required"].max() <= 300
    bench = read_benchmark(ROOT / "data" / "eval" / "longbench_buckets.jsonl")
    assert bench.height == 16
    assert bench["index"].to_list() == list(range(16))
    assert set(bench["lang"]) == {"zh", "en"}
    pairs = set(zip(bench["bucket"], bench["lang"], strict=True))
    assert pairs == {(b, lang) for b in ("0-500", "500-2k", "2k-4k", "4k-20k") for lang in ("zh", "en")}
    assert bench["bucket"].to_list() == [bucket_of(n) for n in bench["required"]]


def test_longbench_per_lang_asks_the_first_of_each_language_in_file_order() -> None:
    bench = read_benchmark(ROOT / "data" / "eval" / "longbench.jsonl")
    asked = asked_requests(bench, 2)
    assert asked.height == 4 and asked["lang"].value_counts().sort("lang")["count"].to_list() == [2, 2]
    for lang in ("en", "zh"):
        mine = bench.filter(pl.col("lang") == lang)["index"].to_list()
        assert asked.filter(pl.col("lang") == lang)["index"].to_list() == mine[:2]
    default = asked_requests(bench, LongBenchConfig().per_lang)
    assert default["lang"].value_counts().sort("lang")["count"].to_list() == [1, 1]
    assert asked_requests(bench, None).equals(bench)
    assert asked_requests(bench, 100).equals(bench)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4"])
def test_longbench_per_lang_refuses_non_positive_integers(bad: Any) -> None:
    with pytest.raises(ValueError, match="per_lang"):
        LongBenchConfig(per_lang=bad)


def test_project_ruler_file() -> None:
    bench = read_benchmark(ROOT / "data" / "eval" / "ruler.jsonl")
    counts = bench.group_by("required").agg(
        pl.len().alias("n"), (pl.col("lang") == "zh").sum().alias("zh"), (pl.col("lang") == "en").sum().alias("en"))
    assert counts.height >= 1
    for row in counts.iter_rows(named=True):
        assert (row["n"], row["zh"], row["en"]) == (8, 4, 4), row
    # the stage's default lengths are all present
    assert {1000, 2000, 5000, 10000, 20000, 30000} <= set(bench["required"])


def test_read_benchmark_lengths_filter() -> None:
    path = FIXTURES / "longbench_format.jsonl"
    bench = read_benchmark(path, lengths=[500, 20000])
    assert bench["required"].to_list() == [500, 20000]
    assert bench["index"].to_list() == [2, 8]  # positions in the whole file, not in the filtered table
    ruler = read_benchmark(ROOT / "data" / "eval" / "ruler.jsonl", lengths=[1000, 2000])
    assert ruler.height == 16 and set(ruler["required"]) == {1000, 2000}


def test_read_benchmark_length_not_in_file() -> None:
    path = FIXTURES / "longbench_format.jsonl"
    with pytest.raises(InputError) as err:
        read_benchmark(path, lengths=[500, 1234])
    assert err.value.path == str(path)
    assert err.value.column == "length"
    assert "1234" in str(err.value)


@pytest.mark.parametrize(("lines", "row", "column"), [
    pytest.param([GOOD_EN, {"prompt": "Write a poem.", "type": "Poetry"}, GOOD_ZH], 2, "length", id="missing-length"),
    pytest.param([GOOD_EN, GOOD_ZH, {**GOOD_EN, "length": 0}], 3, "length", id="length-zero"),
    pytest.param([GOOD_EN, {**GOOD_ZH, "length": -5}], 2, "length", id="length-negative"),
    pytest.param([GOOD_EN, GOOD_ZH, {**GOOD_EN, "length": "1000"}], 3, "length", id="length-string"),
    pytest.param([GOOD_EN, {**GOOD_ZH, "prompt": "  \t "}], 2, "prompt", id="blank-prompt"),
    pytest.param([GOOD_EN, {**GOOD_ZH, "prompt": ""}], 2, "prompt", id="empty-prompt"),
    pytest.param([GOOD_EN, {**GOOD_ZH, "prompt": None}], 2, "prompt", id="null-prompt"),
    pytest.param([GOOD_EN, GOOD_ZH, '{"prompt": "Write.", "length": 100', GOOD_EN], 3, None, id="malformed-json"),
    pytest.param([GOOD_EN, "[1, 2]"], 2, None, id="not-an-object"),
    # blank lines are skipped but counted: the row is the editor's line number
    pytest.param(["", GOOD_EN, "   ", {**GOOD_ZH, "length": 0}], 4, "length", id="blank-lines-counted"),
])
def test_read_benchmark_bad_input(tmp_path: Path, lines: list[Any], row: int, column: str | None) -> None:
    path = _write_lines(tmp_path / "bench.jsonl", lines)
    with pytest.raises(InputError) as err:
        read_benchmark(path)
    assert (err.value.path, err.value.row, err.value.column) == (str(path), row, column)


@pytest.mark.parametrize("text", ["", "\n\n  \n"], ids=["empty", "only-blank-lines"])
def test_read_benchmark_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bench.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_benchmark(path)
    assert err.value.path == str(path)
    assert err.value.row is None


def test_read_benchmark_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError) as err:
        read_benchmark(tmp_path / "absent.jsonl")
    assert err.value.path == str(tmp_path / "absent.jsonl")


def test_read_benchmark_float_length_row(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "bench.jsonl", [GOOD_EN, GOOD_ZH, {**GOOD_EN, "length": 1000.5}])
    with pytest.raises(InputError) as err:
        read_benchmark(path)
    assert (err.value.row, err.value.column) == (3, "length")


def test_read_benchmark_string_length_on_first_line(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "bench.jsonl", [{**GOOD_EN, "length": "1000"}, GOOD_ZH, GOOD_EN])
    with pytest.raises(InputError) as err:
        read_benchmark(path)
    assert (err.value.row, err.value.column) == (1, "length")


def test_read_benchmark_ignores_unknown_field_of_mixed_types(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "bench.jsonl", [{**GOOD_EN, "note": 1}, {**GOOD_ZH, "note": "see above"}])
    bench = read_benchmark(path)
    assert bench.columns == COLUMNS and bench.height == 2


# --------------------------------------------------------------------------------------------------- buckets


@pytest.mark.parametrize(("required", "bucket"), [
    (0, "0-500"), (1, "0-500"), (499, "0-500"), (500, "500-2k"), (1999, "500-2k"), (2000, "2k-4k"),
    (3999, "2k-4k"), (4000, "4k-20k"), (19999, "4k-20k"), (20000, "4k-20k"), (20001, "20k+"), (100000, "20k+"),
])
def test_bucket_boundaries(required: int, bucket: str) -> None:
    assert bucket_of(required) == bucket


# ------------------------------------------------------------------------------------------ LongBench-Write


def _answer(model: str, index: int, lang: str, bucket: str, required: int, words: int,
            effective: int | None = None) -> dict[str, Any]:
    """An answer row as score_row reads it; ``effective``: the words before a loop (None: no loop)."""
    return {"model": model, "index": index, "lang": lang, "bucket": bucket, "required": required, "words": words,
            "effective_words": words if effective is None else effective, "degenerate": effective is not None}


def _rated(*scores: int, truncated: bool = False) -> RatingOutcome:
    return RatingOutcome(Rating(dict(zip(DIMENSIONS, scores, strict=True)), "fine"), attempts=1, truncated=truncated)


FAILED = RatingOutcome(None, attempts=3, truncated=False, error="judge gave no JSON")


def test_score_row_values() -> None:
    row = score_row(_answer("m", 7, "en", "500-2k", 1000, 1000), _rated(5, 4, 3, 2, 1, 5))
    assert row["length_score"] == 100.0
    assert row["produced"] == 1000 and row["required"] == 1000 and row["index"] == 7
    assert {d: row[d] for d in DIMENSIONS} == dict(zip(DIMENSIONS, (5, 4, 3, 2, 1, 5), strict=True))
    assert row["quality_score"] == pytest.approx((4 + 3 + 2 + 1 + 0 + 4) / 6 * 25)
    assert row["judge_attempts"] == 1 and row["judge_truncated"] is False and row["analysis"] == "fine"
    # over by 1.3x: 100 * (1 - 0.3/3); under by half: 100 * (1 - (2 - 1)/2); 4x over and empty: 0
    assert score_row(_answer("m", 0, "en", "0-500", 100, 130), _rated(*[3] * 6))["length_score"] == pytest.approx(90)
    assert score_row(_answer("m", 0, "en", "0-500", 100, 50), _rated(*[3] * 6))["length_score"] == pytest.approx(50)
    assert score_row(_answer("m", 0, "en", "0-500", 100, 400), _rated(*[3] * 6))["length_score"] == 0.0
    assert score_row(_answer("m", 0, "en", "0-500", 100, 0), _rated(*[3] * 6))["length_score"] == 0.0
    failed = score_row(_answer("m", 1, "zh", "0-500", 400, 200), FAILED)
    assert failed["length_score"] == pytest.approx(50)
    assert all(failed[d] is None for d in DIMENSIONS)
    assert failed["quality_score"] is None and failed["analysis"] is None and failed["judge_attempts"] == 3


def _scores() -> pl.DataFrame:
    rows = [
        # m1: three judged answers and one judge failure (0-500, zh)
        score_row(_answer("m1", 0, "en", "0-500", 100, 100), _rated(5, 4, 5, 4, 3, 4)),      # S_l 100
        score_row(_answer("m1", 1, "zh", "500-2k", 1000, 500), _rated(3, 3, 3, 3, 3, 3)),    # S_l 50
        score_row(_answer("m1", 2, "en", "2k-4k", 3000, 6000), _rated(1, 2, 3, 4, 5, 1)),    # S_l 200/3
        score_row(_answer("m1", 3, "zh", "0-500", 400, 0), FAILED),                          # S_l 0
        # m2: no 2k-4k answer; one beyond the paper's buckets; a truncated judgement
        score_row(_answer("m2", 0, "en", "0-500", 100, 130), _rated(4, 4, 4, 4, 4, 4)),      # S_l 90
        score_row(_answer("m2", 1, "zh", "500-2k", 1000, 1000), _rated(5, 5, 5, 5, 5, 5, truncated=True)),
        score_row(_answer("m2", 2, "en", "4k-20k", 5000, 10000), _rated(2, 2, 2, 2, 2, 2)),  # S_l 200/3
        score_row(_answer("m2", 3, "en", "20k+", 20000, 20000), _rated(3, 3, 3, 3, 3, 3)),   # S_l 100
    ]
    return validate(pl.DataFrame(rows, schema=empty(Scores).schema), Scores, "scores")


def _all_answered(s: float | None, s_l: float | None, s_q: float | None, answers: int, judged: int) -> dict:
    """A metrics group in which every request was answered: S_l over the requests equals S_l over the answers."""
    return {"S": s, "S_l": s_l, "S_q": s_q, "S_l_answered": s_l, "S_l_effective": s_l, "requests": answers,
            "answers": answers, "judged": judged}


def _dim(*ratings: int) -> float:
    return (sum(ratings) / len(ratings) - 1) * 25


def test_longbench_metrics_overall_and_dimensions() -> None:
    metrics = longbench_metrics(_scores())
    assert sorted(metrics) == ["m1", "m2"]
    m1 = metrics["m1"]
    dims = {"relevance": _dim(5, 3, 1), "accuracy": _dim(4, 3, 2), "coherence": _dim(5, 3, 3),
            "clarity": _dim(4, 3, 4), "breadth_and_depth": _dim(3, 3, 5), "reading_experience": _dim(4, 3, 1)}
    assert dims["relevance"] == 50 and dims["reading_experience"] == pytest.approx(41.6667, abs=1e-4)
    assert m1["dimensions"] == {d: round(v, 2) for d, v in dims.items()}
    s_l = (100 + 50 + 200 / 3 + 0) / 4  # the unjudged answer counts for S_l
    s_q = sum(dims.values()) / 6
    assert m1["S_l"] == round(s_l, 2) == 54.17
    assert m1["S_q"] == round(s_q, 2) == 56.94
    assert m1["S"] == round((s_l + s_q) / 2, 2) == 55.56
    assert (m1["answers"], m1["judged"], m1["judge_failed"], m1["judge_truncated"]) == (4, 3, 1, 0)

    m2 = metrics["m2"]
    m2_dims = _dim(4, 5, 2, 3)  # every dimension has the same ratings
    assert m2["dimensions"] == dict.fromkeys(DIMENSIONS, round(m2_dims, 2))
    assert m2["S_l"] == round((90 + 100 + 200 / 3 + 100) / 4, 2) == 89.17
    assert m2["S_q"] == round(m2_dims, 2) == 62.5
    assert m2["S"] == round(((90 + 100 + 200 / 3 + 100) / 4 + m2_dims) / 2, 2)
    assert (m2["answers"], m2["judged"], m2["judge_failed"], m2["judge_truncated"]) == (4, 4, 0, 1)


def test_longbench_metrics_buckets_and_languages() -> None:
    metrics = longbench_metrics(_scores())
    m1, m2 = metrics["m1"], metrics["m2"]
    # buckets without answers are absent; the paper's buckets come first, in their order
    assert list(m1["buckets"]) == ["0-500", "500-2k", "2k-4k"]
    assert list(m2["buckets"]) == ["0-500", "500-2k", "4k-20k", "20k+"]

    q0 = (4 + 3 + 4 + 3 + 2 + 3) / 6 * 25  # m1's only judged 0-500 answer
    assert m1["buckets"]["0-500"] == _all_answered(round((50 + q0) / 2, 2), 50.0, round(q0, 2), 2, 1)
    assert m1["buckets"]["500-2k"] == _all_answered(50.0, 50.0, 50.0, 1, 1)
    q2 = (0 + 1 + 2 + 3 + 4 + 0) / 6 * 25
    assert m1["buckets"]["2k-4k"] == _all_answered(round((200 / 3 + q2) / 2, 2), 66.67, round(q2, 2), 1, 1)
    assert m2["buckets"]["0-500"] == _all_answered(82.5, 90.0, 75.0, 1, 1)
    assert m2["buckets"]["20k+"] == _all_answered(75.0, 100.0, 50.0, 1, 1)

    assert list(m1["lang"]) == ["en", "zh"]
    en_dims = [_dim(5, 1), _dim(4, 2), _dim(5, 3), _dim(4, 4), _dim(3, 5), _dim(4, 1)]
    en_l, en_q = (100 + 200 / 3) / 2, sum(en_dims) / 6
    assert m1["lang"]["en"] == _all_answered(round((en_l + en_q) / 2, 2), round(en_l, 2), round(en_q, 2), 2, 2)
    assert m1["lang"]["zh"] == _all_answered(37.5, 25.0, 50.0, 2, 1)
    zh_only = m2["lang"]["zh"]
    assert zh_only == _all_answered(100.0, 100.0, 100.0, 1, 1)


def test_longbench_metrics_unjudged_group_has_no_quality() -> None:
    rows = [score_row(_answer("m", 0, "en", "0-500", 100, 100), _rated(*[5] * 6)),
            score_row(_answer("m", 1, "zh", "4k-20k", 5000, 2500), FAILED)]
    m = longbench_metrics(pl.DataFrame(rows, schema=empty(Scores).schema))["m"]
    assert m["buckets"]["4k-20k"] == _all_answered(None, 50.0, None, 1, 0)
    assert m["lang"]["zh"]["S_q"] is None
    assert (m["S_l"], m["S_q"], m["S"]) == (75.0, 100.0, 87.5)
    assert m["judge_failed"] == 1


def test_an_unanswered_request_scores_zero_in_the_headline_s_l(tmp_path: Path) -> None:
    """A model that errors on the long prompts must not score higher than one that answers them badly."""
    bench = pl.DataFrame({"index": [0, 1], "prompt": ["Write 100 words.", "写五千字。"], "type": [None, None],
                          "required": [100, 5000], "lang": ["en", "zh"], "bucket": ["0-500", "4k-20k"]})
    failures = pl.DataFrame({"stage": ["longbench_answer"] * 2, "instruction_id": ["m/1", "m/2"],
                             "section": [None, None], "attempts": [3, 0], "reason": ["llm_error", "left_out"],
                             "error": ["context length exceeded", "past longbench.per_lang 1 for en"]})
    rows = [score_row(_answer("m", 0, "en", "0-500", 100, 100), _rated(*[5] * 6)),
            *unanswered_rows(bench, failures, "f.parquet")]
    scores = validate(pl.DataFrame(rows, schema=empty(Scores).schema), Scores, "scores")
    assert scores.filter(pl.col("index") == 1).select("produced", "answered", "length_score").row(0) == (0, False, 0.0)
    m = longbench_metrics(scores)["m"]
    assert (m["S_l"], m["S_l_answered"], m["S_q"]) == (50.0, 100.0, 100.0)  # (100 + 0) / 2 vs 100 / 1
    assert m["S"] == 75.0 and (m["requests"], m["answers"], m["unanswered"], m["judge_failed"]) == (2, 1, 1, 0)
    assert m["buckets"]["4k-20k"] == {"S": None, "S_l": 0.0, "S_q": None, "S_l_answered": None,
                                      "S_l_effective": 0.0, "requests": 1, "answers": 0, "judged": 0}
    assert m["lang"]["zh"]["S_l"] == 0.0
    # m/2 was never asked (longbench.per_lang): no score row, though its index is not in the file either
    assert scores.height == 2
    with pytest.raises(InputError, match=r"f.parquet: row 1, column 'instruction_id'"):
        unanswered_rows(bench, failures.with_columns(pl.lit("m/7").alias("instruction_id")), "f.parquet")


# ---------------------------------------------------------------------------------------------- LongWrite-Ruler


def _ruler_answers(spec: dict[str, dict[int, list[tuple[int, str, str]]]]) -> pl.DataFrame:
    """``{model: {required: [(words, finish_reason, lang), ...]}}`` as an ``Answers`` table."""
    rows = []
    for model, per_length in spec.items():
        index = 0
        for required, answers in per_length.items():
            for words, finish, lang in answers:
                rows.append({"model": model, "index": index, "sample": 0, "prompt": f"Write {required} words.",
                             "type": None, "lang": lang, "required": required, "bucket": bucket_of(required),
                             "text": "x", "words": words, "finish_reason": finish, "max_tokens": 32768,
                             "prompt_tokens": 10, "completion_tokens": words, "latency_s": 1.0,
                             "cap_lossless": True, "cap_below_ask": False, "effective_words": words,
                             "degenerate": False})
                index += 1
    return validate(pl.DataFrame(rows, schema=empty(Answers).schema), Answers, "answers")


RULER = {
    # 1000 reached (900 >= 800), 2000 not (1000 < 1600), 5000 not
    "a": {1000: [(850, "stop", "en"), (950, "stop", "zh")], 2000: [(900, "stop", "en"), (1100, "length", "zh")],
          5000: [(100, "length", "en"), (300, "length", "zh")]},
    # 1000 reached exactly (800 = 0.8 x 1000), 2000 not, 5000 reached: the gap does not matter
    "b": {1000: [(800, "stop", "en"), (800, "stop", "zh")], 2000: [(1000, "stop", "en"), (1000, "stop", "zh")],
          5000: [(4000, "stop", "en"), (4400, "length", "zh")]},
    # nothing reached
    "c": {1000: [(10, "stop", "en"), (20, "stop", "zh")], 2000: [(10, "stop", "en"), (30, "stop", "zh")],
          5000: [(10, "stop", "en"), (50, "stop", "zh")]},
}


def test_ruler_metrics() -> None:
    metrics = ruler_metrics(_ruler_answers(RULER), (1000, 2000, 5000), 0.8)
    assert sorted(metrics) == ["a", "b", "c"]
    a, b, c = metrics["a"], metrics["b"], metrics["c"]
    assert a["mean_words"] == {"1000": 900.0, "2000": 1000.0, "5000": 200.0}
    assert b["mean_words"] == {"1000": 800.0, "2000": 1000.0, "5000": 4200.0}
    assert c["mean_words"] == {"1000": 15.0, "2000": 20.0, "5000": 30.0}
    assert (a["max_output_length"], b["max_output_length"], c["max_output_length"]) == (1000, 5000, 0)
    assert a["answers"] == b["answers"] == c["answers"] == 6
    assert a["truncated_share"] == round(3 / 6, 4)
    assert b["truncated_share"] == round(1 / 6, 4) == 0.1667
    assert c["truncated_share"] == 0.0
    assert a["mean_words_by_lang"] == {"en": round((850 + 900 + 100) / 3, 1), "zh": round((950 + 1100 + 300) / 3, 1)}


def test_ruler_metrics_reach_and_lengths() -> None:
    answers = _ruler_answers(RULER)
    strict = ruler_metrics(answers, (1000, 2000, 5000), 0.9)
    # a: 900 >= 900 still reaches 1000; b: 800 < 900 and 4200 < 4500 -> nothing
    assert (strict["a"]["max_output_length"], strict["b"]["max_output_length"]) == (1000, 0)
    # only the listed lengths are reported
    narrow = ruler_metrics(answers, (1000, 2000), 0.8)
    assert narrow["b"]["max_output_length"] == 1000
    assert narrow["b"]["mean_words"] == {"1000": 800.0, "2000": 1000.0}


# ----------------------------------------------------------------------------------------------------- compare


@pytest.mark.parametrize(("a_first", "b_first", "expected"), [
    ("a", "a", "win"), ("a", "tie", "win"), ("tie", "a", "win"),
    ("a", "b", "tie"), ("b", "a", "tie"), ("tie", "tie", "tie"),
    ("b", "tie", "loss"), ("tie", "b", "loss"), ("b", "b", "loss"),
    (None, "a", None), ("a", None, None), (None, None, None), (None, "tie", None), ("b", None, None),
])
def test_outcome(a_first: str | None, b_first: str | None, expected: str | None) -> None:
    assert outcome(a_first, b_first) == expected


def test_compare_metrics() -> None:
    verdicts = [("a", "a"), ("a", "tie"), ("b", "a"), ("b", "b"), (None, "a"), ("tie", "tie"), ("tie", "b"),
                ("a", "a")]
    rows = [{"model_a": "x", "model_b": "y", "index": i, "a_first": v1, "b_first": v2, "outcome": outcome(v1, v2),
             "attempts": 2} for i, (v1, v2) in enumerate(verdicts)]
    # another pair in the same table: must not leak into x_vs_y
    rows += [{"model_a": "y", "model_b": "x", "index": 0, "a_first": "a", "b_first": "a", "outcome": "win",
              "attempts": 2},
             {"model_a": "y", "model_b": "x", "index": 1, "a_first": None, "b_first": None, "outcome": None,
              "attempts": 6}]
    table = validate(pl.DataFrame(rows, schema=empty(Comparisons).schema), Comparisons, "comparisons")
    metrics = compare_metrics(table, (("x", "y"), ("y", "x"), ("x", "z")))
    # x vs y: 7 judged: win, win, tie, loss, tie, loss, win; agreement on (a,a), (b,b), (tie,tie), (a,a)
    assert metrics["x_vs_y"] == {"win_rate": round(3 / 7, 4), "tie_rate": round(2 / 7, 4),
                                 "loss_rate": round(2 / 7, 4), "judged": 7, "failed": 1,
                                 "order_agreement": round(4 / 7, 4)}
    assert metrics["y_vs_x"] == {"win_rate": 1.0, "tie_rate": 0.0, "loss_rate": 0.0, "judged": 1, "failed": 1,
                                 "order_agreement": 1.0}
    assert metrics["x_vs_z"] == {"win_rate": None, "tie_rate": None, "loss_rate": None, "judged": 0, "failed": 0,
                                 "order_agreement": None}


def test_compare_metrics_empty_table() -> None:
    assert compare_metrics(empty(Comparisons), ()) == {}
    assert compare_metrics(empty(Comparisons), (("x", "y"),))["x_vs_y"]["judged"] == 0


# ------------------------------------------------------------------------------------------------ max_tokens


def _user(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def test_fit_max_tokens_unknown_context() -> None:
    spec = ModelSpec(provider="openai", base_url="http://127.0.0.1:9/v1", model="m")
    assert fit_max_tokens(spec, _user("Write 30000 words." * 1000), 32768) == 32768


def test_fit_max_tokens_embedded_context() -> None:
    spec = ModelSpec(provider="embedded", n_ctx=4096)
    prompt = "Write a 500-word essay about rivers."
    capped = fit_max_tokens(spec, _user(prompt), 32768)
    assert 1 <= capped < 4096 - len(prompt.encode())
    assert capped > 4096 - len(prompt.encode()) - 200  # the template and slack allowance stays small
    assert fit_max_tokens(spec, _user(prompt), 100) == 100  # a small request is left alone
    # a longer prompt leaves exactly that much less room
    assert fit_max_tokens(spec, _user(prompt + "x" * 100), 32768) == capped - 100


def test_fit_max_tokens_openai_with_context_window() -> None:
    spec = ModelSpec(provider="openai", base_url="http://127.0.0.1:9/v1", model="m", context_window=8192)
    capped = fit_max_tokens(spec, _user("Write."), 32768)
    assert 8192 - 200 < capped < 8192 - len(b"Write.")


def test_fit_max_tokens_never_below_one() -> None:
    spec = ModelSpec(provider="embedded", n_ctx=256)
    assert fit_max_tokens(spec, _user("word " * 5000), 32768) == 1
    assert fit_max_tokens(spec, _user("写" * 300), 32768) == 1


def test_fit_max_tokens_counts_utf8_bytes() -> None:
    spec = ModelSpec(provider="embedded", n_ctx=4096)
    chinese = "请写一篇关于长江的文章" * 10  # 110 characters, 330 UTF-8 bytes
    assert len(chinese) == 110 and len(chinese.encode()) == 330
    capped = fit_max_tokens(spec, _user(chinese), 32768)
    assert capped < 4096 - 330
    # the same as an ASCII prompt of as many bytes, and 220 less than one of as many characters
    assert capped == fit_max_tokens(spec, _user("a" * 330), 32768)
    assert capped == fit_max_tokens(spec, _user("a" * 110), 32768) - 220
