"""Length targets (issue 30): the judge's word range for prompts that state no length, and its three users.

The stage runs on the embedded judge (real calls, parsing, re-asks, cache); longbench scores saved answers
(``provider: answers``) against a target with the embedded judge rating them; grpo's prompts and reward and
dpo_pairs' length requests are checked on their own functions."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from longwriter.agentwrite.stated_length import hide_stated_length, required_words_in
from longwriter.benchmark import read_benchmark
from longwriter.errors import InputError
from longwriter.eval.answers import EvalConfig
from longwriter.eval.longbench import LongBenchConfig, run_longbench, run_longbench_answers
from longwriter.files import read_table
from longwriter.generation import EvalModel
from longwriter.judge import JudgeConfig, parse_target, target_messages
from longwriter.length_target import (
    LengthTargetConfig,
    agreement_metrics,
    read_targets,
    run_length_target,
    with_targets,
)
from longwriter.llm import ClientSettings, ModelSpec, Sampling
from longwriter.schemas import Instructions, LengthTargets, write_checked
from longwriter.scoring import length_score, range_length_score
from longwriter.train.grpo import GRPOSettings, rl_prompts
from longwriter.train.pairs import length_requests
from longwriter.train.rewards import length_reward

UNSTATED = "Write a short story about a lighthouse keeper who finds a message in a bottle."
UNSTATED_ZH = "写一封信给十年后的自己。"
JUDGE = JudgeConfig(sampling=Sampling(temperature=0.0, top_p=1.0, max_tokens=160), max_attempts=3)


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _targets(path: Path, rows: list[tuple[str, int, int]]) -> Path:
    write_checked(pl.DataFrame([{"source": "longbench", "id": str(i), "prompt": p, "min_words": lo,
                                 "max_words": hi, "attempts": 1} for i, (p, lo, hi) in enumerate(rows)]),
                  LengthTargets, path)
    return path


def test_parse_target_reads_an_ordered_range_only() -> None:
    assert parse_target('{"reason": "a story", "min_words": 300, "max_words": 600}') == (300, 600)
    assert parse_target('Sure: ```json\n{"min_words": "80", "max_words": 80.0}\n```') == (80, 80)
    for bad in ('{"min_words": 600, "max_words": 300}', '{"min_words": 0, "max_words": 3}',
                '{"min_words": true, "max_words": 3}', '{"max_words": 3}', '{"min_words": 1, "max_words": 1e9}',
                "about 500 words"):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_the_prompt_shows_the_request_as_data() -> None:
    system, user = target_messages(UNSTATED)
    assert "min_words" in system["content"] and UNSTATED in user["content"]
    assert user["content"].count("<request-") == 1


def test_range_length_score_is_100_inside_and_s_l_against_the_bound_missed() -> None:
    assert range_length_score(300, 600, 300) == range_length_score(300, 600, 600) == 100.0
    assert range_length_score(300, 600, 900) == length_score(600, 900)
    assert range_length_score(300, 600, 150) == length_score(300, 150)
    assert range_length_score(500, 500, 420) == length_score(500, 420)  # a stated length is [L, L]
    assert range_length_score(10, 20, 0) == 0.0
    for low, high in ((0, 5), (6, 5)):
        with pytest.raises(ValueError):
            range_length_score(low, high, 3)


def test_hiding_a_stated_length_leaves_none_to_read() -> None:
    for prompt in ("Write a 2,000-word essay on tides.", "Describe a rainy afternoon in about 120 words.",
                   "写一篇800字的文章，介绍春节。", "请用一千五百字写一个故事", "Write a 3k words report"):
        hidden = hide_stated_length(prompt)
        assert required_words_in(prompt) is not None and required_words_in(hidden) is None, hidden
    assert hide_stated_length(UNSTATED) == UNSTATED


def test_a_request_without_length_needs_allow_unstated_and_a_target(tmp_path: Path) -> None:
    bench = _jsonl(tmp_path / "b.jsonl", [{"prompt": "Write a 75-word note.", "type": "x", "length": 75},
                                          {"prompt": UNSTATED, "type": "x"}])
    with pytest.raises(InputError, match=r"row 2, column 'length'"):
        read_benchmark(bench)
    read = read_benchmark(bench, allow_unstated=True)
    assert read["required"].to_list() == [75, None] and read["bucket"].to_list() == ["0-500", None]
    filled = with_targets(read, {UNSTATED: (300, 600)})
    assert filled.select("required", "required_min", "targeted", "bucket").rows() == [
        (75, 75, False, "0-500"), (600, 300, True, "500-2k")]
    assert with_targets(read, {})["required"].to_list() == [75, None]


def test_agreement_metrics() -> None:
    m = agreement_metrics([100, 200, 400, 800], [(80, 150), (250, 300), None, (500, 1000)])
    assert (m["asked"], m["predicted"]) == (4, 3)
    assert m["in_range_share"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["S_l_of_stated"] == pytest.approx((100 + length_score(250, 200) + 100) / 3, abs=0.01)
    assert m["midpoint_to_stated_median"] == pytest.approx(1.15, abs=1e-3)  # 115/100, 275/200, 750/800
    assert m["spearman"] == 1.0
    assert agreement_metrics([100], [None])["in_range_share"] is None


def test_dpo_pairs_prefers_a_stated_length_then_the_target_then_the_estimate() -> None:
    instructions = pl.DataFrame([
        {"id": "a", "prompt": "Write 1200 words on X.", "lang": "en", "source": "s", "required_words": 1200,
         "estimated_words": 900},
        {"id": "b", "prompt": UNSTATED, "lang": "en", "source": "s", "required_words": None, "estimated_words": 900},
        {"id": "c", "prompt": "Explain Y.", "lang": "en", "source": "s", "required_words": None,
         "estimated_words": 700},
        {"id": "d", "prompt": "Z?", "lang": "en", "source": "s", "required_words": None, "estimated_words": None},
    ], schema_overrides={"required_words": pl.Int64, "estimated_words": pl.Int64})
    requests, failures = length_requests(instructions, {UNSTATED: (300, 600), "Write 1200 words on X.": (1, 2)})
    assert requests.select("id", "required_min", "required").rows() == [("a", 1200, 1200), ("b", 300, 600),
                                                                        ("c", 700, 700)]
    assert [(f["instruction_id"], f["reason"]) for f in failures] == [("d", "no_required_length")]


def test_grpo_rewards_a_prompt_without_length_against_its_target(tmp_path: Path) -> None:
    selected = tmp_path / "selected.parquet"
    write_checked(pl.DataFrame([{"id": "s0", "prompt": UNSTATED_ZH, "lang": "zh", "source": "t",
                                 "required_words": None, "estimated_words": 2000}],
                               schema_overrides={"required_words": pl.Int64, "estimated_words": pl.Int64}),
                  Instructions, selected)
    plans = tmp_path / "plans.parquet"
    pl.DataFrame({"instruction_id": ["s0"], "section": [1], "main_point": ["p"], "words": [2000],
                  "attempts": [1]}).write_parquet(plans)
    pool = _jsonl(tmp_path / "pool.jsonl", [{"prompt": "Write an 80-word ad.", "type": "x", "length": 80},
                                           {"prompt": UNSTATED, "type": "x"}, {"prompt": "No target.", "type": "x"}])
    cfg = GRPOSettings(pool=str(pool), max_completion_length=384)
    targets = {UNSTATED: (60, 120), UNSTATED_ZH: (50, 100)}
    prompts, failures = rl_prompts(cfg, selected, plans, targets=targets)
    assert prompts.sort("id").select("id", "required_min", "required").rows() == [
        ("pool:0", 80, 80), ("pool:1", 60, 120), ("s0", 50, 100)]
    assert {(f["instruction_id"], f["reason"]) for f in failures} == {("pool:2", "no_required_length")}
    # without targets, the selected instruction falls back to its plan (2,000 words: over the completion cap)
    _, before = rl_prompts(cfg, selected, plans)
    assert {(f["instruction_id"], f["reason"]) for f in before} == {
        ("pool:1", "no_required_length"), ("pool:2", "no_required_length"), ("s0", "over_max_length")}
    def text(n: int) -> str:  # n distinct words: no loop, every word effective
        return " ".join("w" + chr(97 + i // 26) + chr(97 + i % 26) for i in range(n))

    words = [text(n) for n in (90, 130, 40)]
    assert length_reward(words, required=[120, 120, 120], required_min=[60, 60, 60]) == pytest.approx(
        [1.0, length_score(120, 130) / 100, length_score(60, 40) / 100])
    assert length_reward(words[:1], required=[120]) == pytest.approx([length_score(120, 90) / 100])


def _stage_inputs(tmp_path: Path) -> dict[str, Path]:
    selected = tmp_path / "selected.parquet"
    write_checked(pl.DataFrame([
        {"id": "s0", "prompt": UNSTATED, "lang": "en", "source": "t", "required_words": None,
         "estimated_words": 1500},
        {"id": "s1", "prompt": "Write a 1,500-word essay on rivers.", "lang": "en", "source": "t",
         "required_words": 1500, "estimated_words": 1500}],
        schema_overrides={"required_words": pl.Int64, "estimated_words": pl.Int64}), Instructions, selected)
    pool = _jsonl(tmp_path / "pool.jsonl", [{"prompt": UNSTATED_ZH, "type": "x"},
                                           {"prompt": UNSTATED, "type": "x"},  # asked once
                                           {"prompt": "Write an 80-word ad.", "type": "x", "length": 80}])
    bench = _jsonl(tmp_path / "bench.jsonl", [
        {"prompt": "Write a 75-word thank-you note to a neighbour.", "type": "x", "length": 75},
        {"prompt": "写一篇800字的文章，介绍春节。", "type": "x", "length": 800},
        {"prompt": "Write a 3000-word history of the printing press.", "type": "x", "length": 3000},
        {"prompt": "Describe your ideal garden.", "type": "x"}])
    return {"instructions": selected, "pool": pool, "benchmark": bench, "output": tmp_path / "targets.parquet",
            "failures": tmp_path / "failures.parquet", "metrics": tmp_path / "length_target.json"}


def test_off_by_default_writes_an_empty_table_and_starts_nothing(tmp_path: Path) -> None:
    io = _stage_inputs(tmp_path)
    result = run_length_target(LengthTargetConfig(), JUDGE, ClientSettings(cache_dir=str(tmp_path / "cache")), **io)
    assert result == {"enabled": False} and read_targets(io["output"]) == {}
    assert not (tmp_path / "cache").exists()  # no model was started, nothing cached


def test_the_stage_asks_the_embedded_judge_and_measures_agreement(tmp_path: Path) -> None:
    io = _stage_inputs(tmp_path)
    settings = ClientSettings(cache_dir=str(tmp_path / "cache"))
    result = run_length_target(LengthTargetConfig(enabled=True, agreement=2), JUDGE, settings, **io)
    t, a = result["targets"], result["agreement"]
    # the unstated prompts of all three inputs, each once; the stated ones never
    assert t["needed"] == 3 and t["by_source"] == {"grpo_pool": 1, "longbench": 1, "selected": 1}
    targets = read_targets(io["output"])
    assert set(targets) <= {UNSTATED, UNSTATED_ZH, "Describe your ideal garden."} and len(targets) == t["predicted"]
    assert all(1 <= lo <= hi for lo, hi in targets.values())
    failures = read_table(io["failures"])
    assert failures.height == (3 - t["predicted"]) + (2 - a["predicted"])
    assert a["asked"] == 2  # the first two stated requests, asked with "75-word" and "800字" removed
    assert result["judge_llm"]["calls"] >= 5 and result["judge_llm"]["sent_calls"] >= 5
    again = run_length_target(LengthTargetConfig(enabled=True, agreement=2), JUDGE, settings, **io)
    assert again["judge_llm"]["sent_calls"] == 0 and again["targets"] == t and again["agreement"] == a


def test_longbench_scores_an_unstated_request_against_its_target(tmp_path: Path) -> None:
    bench = _jsonl(tmp_path / "bench.jsonl", [
        {"prompt": "Write a 75-word thank-you note to a neighbour.", "type": "x", "length": 75},
        {"prompt": UNSTATED, "type": "x"}, {"prompt": "Describe your ideal garden.", "type": "x"}])
    story = "The keeper climbed the stairs each night and lit the lamp. " * 12  # 132 words
    saved = _jsonl(tmp_path / "saved.jsonl", [{"prompt": UNSTATED, "answer": story},
                                              {"prompt": "Write a 75-word thank-you note to a neighbour.",
                                               "answer": "Thank you so much for watering my plants. " * 10}])
    targets = _targets(tmp_path / "targets.parquet", [(UNSTATED, 100, 200)])
    eval_cfg = EvalConfig(models=(EvalModel("saved", ModelSpec(provider="answers", path=str(saved))),))
    settings = ClientSettings(cache_dir=str(tmp_path / "cache"))
    cfg = LongBenchConfig(input=str(bench), per_lang=None)
    answered = run_longbench_answers(cfg, eval_cfg, settings, tmp_path / "answers.parquet",
                                     tmp_path / "answer_failures.parquet", tmp_path / "answers.json",
                                     targets=targets)
    assert answered["requests"] | {} == {"in_file": 3, "asked": 2, "left_out_by_per_lang": 0, "no_length": 1,
                                         "length_targets": 1}
    no_length = read_table(tmp_path / "answer_failures.parquet")
    assert no_length.select("instruction_id", "reason").rows() == [("saved/2", "no_required_length")]
    result = run_longbench(JUDGE, settings, bench, tmp_path / "answers.parquet", tmp_path / "answer_failures.parquet",
                           tmp_path / "scores.parquet", tmp_path / "failures.parquet", tmp_path / "lb.json",
                           tmp_path / "lb.csv", tmp_path / "lb.png", targets=targets)
    scores = read_table(tmp_path / "scores.parquet").sort("index")
    assert scores["index"].to_list() == [0, 1]  # the request with no length and no target is not scored
    assert scores.row(1, named=True)["required"] == 200 and scores.row(1, named=True)["length_score"] == 100.0
    assert scores.row(0, named=True)["length_score"] == pytest.approx(length_score(75, 80))
    assert result["length_targets"] == 1 and result["saved"]["requests"] == 2


def test_the_summary_reads_the_stage_metrics(tmp_path: Path) -> None:
    from longwriter.report import render_text, summarize

    (tmp_path / "length_target.json").write_text(json.dumps({"enabled": False}))
    assert "length targets  off (length_target.enabled: false)" in render_text(summarize(tmp_path))
    (tmp_path / "length_target.json").write_text(json.dumps({
        "enabled": True, "targets": {"needed": 3, "predicted": 2},
        "agreement": {"asked": 8, "predicted": 7, "in_range_share": 0.4286, "S_l_of_stated": 71.5,
                      "spearman": 0.25}}))
    assert ("length targets  2 of 3 unstated; stated length hidden: in range 0.4286 of 7, S_l 71.5, rho 0.25"
            in render_text(summarize(tmp_path)))


def test_a_bad_targets_table_names_its_row(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pl.DataFrame([{"source": "longbench", "id": "0", "prompt": "a", "min_words": 10, "max_words": 20, "attempts": 1},
                  {"source": "longbench", "id": "1", "prompt": "b", "min_words": 30, "max_words": 20,
                   "attempts": 1}]).write_parquet(path)
    with pytest.raises(InputError, match="min_words is above max_words"):
        read_targets(path)
