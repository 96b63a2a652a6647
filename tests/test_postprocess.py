"""Label stripping, repetition measure, and the keep/drop rules of postprocess."""

from __future__ import annotations

import random

import polars as pl
import pytest

from longwriter.agentwrite.postprocess import PostprocessConfig, build_samples, strip_label
from longwriter.repetition import repetition
from longwriter.schemas import LongSamples, validate


@pytest.mark.parametrize("text,expected", [
    ("Paragraph 1: Once upon a time there was a cat.", "Once upon a time there was a cat."),
    ("## Paragraph 2\n\nThe history of cats.", "The history of cats."),
    ("**Paragraph 3 - The Modern Cat**\nCats today...", "The Modern Cat\nCats today..."),
    ("Paragraph 4 - Main Point: History - Word Count: 300 words\nCats were...", "Cats were..."),
    ("Section 5 The end came quickly.", "The end came quickly."),
    ("第1段：猫的历史很长。", "猫的历史很长。"),
    ("### 第二部分\n猫很可爱。", "猫很可爱。"),
    ("Word Count: 300 words\nThe text.", "The text."),
])
def test_labels_are_stripped(text, expected):
    assert strip_label(text) == (expected, True)


@pytest.mark.parametrize("text", [
    "Paragraphs of text are nice.", "Part of the story is here.", "Step 1. Open the door.",
    "第一章 开始", "The paragraph 1 of the law says.", "Sections of the wall fell.",
])
def test_content_is_not_stripped(text):
    assert strip_label(text) == (text, False)


def test_repetition():
    assert repetition("the cat sat on the mat " * 20) > 0.9
    assert repetition("The quick brown fox jumps over the lazy dog and runs far away from here") == 0.0
    assert repetition("短文") == 0.0
    assert repetition("我们今天去公园玩" * 10) > 0.8


def frames(texts: dict[str, list[str]], budgets: dict[str, list[int]], finish: dict[str, str] | None = None):
    ids = sorted(texts)
    instructions = pl.DataFrame({"id": ids, "prompt": [f"Write about {i}" for i in ids], "lang": ["en"] * len(ids),
                                 "source": ["t"] * len(ids), "required_words": [None] * len(ids),
                                 "estimated_words": [None] * len(ids)},
                                schema_overrides={"required_words": pl.Int64, "estimated_words": pl.Int64})
    plans = pl.DataFrame([{"instruction_id": i, "section": n, "main_point": f"p{n}", "words": w, "attempts": 1}
                          for i in ids for n, w in enumerate(budgets[i], start=1)])
    sections = pl.DataFrame([{"instruction_id": i, "section": n, "text": t,
                              "finish_reason": (finish or {}).get(i, "stop")} for i in ids
                             for n, t in enumerate(texts[i], start=1)])
    return instructions, plans, sections


def prose(seed: int, n: int = 120) -> str:
    """Varied text: random words from a vocabulary large enough that 4-grams rarely repeat."""
    rng = random.Random(seed)
    vocab = [a + b for a in ("ka", "lo", "mi", "ne", "su", "ta", "ro", "vi") for b in
             ("ber", "dan", "fo", "gil", "hun", "jat", "kem", "lor", "mus", "nop")]
    return " ".join(rng.choice(vocab) for _ in range(n)) + "."


def test_build_samples_keeps_and_drops_with_reasons():
    good = [prose(0), prose(1)]
    texts = {
        "good": ["Paragraph 1: " + good[0], good[1]],
        "short": ["Too short.", "Also short."],
        "loop": ["la la la la la la " * 40, "la la la la la la " * 40],
        "partial": [good[0]],
        "many": [good[0]] * 3,
    }
    budgets = {"good": [100, 100], "short": [100, 100], "loop": [100, 100], "partial": [100, 100],
               "many": [50, 50, 50]}
    samples, dropped, extra = build_samples(*frames(texts, budgets), PostprocessConfig(max_sections=2, min_words=None))
    validate(samples, LongSamples, "out")
    assert samples["id"].to_list() == ["good"]
    msgs = samples["messages"][0].to_list()
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert not msgs[1]["content"].startswith("Paragraph")
    assert samples["sections"][0] == 2 and samples["planned_words"][0] == 200
    reasons = {d["instruction_id"]: d["reason"] for d in dropped}
    assert reasons == {"short": "too_short", "loop": "repetitive", "partial": "incomplete", "many": "collapsed"}
    assert extra["labels_stripped"] == 1


def test_incomplete_paragraphs_drop_their_sample_with_the_reason():
    good = [prose(0), prose(1)]
    texts = {
        "good": good,
        "cut": [good[0], prose(2)[:-1] + " and then the"],
        "refused": ["I'm sorry, but I can't help with that request.", good[1]],
        "zh_refused": [good[0], "抱歉，我无法完成这个请求。"],
        "emptied": [good[0], "Paragraph 2:"],
    }
    budgets = {k: [100, 100] for k in texts}
    finish = {"cut": "length"}
    samples, dropped, _ = build_samples(*frames(texts, budgets, finish), PostprocessConfig(min_words=None))
    assert samples["id"].to_list() == ["good"]
    reasons = {d["instruction_id"]: (d["reason"], d["section"]) for d in dropped}
    assert reasons == {"cut": ("cut_off", 2), "refused": ("refusal", 1), "zh_refused": ("refusal", 2),
                       "emptied": ("empty", 2)}


def test_a_length_finish_that_ends_a_sentence_is_complete():
    samples, dropped, _ = build_samples(*frames({"a": [prose(0), prose(1)]}, {"a": [100, 100]}, {"a": "length"}),
                                        PostprocessConfig(min_words=None))
    assert samples.height == 1 and not dropped


def test_only_lines_at_a_sections_start_are_removed_and_they_are_counted():
    body = prose(3)
    middle = "The report lists a word count: 300 per chapter, as the editors asked."
    text = f"Sure, here is paragraph 2:\n\nWord count: 120\n{body}\n{middle}\n{prose(4)}"
    samples, dropped, extra = build_samples(*frames({"a": [prose(0), text]}, {"a": [100, 100]}),
                                            PostprocessConfig(min_words=None))
    assert not dropped
    answer = samples["messages"][0].to_list()[1]["content"]
    assert middle in answer and "Sure, here is" not in answer and "Word count: 120" not in answer
    assert samples["lines_removed"][0] == 2 and extra["lines_removed"] == 2


def test_a_sample_under_min_words_is_dropped_as_too_short():
    texts = {"a": ["Word " * 40 + "end.", "Word " * 40 + "end."]}
    samples, dropped, _ = build_samples(*frames(texts, {"a": [40, 40]}), PostprocessConfig(min_words=100))
    assert samples.height == 0
    assert [(d["reason"], d["error"]) for d in dropped] == [("too_short", "82 words < min_words 100")]
