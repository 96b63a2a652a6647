"""The ``criteria`` stage (issue 30): each answer scored against its request's own criteria, WritingBench's format.

The answers are saved answers (``provider: answers``) and the judge is the embedded model: real calls, real
parsing, real failure accounting."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from longwriter.errors import InputError
from longwriter.eval.answers import EvalConfig
from longwriter.eval.criteria import CriteriaConfig, read_criteria, run_criteria
from longwriter.files import read_table
from longwriter.generation import EvalModel
from longwriter.judge import JudgeConfig, parse_criterion
from longwriter.llm import ClientSettings, ModelSpec, Sampling

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "data" / "eval" / "criteria.jsonl"


def _outputs(tmp_path: Path) -> dict[str, Path]:
    return {"answers_out": tmp_path / "answers.parquet", "scores_out": tmp_path / "scores.parquet",
            "failures": tmp_path / "failures.parquet", "metrics": tmp_path / "criteria.json"}


def test_the_shipped_file_reads_as_writingbench_requests() -> None:
    requests = read_criteria(SHIPPED)
    assert len(requests) == 3 and all(len(r.criteria) == 3 for r in requests)
    assert [r.lang for r in requests] == ["en", "en", "zh"]
    name, text = requests[0].criteria[0]
    assert name == "First person" and text.startswith("First person: ")


@pytest.mark.parametrize(("line", "match"), [
    ({"index": 0, "domain1": "x", "query": "q", "checklist": [{"name": "a"}]}, "row 1, column 'checklist'"),
    ({"index": 0, "domain1": "x", "checklist": []}, "row 1, column 'query'"),
    ({"index": "0", "domain1": "x", "query": "q", "checklist": []}, "row 1, column 'index'"),
    ({"index": 0, "domain1": "x", "query": "q",
      "checklist": [{"name": "a", "criteria_description": "d"}, {"name": "a", "criteria_description": "e"}]},
     "distinct"),
])
def test_a_bad_criteria_file_names_the_row_and_field(tmp_path: Path, line: dict, match: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(InputError, match=match):
        read_criteria(path)


def test_score_band_descriptions_are_shown_to_the_judge(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"index": 3, "domain1": "d", "query": "q", "checklist": [
        {"name": "n", "criteria_description": "desc", "1-2": "bad", "9-10": "great"}]}) + "\n")
    (request,) = read_criteria(path)
    assert request.criteria == (("n", "n: desc\n- 1-2: bad\n- 9-10: great"),) and request.lang == "en"


def test_parse_criterion_takes_1_to_10_only() -> None:
    assert parse_criterion('{"reason": "fine", "score": 7}') == (7, "fine")
    assert parse_criterion('{"score": "10"}') == (10, "")
    for bad in ('{"score": 0}', '{"score": 11}', '{"reason": "x"}', '{"score": true}', "no json"):
        with pytest.raises(ValueError):
            parse_criterion(bad)


def test_off_by_default_writes_empty_outputs(tmp_path: Path) -> None:
    out = _outputs(tmp_path)
    result = run_criteria(CriteriaConfig(), EvalConfig(), JudgeConfig(), ClientSettings(cache_dir=str(tmp_path)),
                          **out)
    assert result == {"enabled": False} and json.loads(out["metrics"].read_text()) == {"enabled": False}
    assert read_table(out["scores_out"]).height == 0 and read_table(out["answers_out"]).height == 0


def test_saved_answers_scored_by_the_embedded_judge(tmp_path: Path) -> None:
    requests = read_criteria(SHIPPED)
    saved = tmp_path / "saved.jsonl"  # requests 0 and 2 answered, request 1 not
    saved.write_text("".join(json.dumps({"prompt": requests[i].query, "answer": answer}, ensure_ascii=False) + "\n"
                             for i, answer in ((0, "I keep the light. One night I found a bottle with a note: it "
                                                   "was my own handwriting, from a year I do not remember."),
                                               (2, "光合作用是植物利用光能，把二氧化碳和水变成葡萄糖和氧气的过程。"))),
                     encoding="utf-8")
    eval_cfg = EvalConfig(models=(EvalModel("saved", ModelSpec(provider="answers", path=str(saved))),))
    judge = JudgeConfig(sampling=Sampling(temperature=0.0, top_p=1.0, max_tokens=160), max_attempts=2)
    out = _outputs(tmp_path)
    result = run_criteria(CriteriaConfig(enabled=True), eval_cfg, judge,
                          ClientSettings(cache_dir=str(tmp_path / "cache")), **out)
    m = result["saved"]
    assert (m["requests"], m["answers"], m["criteria"]) == (3, 2, 9)
    assert m["judged"] + m["judge_failed"] == 6  # the two answers' three criteria each
    scores = read_table(out["scores_out"])
    assert scores.height == m["judged"] and scores["score"].is_between(1, 10).all()
    failures = read_table(out["failures"])
    assert failures.filter(pl.col("reason") == "unanswered")["instruction_id"].to_list() == ["saved/1"]
    assert failures.filter(pl.col("reason") != "unanswered").height == m["judge_failed"]
    if m["judged"]:
        assert m["mean_score"] == pytest.approx(scores["score"].mean(), abs=1e-3)
        assert set(m["by_domain"]) <= {"Literature and Creative Writing", "Academic and Engineering"}
        assert set(m["by_criterion"]) <= {name for r in requests for name, _ in r.criteria}
    assert result["judge_llm"]["calls"] >= 6
