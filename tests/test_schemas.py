"""Table schemas: valid frames pass, bad ones raise InputError naming file, row and column."""

from __future__ import annotations

import polars as pl
import pytest

from longwriter.errors import InputError
from longwriter.failures import Failures, failures_frame
from longwriter.schemas import (
    MESSAGES,
    Instructions,
    LongSamples,
    Plans,
    Pool,
    Sections,
    empty,
    validate,
)

PATH = "x.parquet"


def pool_frame(**overrides) -> pl.DataFrame:
    data = {"prompt": ["Write a long essay about tides."], "id": ["p1"], "source": ["test"],
            "required_words": [2000]}
    data.update(overrides)
    return pl.DataFrame(data)


def instructions_frame(**overrides) -> pl.DataFrame:
    data = {"id": ["i1"], "prompt": ["Write 2000 words on rivers."], "lang": ["en"], "source": ["pool"],
            "required_words": [2000], "estimated_words": [1800]}
    data.update(overrides)
    return pl.DataFrame(data, schema_overrides={"required_words": pl.Int64, "estimated_words": pl.Int64})


def plans_frame(**overrides) -> pl.DataFrame:
    data = {"instruction_id": ["i1", "i1"], "section": [1, 2], "main_point": ["intro", "body"],
            "words": [300, 500], "attempts": [1, 1]}
    data.update(overrides)
    return pl.DataFrame(data)


def sections_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "instruction_id": ["i1"], "section": [1], "text": ["Once upon a time."], "words": [4], "budget": [300],
        "prompt_tokens": [120], "completion_tokens": [8], "latency_s": [0.5], "finish_reason": ["stop"],
        "continuations": [0], "attempts": [1], "model": ["smollm2"],
    })


def long_samples_frame(messages=None) -> pl.DataFrame:
    if messages is None:
        messages = [[{"role": "user", "content": "Write."}, {"role": "assistant", "content": "Text."}]]
    return pl.DataFrame({
        "id": ["i1"], "lang": ["zh"], "source": ["pool"], "messages": messages, "words": [1200],
        "planned_words": [1500], "sections": [3], "lines_removed": [0],
    })


def failures_rows() -> list[dict]:
    return [
        {"stage": "plan", "instruction_id": "i1", "section": None, "attempts": 3, "reason": "unusable_output",
         "error": "bad JSON"},
        {"stage": "write", "instruction_id": "i2", "section": 4, "attempts": 0, "reason": "cut_off",
         "error": "section 4 cut_off after 2 attempts"},
    ]


def raises(df: pl.DataFrame, model) -> InputError:
    with pytest.raises(InputError) as info:
        validate(df, model, PATH)
    err = info.value
    assert err.path == PATH
    assert str(err).startswith(PATH + ":")
    return err


# --- valid tables ---------------------------------------------------------------------------------------

VALID = [
    (Pool, lambda: pl.DataFrame({"prompt": ["Write a story."]})),  # only the required column
    (Pool, pool_frame),
    (Instructions, instructions_frame),
    (Plans, plans_frame),
    (Sections, sections_frame),
    (LongSamples, long_samples_frame),
    (Failures, lambda: failures_frame(failures_rows())),
]


@pytest.mark.parametrize(("model", "make"), VALID, ids=lambda v: getattr(v, "__name__", ""))
def test_valid_minimal_frame_passes(model, make) -> None:
    df = make()
    out = validate(df, model, PATH)
    assert out.height == df.height
    assert out.columns == df.columns


def test_validate_drops_row_column() -> None:
    df = pool_frame().with_columns(pl.Series("_row", [7]))
    out = validate(df, Pool, PATH)
    assert "_row" not in out.columns
    assert out["prompt"].to_list() == ["Write a long essay about tides."]


def test_pool_ignores_extra_columns() -> None:
    df = pool_frame(extra=["whatever"])
    assert validate(df, Pool, PATH).columns == ["prompt", "id", "source", "required_words", "extra"]


@pytest.mark.parametrize("model", [Pool, Instructions, Plans, Sections, LongSamples, Failures],
                         ids=lambda m: m.__name__)
def test_empty_frame_has_model_columns_and_passes(model) -> None:
    df = empty(model)
    assert df.height == 0
    assert df.columns == list(model.to_schema().columns)
    assert validate(df, model, PATH).height == 0


def test_empty_long_samples_has_nested_messages_dtype() -> None:
    assert empty(LongSamples).schema["messages"] == MESSAGES


def test_failures_frame_empty() -> None:
    df = failures_frame([])
    assert df.height == 0
    assert df.schema == pl.Schema({"stage": pl.String, "instruction_id": pl.String, "section": pl.Int64,
                                   "attempts": pl.Int64, "reason": pl.String, "error": pl.String})
    assert validate(df, Failures, PATH).height == 0


def test_failures_frame_rows() -> None:
    df = failures_frame(failures_rows())
    out = validate(df, Failures, PATH)
    assert out["section"].to_list() == [None, 4]
    assert out["stage"].to_list() == ["plan", "write"]
    assert out.schema["section"] == pl.Int64


# --- Pool errors ----------------------------------------------------------------------------------------

def test_pool_missing_prompt_column() -> None:
    err = raises(pl.DataFrame({"text": ["hello"]}), Pool)
    assert "missing column 'prompt'" in str(err)
    assert "Pool" in str(err)
    assert err.row is None


def test_pool_prompt_wrong_dtype() -> None:
    err = raises(pl.DataFrame({"prompt": [1, 2]}), Pool)
    assert "column 'prompt'" in str(err)
    assert "wrong type" in str(err)
    assert "Int64" in str(err)
    assert err.column == "prompt"


@pytest.mark.parametrize("blank", ["", "   ", "\t\n"], ids=["empty", "spaces", "tab-newline"])
def test_pool_blank_prompt_names_file_row(blank: str) -> None:
    df = pl.DataFrame({"prompt": ["fine prompt", blank], "_row": [1, 5]})
    err = raises(df, Pool)
    assert err.row == 5
    assert err.column == "prompt"
    assert "row 5" in str(err)
    assert "column 'prompt'" in str(err)
    assert "empty or whitespace" in str(err)


def test_pool_blank_prompt_without_row_column_uses_1_based_index() -> None:
    err = raises(pl.DataFrame({"prompt": ["ok", "ok too", " "]}), Pool)
    assert err.row == 3


def test_pool_null_prompt() -> None:
    df = pl.DataFrame({"prompt": ["fine prompt", None], "_row": [1, 5]})
    err = raises(df, Pool)
    assert "missing value" in str(err)
    assert err.row == 5
    assert err.column == "prompt"


def test_pool_duplicate_ids_name_both_rows() -> None:
    df = pool_frame(prompt=["a", "b", "c"], id=["x", "y", "x"], source=["s"] * 3,
                    required_words=[None] * 3).with_columns(pl.Series("_row", [2, 4, 7]))
    err = raises(df, Pool)
    assert "duplicate" in str(err)
    assert "'x'" in str(err)
    assert "rows 2, 7" in str(err)
    assert err.column == "id"
    assert err.row == 7


def test_pool_null_id_rejected() -> None:
    err = raises(pl.DataFrame({"prompt": ["a", "b"], "id": ["x", None]}), Pool)
    assert "missing value" in str(err)
    assert (err.row, err.column) == (2, "id")


def test_pool_required_words_must_be_positive() -> None:
    err = raises(pl.DataFrame({"prompt": ["a"], "required_words": [0]}), Pool)
    assert (err.row, err.column) == (1, "required_words")
    assert "greater_than(0)" in str(err)


# --- Instructions errors --------------------------------------------------------------------------------

def test_instructions_lang_must_be_zh_or_en() -> None:
    err = raises(instructions_frame(lang=["fr"]).with_columns(pl.Series("_row", [3])), Instructions)
    assert err.column == "lang"
    assert err.row == 3
    assert "'fr'" in str(err)
    assert "isin" in str(err)


def test_instructions_rejects_unexpected_column() -> None:
    err = raises(instructions_frame(extra=["x"]), Instructions)
    assert "unexpected column 'extra'" in str(err)


def test_instructions_empty_id_rejected() -> None:
    err = raises(instructions_frame(id=[""]), Instructions)
    assert (err.row, err.column) == (1, "id")


def test_instructions_whitespace_prompt_rejected() -> None:
    err = raises(instructions_frame(prompt=["  "]), Instructions)
    assert (err.row, err.column) == (1, "prompt")
    assert "empty or whitespace" in str(err)


# --- Plans errors ---------------------------------------------------------------------------------------

def test_plans_section_zero_rejected() -> None:
    df = plans_frame(section=[0, 1]).with_columns(pl.Series("_row", [10, 11]))
    err = raises(df, Plans)
    assert err.column == "section"
    assert err.row == 10
    assert "greater_than_or_equal_to(1)" in str(err)


def test_plans_duplicate_instruction_section_rejected() -> None:
    df = plans_frame(instruction_id=["i1", "i1", "i2"], section=[1, 1, 1], main_point=["a", "b", "c"],
                     words=[100] * 3, attempts=[1] * 3).with_columns(pl.Series("_row", [10, 20, 30]))
    err = raises(df, Plans)
    assert "duplicate" in str(err)
    assert err.row in (10, 20)


def test_plans_duplicate_key_error_names_both_rows() -> None:
    df = plans_frame(instruction_id=["i1", "i1", "i2"], section=[1, 1, 1], main_point=["a", "b", "c"],
                     words=[100] * 3, attempts=[1] * 3).with_columns(pl.Series("_row", [10, 20, 30]))
    err = raises(df, Plans)
    assert "rows 10, 20" in err.message
    assert err.row == 20


def test_plans_duplicate_key_error_column_is_not_the_table_name() -> None:
    df = plans_frame(section=[1, 1])
    err = raises(df, Plans)
    assert err.column != "Plans"
    assert "column 'Plans'" not in str(err)


def test_sections_duplicate_instruction_section_rejected() -> None:
    df = pl.concat([sections_frame(), sections_frame()])
    err = raises(df, Sections)
    assert "duplicate" in str(err)


def test_sections_negative_latency_rejected() -> None:
    df = sections_frame().with_columns(pl.lit(-1.0).alias("latency_s"))
    err = raises(df, Sections)
    assert (err.row, err.column) == (1, "latency_s")


# --- LongSamples errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("messages", "got"),
    [
        ([["just a string"]], "List(String)"),
        ([[{"role": "user", "content": 1}]], "content': Int64"),
        (["flat string"], "String"),
    ],
    ids=["list-of-str", "int-content", "str"],
)
def test_long_samples_messages_wrong_nested_type(messages, got: str) -> None:
    err = raises(long_samples_frame(messages), LongSamples)
    assert err.column == "messages"
    assert err.row == 1
    assert "wrong type" in str(err)
    assert got in str(err)


def test_long_samples_words_must_be_positive() -> None:
    df = long_samples_frame().with_columns(pl.lit(0).alias("words"))
    err = raises(df, LongSamples)
    assert err.column == "words"


# --- Failures errors ------------------------------------------------------------------------------------

def test_failures_negative_attempts_rejected() -> None:
    rows = failures_rows()
    rows[1]["attempts"] = -1
    err = raises(failures_frame(rows), Failures)
    assert (err.row, err.column) == (2, "attempts")


def test_failures_reason_outside_the_vocabulary_rejected() -> None:
    rows = failures_rows()
    rows[0]["reason"] = "something went wrong"
    err = raises(failures_frame(rows), Failures)
    assert (err.row, err.column) == (1, "reason")


def test_failures_missing_column() -> None:
    err = raises(failures_frame(failures_rows()).drop("error"), Failures)
    assert "missing column 'error'" in str(err)
