"""One pandera model per table the stages exchange, and the check that names file, row and column.

Stages call ``validate`` on every table they read and on every table before they write it, so bad data is
stopped at the boundary where it appears rather than three stages later.
"""

from __future__ import annotations

from pathlib import Path

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaError, SchemaErrors

from longwriter.errors import InputError
from longwriter.files import write_table

LANGS = ["zh", "en"]
EVAL_LANGS = ["zh", "en", "other"]  # a benchmark may hold requests in neither language
MESSAGES = pl.List(pl.Struct({"role": pl.Utf8, "content": pl.Utf8}))


def _not_blank(data: pa.PolarsData) -> pl.LazyFrame:
    return data.lazyframe.select(pl.col(data.key).str.strip_chars().str.len_chars() > 0)


class Pool(pa.DataFrameModel):
    """A raw instruction pool (JSONL or Parquet) as users provide it; extra columns are ignored."""

    prompt: str = pa.Field(nullable=False)
    id: str | None = pa.Field(nullable=False, unique=True)
    source: str | None = pa.Field(nullable=True)
    required_words: int | None = pa.Field(nullable=True, gt=0)

    @pa.check("prompt", name="not_blank", error="prompt is empty or whitespace")
    def prompt_not_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _not_blank(data)

    class Config:
        strict = False


class Instructions(pa.DataFrameModel):
    """Instructions chosen by ``select``: the input of AgentWrite."""

    id: str = pa.Field(unique=True, str_length={"min_value": 1})
    prompt: str
    lang: str = pa.Field(isin=LANGS)
    source: str
    required_words: int = pa.Field(nullable=True, gt=0)
    estimated_words: int = pa.Field(nullable=True, ge=0)

    @pa.check("prompt", name="not_blank", error="prompt is empty or whitespace")
    def prompt_not_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _not_blank(data)

    class Config:
        strict = True
        ordered = False


class Plans(pa.DataFrameModel):
    """AgentWrite step I: one row per planned paragraph."""

    instruction_id: str = pa.Field(str_length={"min_value": 1})
    section: int = pa.Field(ge=1)
    main_point: str = pa.Field(str_length={"min_value": 1})
    words: int = pa.Field(ge=1)
    attempts: int = pa.Field(ge=1)

    class Config:
        strict = True
        unique = ["instruction_id", "section"]


class Sections(pa.DataFrameModel):
    """AgentWrite step II: one row per written paragraph."""

    instruction_id: str = pa.Field(str_length={"min_value": 1})
    section: int = pa.Field(ge=1)
    text: str
    words: int = pa.Field(ge=0)
    budget: int = pa.Field(ge=1)
    prompt_tokens: int = pa.Field(ge=0)
    completion_tokens: int = pa.Field(ge=0)
    latency_s: float = pa.Field(ge=0)
    finish_reason: str
    continuations: int = pa.Field(ge=0)
    attempts: int = pa.Field(ge=1)  # writes of the paragraph until it was complete text
    model: str

    class Config:
        strict = True
        unique = ["instruction_id", "section"]


class LongSamples(pa.DataFrameModel):
    """Postprocessed AgentWrite answers in chat format: the long-output SFT data."""

    id: str = pa.Field(unique=True, str_length={"min_value": 1})
    lang: str = pa.Field(isin=LANGS)
    source: str
    messages: MESSAGES  # type: ignore[valid-type]
    words: int = pa.Field(ge=1)
    planned_words: int = pa.Field(ge=1)
    sections: int = pa.Field(ge=1)
    lines_removed: int = pa.Field(ge=0)  # label, echo and preamble lines removed at its sections' starts

    class Config:
        strict = True


class Benchmark(pa.DataFrameModel):
    """A LongBench-Write / LongWrite-Ruler file as published: one request per line; extra fields ignored."""

    prompt: str = pa.Field(nullable=False)
    type: str | None = pa.Field(nullable=True)
    # null: the request states no length (read_benchmark's allow_unstated; longwriter.length_target)
    length: int = pa.Field(nullable=True, gt=0)

    @pa.check("prompt", name="not_blank", error="prompt is empty or whitespace")
    def prompt_not_blank(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return _not_blank(data)

    class Config:
        strict = False


class LengthTargets(pa.DataFrameModel):
    """The judge's word range for each prompt that states no length (``longwriter.length_target``)."""

    source: str = pa.Field(isin=["selected", "grpo_pool", "longbench"])
    id: str = pa.Field(str_length={"min_value": 1})
    prompt: str = pa.Field(unique=True)
    min_words: int = pa.Field(ge=1)
    max_words: int = pa.Field(ge=1)
    attempts: int = pa.Field(ge=1)

    @pa.dataframe_check(name="min_not_above_max", error="min_words is above max_words")
    def ordered(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("min_words") <= pl.col("max_words"))


class Answers(pa.DataFrameModel):
    """A model under test answering benchmark requests: one row per (model, request, sample)."""

    model: str = pa.Field(str_length={"min_value": 1})
    index: int = pa.Field(ge=0)  # the request's 0-based position in the benchmark file
    sample: int = pa.Field(ge=0)
    prompt: str
    type: str = pa.Field(nullable=True)
    lang: str = pa.Field(isin=EVAL_LANGS)
    required: int = pa.Field(ge=1)
    bucket: str
    text: str
    words: int = pa.Field(ge=0)
    finish_reason: str
    max_tokens: int = pa.Field(ge=1)
    prompt_tokens: int = pa.Field(ge=0)
    completion_tokens: int = pa.Field(ge=0)
    latency_s: float = pa.Field(ge=0)
    cap_lossless: bool  # max_tokens left room for 4x the required words (S_l is 0 from there on): nothing lost
    cap_below_ask: bool  # max_tokens was below even the words asked for
    effective_words: int = pa.Field(ge=0)  # words before the answer fell into a loop (all when it did not)
    degenerate: bool  # it fell into a loop (longwriter.repetition)

    class Config:
        strict = True
        unique = ["model", "index", "sample"]


class Scores(pa.DataFrameModel):
    """LongBench-Write per request and model: the length score and the judge's six 1-5 ratings (null if unjudged).
    A request the model left unanswered has a row too (``answered`` false, produced 0, S_l 0, no ratings)."""

    model: str = pa.Field(str_length={"min_value": 1})
    index: int = pa.Field(ge=0)
    lang: str = pa.Field(isin=EVAL_LANGS)
    bucket: str
    required: int = pa.Field(ge=1)
    produced: int = pa.Field(ge=0)
    answered: bool
    length_score: float = pa.Field(ge=0, le=100)
    effective_words: int = pa.Field(ge=0)  # produced words before the answer fell into a loop
    degenerate: bool
    length_score_effective: float = pa.Field(ge=0, le=100)  # S_l on the effective words
    relevance: int = pa.Field(nullable=True, ge=1, le=5)
    accuracy: int = pa.Field(nullable=True, ge=1, le=5)
    coherence: int = pa.Field(nullable=True, ge=1, le=5)
    clarity: int = pa.Field(nullable=True, ge=1, le=5)
    breadth_and_depth: int = pa.Field(nullable=True, ge=1, le=5)
    reading_experience: int = pa.Field(nullable=True, ge=1, le=5)
    quality_score: float = pa.Field(nullable=True, ge=0, le=100)
    judge_attempts: int = pa.Field(ge=0)
    judge_truncated: bool
    analysis: str = pa.Field(nullable=True)

    class Config:
        strict = True
        unique = ["model", "index"]


class JudgeRatings(pa.DataFrameModel):
    """The ``agreement`` stage's sample: each answer's six 1-5 ratings by the judge and by the reference judge."""

    model: str = pa.Field(str_length={"min_value": 1})
    index: int = pa.Field(ge=0)
    judge: str = pa.Field(isin=["judge", "reference"])
    relevance: int = pa.Field(ge=1, le=5)
    accuracy: int = pa.Field(ge=1, le=5)
    coherence: int = pa.Field(ge=1, le=5)
    clarity: int = pa.Field(ge=1, le=5)
    breadth_and_depth: int = pa.Field(ge=1, le=5)
    reading_experience: int = pa.Field(ge=1, le=5)
    quality_score: float = pa.Field(ge=0, le=100)

    class Config:
        strict = True
        unique = ["model", "index", "judge"]


class Comparisons(pa.DataFrameModel):
    """Pairwise judging of two models' answers to one request, in both orders; outcome is model_a's."""

    model_a: str
    model_b: str
    index: int = pa.Field(ge=0)
    a_first: str = pa.Field(nullable=True, isin=["a", "b", "tie"])  # the verdict with a shown as answer A
    b_first: str = pa.Field(nullable=True, isin=["a", "b", "tie"])  # the verdict with b shown as answer A
    outcome: str = pa.Field(nullable=True, isin=["win", "tie", "loss"])
    attempts: int = pa.Field(ge=0)

    class Config:
        strict = True
        unique = ["model_a", "model_b", "index"]


class CriteriaAnswers(pa.DataFrameModel):
    """A model's answer to one request of a criteria file (WritingBench's format: ``longwriter.eval.criteria``)."""

    model: str
    index: int = pa.Field(ge=0)
    domain1: str
    domain2: str
    lang: str
    prompt: str
    text: str
    words: int = pa.Field(ge=0)
    finish_reason: str
    completion_tokens: int = pa.Field(ge=0)

    class Config:
        strict = True
        unique = ["model", "index"]


class CriteriaScores(pa.DataFrameModel):
    """The judge's score (1..10) of one answer against one of its request's own criteria, with the reason."""

    model: str
    index: int = pa.Field(ge=0)
    domain1: str
    domain2: str
    criterion: str
    score: int = pa.Field(ge=1, le=10)
    reason: str
    attempts: int = pa.Field(ge=1)
    truncated: bool  # the answer was shown to the judge shortened (too long for its context)

    class Config:
        strict = True
        unique = ["model", "index", "criterion"]


class Chat(pa.DataFrameModel):
    """Chat-format training examples (general chat sets, the ``mix`` output): a ``messages`` list each."""

    id: str = pa.Field(unique=True, str_length={"min_value": 1})
    source: str
    messages: MESSAGES  # type: ignore[valid-type]

    class Config:
        strict = True


class Pairs(pa.DataFrameModel):
    """DPO preference pairs: per long-writing prompt, the judge's best sample and one other."""

    prompt_id: str = pa.Field(unique=True, str_length={"min_value": 1})
    prompt: str
    chosen: str
    rejected: str
    chosen_sample: int = pa.Field(ge=0)
    rejected_sample: int = pa.Field(ge=0)
    chosen_score: float = pa.Field(ge=0, le=100)
    rejected_score: float = pa.Field(ge=0, le=100)
    margin: float = pa.Field(ge=0)

    class Config:
        strict = True


# The failures tables' model, ``Failures``, lives beside its reasons in ``longwriter.failures``.


def empty(model: type[pa.DataFrameModel]) -> pl.DataFrame:
    """A table with ``model``'s columns and no rows (a stage with nothing to do still writes its outputs)."""
    return pl.DataFrame(schema={name: col.dtype.type for name, col in model.to_schema().columns.items()})


def write_checked(df: pl.DataFrame, model: type[pa.DataFrameModel], path: str | Path) -> None:
    """Validate ``df`` against ``model``, then write it atomically: no stage writes what its reader rejects."""
    write_table(validate(df, model, path), path)


def validate(df: pl.DataFrame, model: type[pa.DataFrameModel], path: str | Path) -> pl.DataFrame:
    """Check ``df`` against ``model``; raise ``InputError`` naming ``path``, the row and the column.

    A ``_row`` column (added by ``files.read_table``) maps failures back to the file's own row numbers and
    is dropped from the result.
    """
    rows = df["_row"] if "_row" in df.columns else None
    body = df.drop("_row") if rows is not None else df
    try:
        return model.validate(body, lazy=True)
    except (SchemaErrors, SchemaError) as e:
        cases = e.failure_cases if isinstance(e, SchemaErrors) else None
        raise _input_error(path, model, e, cases, rows, body) from None


def _wrong_type_row(body: pl.DataFrame, column: str) -> int:
    # pandera checks a column's type as a whole; a float column where integers belong is blamed on its first
    # non-integral value (a column that is wrong throughout, on its first row)
    if column in body.columns and body[column].dtype.is_float():
        values = body[column]
        bad = (values.is_not_null() & (values != values.floor())).arg_true()
        if len(bad):
            return int(bad[0])
    return 0


def _input_error(path, model, err, cases, rows, body) -> InputError:
    if cases is None or cases.height == 0:
        return InputError(path, f"does not match table '{model.__name__}': {err}")
    first = cases.sort("index", nulls_last=True).row(0, named=True)
    column, check, value, index = first["column"], str(first["check"]), first["failure_case"], first["index"]
    if check == "column_in_dataframe":
        return InputError(path, f"missing column '{value}' required by table '{model.__name__}'")
    if check == "column_in_schema":
        return InputError(path, f"unexpected column '{value}' in table '{model.__name__}'")

    def file_row(i: int) -> int:
        return int(rows[i]) if rows is not None else i + 1

    more = f" ({cases.height - 1} more problems)" if cases.height > 1 else ""
    if check.startswith("dtype("):
        return InputError(path, f"wrong type {value}, expected {check[6:-1]}{more}",
                          row=file_row(_wrong_type_row(body, column)), column=column)
    if "uniqueness" in check and column == model.__name__:
        keys = list(getattr(model.Config, "unique", None) or [])
        where = ", ".join(str(file_row(int(i))) for i in cases["index"].drop_nulls().unique().sort().to_list())
        return InputError(path, f"duplicate ({', '.join(keys)}) in rows {where}",
                          row=file_row(int(cases["index"].drop_nulls().max())), column=", ".join(keys))
    if "uniqueness" in check:
        dup = cases.filter(pl.col("column") == column, pl.col("failure_case") == value)
        where = ", ".join(str(file_row(int(i))) for i in dup["index"].sort().to_list())
        return InputError(path, f"duplicate value {value!r} (rows {where})", row=file_row(int(dup["index"].max())),
                          column=column)
    row = file_row(int(index)) if index is not None else None
    if check == "not_nullable":
        return InputError(path, f"missing value{more}", row=row, column=column)
    return InputError(path, f"value {str(value)[:60]!r} fails check {check}{more}", row=row, column=column)


class SegmentParts(pa.DataFrameModel):
    """The ``segments`` stage's measures: one row per measured text (``set``: agentwrite or a model; ``text_id``:
    the sample's id or the request's index) per part; ``quality`` is null where the judge did not rate the part."""

    set: str = pa.Field(str_length={"min_value": 1})
    text_id: str = pa.Field(str_length={"min_value": 1})
    part: int = pa.Field(ge=1)
    words: int = pa.Field(ge=0)
    distinct_n: float = pa.Field(ge=0, le=1)
    repeats_earlier: float = pa.Field(ge=0, le=1)
    quality: float = pa.Field(nullable=True, ge=0, le=100)

    class Config:
        strict = True
        unique = ["set", "text_id", "part"]


class NllTexts(pa.DataFrameModel):
    """The ``nll`` stage's scored texts: per text its tokens and its mean NLL (nats per token, the last value of its
    cumulative curve), as written and with its paragraphs shuffled."""

    set: str = pa.Field(str_length={"min_value": 1})
    text_id: str = pa.Field(str_length={"min_value": 1})
    tokens: int = pa.Field(ge=1)
    nll_mean: float = pa.Field(ge=0)
    nll_mean_shuffled: float = pa.Field(ge=0)

    class Config:
        strict = True
        unique = ["set", "text_id"]


class RLPrompts(pa.DataFrameModel):
    """The prompts grpo trained on, with the length its reward asks for (the rest of its inputs are failures
    rows: no length, over max_completion_length, left out by max_prompts)."""

    id: str = pa.Field(unique=True)
    prompt: str
    lang: str
    required: int = pa.Field(ge=1)
    required_min: int = pa.Field(ge=1)  # below required only for a length target's range

    class Config:
        strict = True
