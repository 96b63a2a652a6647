"""Plan parsing (JSON and the paper's line format), validation, repair and budget rescaling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longwriter.agentwrite.plan import (
    Paragraph,
    PlanConfig,
    Repairs,
    UnusablePlan,
    format_plan,
    paragraph_bounds,
    parse_plan_json,
    parse_plan_lines,
    plan_schema,
    repair,
    rescale,
)

CFG = PlanConfig(min_paragraphs=3, max_paragraphs=8, min_words=100, max_words=1000)


def test_line_format_exact():
    text = ("Paragraph 1 - Main Point: Introduce the city and why it matters - Word Count: 400 words\n"
            "Paragraph 2 - Main Point: Its history from the founding to today - Word Count: 800 words\n")
    assert parse_plan_lines(text) == [Paragraph("Introduce the city and why it matters", 400),
                                      Paragraph("Its history from the founding to today", 800)]


def test_line_format_drift():
    text = """Sure! Here is the plan:

**Paragraph 1** - **Main Point:** Introduce cats - **Word Count:** about 1,200 words
* Paragraph 2 – Main point: Cats in Egypt; worship and art – word count: 300
3. Main Point: The modern house cat
   Word Count: 250 words
第4段 - 主要内容：总结全文 - 字数：200字
Paragraph 5 - Main Point: A closing thought with no count
I hope this helps!"""
    assert parse_plan_lines(text) == [
        Paragraph("Introduce cats", 1200),
        Paragraph("Cats in Egypt; worship and art", 300),
        Paragraph("The modern house cat", 250),
        Paragraph("总结全文", 200),
        Paragraph("A closing thought with no count", None),
    ]


@pytest.mark.parametrize("text", ["", "I cannot help with that.", "Paragraph 1\nParagraph 2", "{}"])
def test_line_format_unusable(text):
    with pytest.raises(UnusablePlan):
        parse_plan_lines(text)


def test_json_forms():
    assert parse_plan_json('{"paragraphs": [{"main_point": "Intro", "word_count": 300}]}') == [
        Paragraph("Intro", 300)]
    fenced = 'Here:\n```json\n{"paragraphs": [{"main_point": "A b", "word_count": "250 words"}]}\n```'
    assert parse_plan_json(fenced) == [Paragraph("A b", 250)]
    assert parse_plan_json('[{"main_point": "Bare list", "word_count": 120.0}]') == [Paragraph("Bare list", 120)]
    assert parse_plan_json('{"paragraphs": [{"main_point": "x", "word_count": true}, 7]}') == [Paragraph("x", None)]


@pytest.mark.parametrize("text", ["", "not json", '{"paragraphs": "none"}', '{"paragraphs": [', '{"other": []}'])
def test_json_unusable(text):
    with pytest.raises(UnusablePlan):
        parse_plan_json(text)


def test_schema_bounds():
    schema = plan_schema(3, 6)
    items = schema["properties"]["paragraphs"]
    assert items["minItems"] == 3 and items["maxItems"] == 6
    assert schema["required"] == ["paragraphs"] and schema["additionalProperties"] is False


def test_paragraph_bounds():
    assert paragraph_bounds(None, CFG) == (3, 8)
    assert paragraph_bounds(2000, CFG) == (3, 8)
    assert paragraph_bounds(300, CFG) == (3, 3)       # 3 x 100 words at most
    assert paragraph_bounds(150, CFG) == (1, 1)       # too short for three paragraphs of 100
    assert paragraph_bounds(5000, CFG) == (5, 8)      # at least 5 x 1000
    assert paragraph_bounds(20000, CFG) == (8, 8)     # capped: paragraphs must grow past max_words


def test_repair_drops_duplicates_and_fixes_budgets():
    repairs = Repairs()
    dropped: list[str] = []
    plan = repair([Paragraph("Intro to cats", 75), Paragraph("intro to  cats!", 300), Paragraph("History", None),
                   Paragraph("Modern cats", 2000), Paragraph("", 100)], None, CFG, repairs, dropped)
    assert [p for p, _ in plan] == ["Intro to cats", "History", "Modern cats"]
    assert len(dropped) == 2 and "repeats an earlier one" in dropped[0] and "empty point" in dropped[1]
    assert [w for _, w in plan] == [100, 1000, 1000]  # 75 -> 100, missing -> mean of known, 2000 -> 1000
    assert repairs.duplicates_dropped == 1 and repairs.empty_dropped == 1 and repairs.budgets_filled == 1
    assert repairs.rescaled == 0


def test_repair_rescales_to_required_length():
    repairs = Repairs()
    plan = repair([Paragraph("A point", 300), Paragraph("B point", 300), Paragraph("C point", 75)], 2000, CFG,
                  repairs)
    assert sum(w for _, w in plan) == 2000
    assert all(100 <= w <= 1000 for _, w in plan)
    assert repairs.rescaled == 1 and repairs.budgets_clamped == 1


def test_repair_rejects_too_few_or_too_many():
    with pytest.raises(UnusablePlan, match="need at least 3"):
        repair([Paragraph("one", 300), Paragraph("ONE", 300), Paragraph("two", 300)], None, CFG, Repairs())
    with pytest.raises(UnusablePlan, match="at most 3"):
        repair([Paragraph(f"point {i}", 100) for i in range(5)], 300, CFG, Repairs())


@given(st.lists(st.integers(1, 5000), min_size=1, max_size=40), st.integers(1, 100000),
       st.integers(1, 500), st.integers(0, 3000))
def test_rescale_sums_exactly(words, total, lo, extra):
    hi = lo + extra
    out = rescale(words, total, lo, hi)
    assert sum(out) == total
    assert len(out) == len(words)
    n = len(words)
    assert all(min(lo, total // n) <= w <= max(hi, -(-total // n)) for w in out)


def test_format_plan_round_trips_through_parser():
    plan = [("Open with a scene", 300), ("Explain the stakes", 500)]
    assert parse_plan_lines(format_plan(plan)) == [Paragraph(p, w) for p, w in plan]
