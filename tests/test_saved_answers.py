"""``provider: answers``: a saved answers file is a model every evaluation stage scores (issue 30)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from longwriter.errors import InputError
from longwriter.eval.answers import EvalConfig
from longwriter.eval.ruler import RulerConfig, run_ruler
from longwriter.files import read_table
from longwriter.generation import EvalModel, generate_answers
from longwriter.llm import ClientSettings, ModelSpec, Sampling, open_endpoint
from longwriter.llm.saved_answers import load_saved_answers
from longwriter.wordcount import count_words

PROMPTS = ["Write 100 words about rivers.", "Write 300 words about mountains.", "写一篇300字的关于春天的短文。"]
ANSWERS = ["River " * 90, "Mountains rise. " * 140, "春天来了。" * 70]


def _bench() -> pl.DataFrame:
    return pl.DataFrame({"index": [0, 1, 2], "prompt": PROMPTS, "type": ["x", "x", "y"], "required": [100, 300, 300],
                         "lang": ["en", "en", "zh"], "bucket": ["[0, 500)"] * 3})


def _saved(tmp_path: Path, rows: list[dict[str, str]], name: str = "saved.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_saved_answers_are_scored_and_an_unknown_prompt_is_unanswered(tmp_path: Path) -> None:
    # the first two prompts answered (the second twice: two samples), the third not
    saved = _saved(tmp_path, [{"prompt": PROMPTS[0], "answer": ANSWERS[0]},
                              {"prompt": f"  {PROMPTS[1]}\n", "answer": ANSWERS[1]},
                              {"prompt": PROMPTS[1], "answer": ANSWERS[1] + "More."}])
    model = EvalModel("paper", ModelSpec(provider="answers", path=str(saved)))
    answers, failures, stats = generate_answers(_bench(), (model,), Sampling(max_tokens=64),
                                                ClientSettings(cache_dir=str(tmp_path / "cache")), "ruler", samples=2)
    got = {(r["index"], r["sample"]): r for r in answers.iter_rows(named=True)}
    assert sorted(got) == [(0, 0), (1, 0), (1, 1)]
    assert got[(0, 0)]["text"] == ANSWERS[0]
    assert got[(1, 0)]["text"] == ANSWERS[1] and got[(1, 1)]["text"] == ANSWERS[1] + "More."
    assert got[(1, 0)]["words"] == count_words(ANSWERS[1]) and got[(1, 0)]["finish_reason"] == "stop"
    # prompt 0 has one answer, so its sample 1 is unanswered; prompt 2 has none: a failures row each
    assert sorted((f["instruction_id"], f["section"]) for f in failures) == [("paper/0", 1), ("paper/2", 0),
                                                                             ("paper/2", 1)]
    assert all(f["error"].startswith(f"unanswered: {saved}") for f in failures)
    assert stats["paper"].sent_calls == 0 and stats["paper"].failed_calls == 3 and stats["paper"].cost_usd == 0


def test_the_ruler_stage_scores_a_saved_answers_file(tmp_path: Path) -> None:
    bench = tmp_path / "ruler.jsonl"
    bench.write_text("".join(json.dumps({"prompt": p, "type": "x", "length": n}, ensure_ascii=False) + "\n"
                             for p, n in zip(PROMPTS[:2], (100, 300), strict=True)), encoding="utf-8")
    saved = _saved(tmp_path, [{"prompt": p, "answer": a} for p, a in zip(PROMPTS, ANSWERS, strict=True)])
    eval_cfg = EvalConfig(models=(EvalModel("paper", ModelSpec(provider="answers", path=str(saved))),),
                          sampling=Sampling(temperature=0.5, max_tokens=1024))
    out = tmp_path / "out"
    metrics = run_ruler(RulerConfig(input=str(bench), lengths=(100, 300), per_length=1), eval_cfg,
                        ClientSettings(cache_dir=str(tmp_path / "cache")), out / "answers.parquet",
                        out / "failures.jsonl", out / "ruler.json", out / "ruler.csv", out / "ruler.png")
    answers = read_table(out / "answers.parquet")
    assert sorted(answers["words"].to_list()) == sorted([count_words(ANSWERS[0]), count_words(ANSWERS[1])])
    assert metrics["paper"]["answers"] == 2 and metrics["paper"]["failed"] == 0
    assert metrics["paper"]["llm"]["sent_calls"] == 0


def test_the_identity_is_the_files_content(tmp_path: Path) -> None:
    one = _saved(tmp_path, [{"prompt": "a", "answer": "b"}], "one.jsonl")
    same = _saved(tmp_path, [{"prompt": "a", "answer": "b"}], "same.jsonl")
    other = _saved(tmp_path, [{"prompt": "a", "answer": "c"}], "other.jsonl")

    def identity(path: Path) -> str:
        with open_endpoint(ModelSpec(provider="answers", path=str(path)), ClientSettings(cache_dir=str(tmp_path))) \
                as endpoint:
            assert endpoint.structured_output == "none"
            return endpoint.identity

    assert identity(one) == identity(same) != identity(other)


@pytest.mark.parametrize(("rows", "match"), [
    ([{"prompt": "a", "text": "b"}], "column 'answer'"),
    ([{"prompt": "a", "answer": "b"}, {"prompt": "c", "answer": None}], "row 2, column 'answer'"),
    ([{"prompt": "a", "answer": 3}], "column 'answer'.*strings"),
])
def test_a_bad_answers_file_names_the_row_and_column(tmp_path: Path, rows: list[dict], match: str) -> None:
    path = _saved(tmp_path, rows)
    with pytest.raises(InputError, match=match):
        load_saved_answers(str(path))


def test_the_spec_needs_a_path() -> None:
    with pytest.raises(ValueError, match="answers"):
        ModelSpec(provider="answers")
    assert load_saved_answers.__doc__
