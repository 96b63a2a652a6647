"""The segments stage: per-part measures against hand-worked texts, and the stage on real tables."""

from __future__ import annotations

import itertools
import json
import string

import polars as pl
import pytest

from longwriter.config import build
from longwriter.errors import ConfigError
from longwriter.eval.segments import SegmentsConfig, part_measures, run_segments
from longwriter.generation import answer_row
from longwriter.judge import JudgeConfig
from longwriter.llm import ClientSettings, ModelSpec
from longwriter.schemas import Answers, LongSamples, SegmentParts, empty, validate
from longwriter.scoring import bucket_of
from longwriter.wordcount import cut_by_units, word_units


def test_a_copied_half_repeats_all_of_its_earlier_text():
    units = ["a", "b", "c", "d", "a", "b", "c", "d"]
    first, second = part_measures(units, parts=2, n=2)
    assert (first["words"], second["words"]) == (4, 4)
    assert first["distinct_n"] == second["distinct_n"] == 1.0  # (a b) (b c) (c d) in each half
    assert first["repeats_earlier"] == 0.0 and second["repeats_earlier"] == 1.0


def test_hand_worked_parts_of_a_text_that_loops_at_the_end():
    # 12 units in 3 parts of 4: "x y z w" new, "a b a b" repeats itself, "x y a b" repeats earlier text
    units = ["x", "y", "z", "w", "a", "b", "a", "b", "x", "y", "a", "b"]
    parts = part_measures(units, parts=3, n=2)
    # part 2's bigrams: (a b) (b a) (a b): 2 distinct of 3; none seen before it (the pair (w a) crosses the
    # boundary, so it is earlier text for part 3, not part 2's own)
    assert parts[1] == {"part": 2, "words": 4, "distinct_n": round(2 / 3, 4), "repeats_earlier": 0.0}
    # part 3's bigrams: (x y) seen in part 1, (y a) new, (a b) seen in part 2: 2 of 3 repeat earlier text
    assert parts[2] == {"part": 3, "words": 4, "distinct_n": 1.0, "repeats_earlier": round(2 / 3, 4)}


def test_chinese_counts_by_character_as_the_paper_does():
    units = word_units("春眠不觉晓处处闻啼鸟春眠不觉晓处处闻啼鸟")
    assert len(units) == 20
    first, second = part_measures(units, parts=2, n=2)
    assert first["repeats_earlier"] == 0.0 and second["repeats_earlier"] == 1.0


def test_unequal_lengths_split_as_evenly_as_they_can():
    assert [p["words"] for p in part_measures(list("abcdefghij"), parts=4, n=1)] == [2, 3, 2, 3]


@pytest.mark.parametrize(("data", "match"), [
    ({"parts": 1}, "parts"), ({"n": 0}, "n must"), ({"min_words": 5, "parts": 4, "n": 2}, "at least parts x n"),
])
def test_segments_config_errors(data, match):
    with pytest.raises(ConfigError, match=match):
        build(SegmentsConfig, data, "params.yaml:segments")


def _accounted_once(keys: set[str], table: pl.DataFrame, failures: pl.DataFrame) -> None:
    """Every text (``set/text_id``) is rows of the output table or one whole-text failures row: never both, never
    neither, nothing else."""
    out = {f"{s}/{t}" for s, t in table.select("set", "text_id").iter_rows()}
    whole = failures.filter(pl.col("section").is_null())["instruction_id"].to_list()
    assert len(whole) == len(set(whole))
    assert not out & set(whole) and out | set(whole) == keys
    assert set(failures["instruction_id"]) <= keys


def _distinct_words(n: int) -> str:
    """``n`` different letter-only words (digits are no word units)."""
    words = ("".join(p) for p in itertools.product(string.ascii_lowercase, repeat=3))
    return " ".join(next(words) for _ in range(n))


def test_the_stage_measures_each_text_set_and_leaves_short_answers_out(tmp_path):
    fresh = _distinct_words(300)
    varied = _distinct_words(120)
    loop = "The sea was calm and the sky was clear. " * 40
    samples = validate(pl.DataFrame([{"id": "s1", "lang": "en", "source": "p", "planned_words": 300, "sections": 3,
                                      "lines_removed": 0, "words": len(word_units(varied)),
                                      "messages": [{"role": "user", "content": "Write."},
                                                   {"role": "assistant", "content": varied}]}]),
                       LongSamples, "s")
    samples.write_parquet(tmp_path / "samples.parquet")
    request = {"index": 0, "prompt": "Write.", "type": None, "lang": "en", "required": 300,
               "bucket": bucket_of(300)}
    rows = [answer_row("base", request, 0, loop, "length", 1024, 5, 500, 1.0),
            answer_row("base", {**request, "index": 1}, 0, "Too short.", "stop", 1024, 5, 3, 1.0),
            answer_row("sft", request, 0, fresh, "stop", 1024, 5, 300, 1.0)]
    validate(pl.DataFrame(rows, schema=empty(Answers).schema), Answers, "a").write_parquet(tmp_path / "a.parquet")
    result = run_segments(SegmentsConfig(parts=4, n=2, min_words=50), tmp_path / "samples.parquet",
                          tmp_path / "a.parquet", tmp_path / "parts.parquet", tmp_path / "m.json",
                          tmp_path / "curve.csv", tmp_path / "f.parquet")
    sets = result["sets"]
    assert list(sets) == ["agentwrite", "base", "sft"]
    assert sets["base"]["answers"] == 1 and sets["base"]["short"] == 1
    # the loop: from the second part on, every word pair repeats earlier text
    assert sets["base"]["first"]["repeats_earlier"] < 1.0 and sets["base"]["last"]["repeats_earlier"] == 1.0
    assert sets["base"]["repeats_earlier_rise"] > 0.5
    assert json.loads((tmp_path / "m.json").read_text()) == result
    curve = pl.read_csv(tmp_path / "curve.csv")
    assert curve.columns == ["model", "part", "words", "distinct_n", "repeats_earlier", "quality"]
    assert curve["quality"].is_null().all()
    # the short answer (base, request 1) is one failures row; every other text is a row per part
    failures = pl.read_parquet(tmp_path / "f.parquet")
    assert failures.select("stage", "instruction_id", "section", "reason").rows() == [
        ("segments", "base/1", None, "too_short")]
    assert "2 words" in failures["error"][0] and "min_words (50)" in failures["error"][0]
    assert result["failures"] == {"too_short": 1}
    parts = validate(pl.read_parquet(tmp_path / "parts.parquet"), SegmentParts, "parts")
    assert parts.columns == ["set", "text_id", "part", "words", "distinct_n", "repeats_earlier", "quality"]
    assert parts.select("set", "text_id").unique(maintain_order=True).rows() == [
        ("agentwrite", "s1"), ("base", "0"), ("sft", "0")]
    assert parts.filter(pl.col("set") == "base")["part"].to_list() == [1, 2, 3, 4]
    assert parts.filter(pl.col("set") == "base")["repeats_earlier"][-1] == 1.0 and parts["quality"].is_null().all()
    # one text per set measured: the table's parts are the curve's means
    measures = ["part", "words", "distinct_n", "repeats_earlier"]
    assert parts.select("set", *measures).rows() == curve.select("model", *measures).rows()
    _accounted_once({"agentwrite/s1", "base/0", "base/1", "sft/0"}, parts, failures)
    assert curve.filter(pl.col("model") == "base")["part"].to_list() == [1, 2, 3, 4]
    # distinct text repeats nothing anywhere
    assert sets["sft"]["first"]["repeats_earlier"] == sets["sft"]["last"]["repeats_earlier"] == 0.0
    assert sets["agentwrite"]["answers"] == 1 and sets["agentwrite"]["distinct_n_drop"] == 0.0


def test_cut_by_units_keeps_the_text_and_the_unit_boundaries():
    text = "One two three, four five six seven. Eight!"
    pieces = cut_by_units(text, 4)
    assert pieces == ["One two ", "three, four ", "five six ", "seven. Eight!"] and "".join(pieces) == text
    assert cut_by_units("我们今天去公园玩了很久。然后回家", 3) == ["我们今天去", "公园玩了很", "久。然后回家"]
    assert cut_by_units("one two", 4) == ["", "one ", "", "two"]  # fewer units than parts: empty pieces


def test_the_judge_rates_each_part_given_the_text_before_it(fake_server, tmp_path):
    text = _distinct_words(80)
    samples = validate(pl.DataFrame([{"id": f"s{i}", "lang": "en", "source": "p", "planned_words": 80,
                                      "sections": 2, "lines_removed": 0, "words": 80,
                                      "messages": [{"role": "user", "content": f"Write piece {i}."},
                                                   {"role": "assistant", "content": text}]} for i in range(3)]),
                       LongSamples, "s")
    samples.write_parquet(tmp_path / "samples.parquet")
    validate(pl.DataFrame([], schema=empty(Answers).schema), Answers, "a").write_parquet(tmp_path / "a.parquet")
    # 2 answers rated (judge_answers) x 4 parts; the 6th call fails (no retries): one failure row
    with fake_server(script=["ok"] * 5 + ["500"]) as srv:
        judge = JudgeConfig(model=ModelSpec(provider="openai", base_url=srv.base_url, model="judge"))
        settings = ClientSettings(cache_dir=str(tmp_path / "cache"), max_retries=0)
        result = run_segments(SegmentsConfig(parts=4, n=2, min_words=50, judge=True, judge_answers=2),
                              tmp_path / "samples.parquet", tmp_path / "a.parquet", tmp_path / "parts.parquet",
                              tmp_path / "m.json", tmp_path / "curve.csv", tmp_path / "f.parquet", judge, settings)
        prompts = [b["messages"][1]["content"] for b in srv.bodies]
    assert len(prompts) == 8 and result["judge_failed"] == 1 and result["judge_llm"]["failed_calls"] == 1
    # the first part is shown as the beginning, later parts after the text before them
    firsts = [p for p in prompts if "(the part is the response's beginning)" in p]
    assert len(firsts) == 2 and all("<text-before-" in p for p in prompts if p not in firsts)
    failures = pl.read_parquet(tmp_path / "f.parquet")
    assert failures.height == 1 and failures["reason"][0] == "llm_error" and failures["section"][0] in (1, 2, 3, 4)
    # the failed part is a note about a text that is still measured: its row stays, without quality
    failed = (failures["instruction_id"][0], failures["section"][0])
    assert failed[0] in ("agentwrite/s0", "agentwrite/s1")
    parts = pl.read_parquet(tmp_path / "parts.parquet")
    assert parts.height == 12
    rated = parts.filter(pl.col("quality").is_not_null())
    assert rated.height == 7 and set(rated["text_id"]) == {"s0", "s1"}
    assert parts.filter(pl.col("text_id") == "s2")["quality"].is_null().all()  # past judge_answers
    assert (parts.filter((pl.col("set") + "/" + pl.col("text_id") == failed[0]) & (pl.col("part") == failed[1]))
            ["quality"].to_list() == [None])
    _accounted_once({"agentwrite/s0", "agentwrite/s1", "agentwrite/s2"}, parts, failures)
    m = result["sets"]["agentwrite"]
    assert m["judged_answers"] == 2 and m["answers"] == 3
    curve = pl.read_csv(tmp_path / "curve.csv")
    assert curve["quality"].drop_nulls().is_between(0, 100).all() and curve["quality"].drop_nulls().len() == 4
    assert m["quality_drop"] == pytest.approx(m["quality_first"] - m["quality_last"], abs=1e-3)
