"""The failures tables: every row a stage could not produce or chose to leave out, with the reason.

Each stage writes ``data/failures/<stage>.parquet`` (``write_failures``) and counts its rows per reason in its
metrics (``reason_counts``); nothing is lost silently. A row is built with ``failure_row``, its reason is a
``Reason``: errors (something failed that a rerun or a better model may fix) and drops (the pipeline chose to
leave the row out, by a rule that keeps the figures honest) are told apart by ``Reason.kind``.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import pandera.polars as pa
import polars as pl

from longwriter.schemas import empty, write_checked


class Reason(StrEnum):
    """Why a row is in a failures table: its value is what the table holds, ``kind`` is ``error`` or ``drop``,
    ``doc`` says it in words."""

    kind: Literal["error", "drop"]
    doc: str

    def __new__(cls, value: str, kind: Literal["error", "drop"], doc: str) -> Reason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.kind = kind
        member.doc = doc
        return member

    # errors
    LLM_ERROR = "llm_error", "error", "a model call failed after its retries (HTTP error, timeout, malformed reply)"
    UNUSABLE_OUTPUT = ("unusable_output", "error",
                       "the model's reply failed validation after its re-asks (plan, selector or judge)")
    # drops
    EMPTY = "empty", "drop", "nothing left of the text (an empty reply, or empty after cleaning)"
    REFUSAL = "refusal", "drop", "the model refused or wrote an 'as an AI' disclaimer"
    FILTERED = "filtered", "drop", "a content filter stopped the reply"
    CUT_OFF = ("cut_off", "drop",
               "the text stopped on the token limit in mid-sentence (after its continuations and retries)")
    INCOMPLETE = "incomplete", "drop", "an answer lacks some of its planned sections"
    COLLAPSED = "collapsed", "drop", "the plan had more sections than max_sections"
    TOO_SHORT = ("too_short", "drop",
                 "the answer has fewer words than min_words_ratio of its plan, or than postprocess.min_words")
    REPETITIVE = "repetitive", "drop", "the answer repeats its n-grams beyond max_repetition"
    NO_USER_TURN = "no_user_turn", "drop", "a pool conversation without a user turn"
    DUPLICATE_POINT = ("duplicate_point", "drop",
                       "a plan line repeating an earlier one, or empty, was removed from the plan")
    TOO_FEW_RATED = ("too_few_rated", "drop",
                     "a prompt with fewer than two rated, complete answers gives no preference pair")
    ZERO_MARGIN = ("zero_margin", "drop",
                   "the best answer scores no higher than the other one: no preference to learn")
    OVER_MAX_LENGTH = "over_max_length", "drop", "a training example longer than max_length tokens"
    OVER_MAX_WORDS = ("over_max_words", "drop",
                      "an SFT sample whose answer has more words than mix.max_output_words (the length experiment)")
    OVER_CEILING = ("over_ceiling", "drop",
                    "a preference prompt asking more words than the token ceiling holds tokens: every answer would be "
                    "cut, so none is sampled")
    UNANSWERED = "unanswered", "drop", "a request one or both of the compared models did not answer"
    NO_REQUIRED_LENGTH = ("no_required_length", "drop",
                          "a prompt (RL or preference) that states no length and has no plan or estimate: no length "
                          "to reward or to score")
    # select's filters, before the selector sees a prompt
    DUPLICATE = "duplicate", "drop", "a pool prompt equal to an earlier one (after normalising)"
    OTHER_LANGUAGE = "other_language", "drop", "a prompt in neither of the pipeline's languages (en, zh)"
    PROMPT_LENGTH = ("prompt_length", "drop",
                     "a prompt with fewer characters than min_prompt_chars or more than max_prompt_chars")
    OVER_REQUIRED_WORDS = ("over_required_words", "drop",
                           "a prompt that states a longer length than select.max_required_words")
    NOT_LONG = "not_long", "drop", "the selector judged that the prompt needs no long answer"
    LEFT_OUT = ("left_out", "drop",
                "left out by a size param, named in the row's error (select's per_lang quota, general.max_prompts, "
                "mix's general_per_long ratio, longbench.per_lang, ruler.lengths and ruler.per_length, "
                "compare.requests, grpo.max_prompts, nll.max_texts)")


ERROR_REASONS = frozenset(r for r in Reason if r.kind == "error")
DROP_REASONS = frozenset(r for r in Reason if r.kind == "drop")


class Failures(pa.DataFrameModel):
    """Rows a stage could not produce or chose to drop, with the reason: nothing is lost silently.

    ``reason`` is a ``Reason`` (errors and deliberate drops are told apart); ``error`` is the detail in words.
    """

    stage: str
    instruction_id: str
    section: int = pa.Field(nullable=True)
    attempts: int = pa.Field(ge=0)
    reason: str = pa.Field(isin=sorted(r.value for r in Reason))
    error: str

    class Config:
        strict = True


def failure_row(stage: str, reason: Reason, error: str, *, instruction_id: str, section: int | None = None,
                attempts: int = 0) -> dict[str, Any]:
    """One row of a ``Failures`` table. ``instruction_id`` names what failed (an instruction, prompt, request or
    ``model/index``), ``section`` the part of it (a paragraph, a sample) if any, ``attempts`` the calls made.
    A reason outside ``Reason`` raises ``ValueError``."""
    return {"stage": stage, "instruction_id": instruction_id, "section": section, "attempts": attempts,
            "reason": Reason(reason).value, "error": error}


def failures_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """A ``Failures`` table from row dicts (an empty list gives an empty table with the right columns)."""
    return pl.DataFrame(rows, schema=empty(Failures).schema)


def failures_of(stage: str, reason: Reason, ids: pl.Series, error: str | pl.Series) -> pl.DataFrame:
    """One ``Failures`` row per id in ``ids``, all for ``reason``: the rows of a filter over a whole table (a pool of
    a million prompts), built as one frame rather than a dict per row. ``error`` is one text or one per id."""
    n = len(ids)
    errors = error.cast(pl.Utf8) if isinstance(error, pl.Series) else pl.Series([error] * n, dtype=pl.Utf8)
    return pl.DataFrame({"stage": [stage] * n, "instruction_id": ids.cast(pl.Utf8), "section": [None] * n,
                         "attempts": [0] * n, "reason": [Reason(reason).value] * n, "error": errors},
                        schema=empty(Failures).schema)


def write_failures(rows: list[dict[str, Any]] | pl.DataFrame, path: str | Path) -> None:
    """Write a stage's ``Failures`` table (possibly empty), from row dicts or a frame."""
    write_checked(rows if isinstance(rows, pl.DataFrame) else failures_frame(rows), Failures, path)


def reason_counts(rows: list[dict[str, Any]] | pl.DataFrame) -> dict[str, int]:
    """Failure rows per reason, for a stage's metrics."""
    if isinstance(rows, pl.DataFrame):
        return {str(r): int(n) for r, n in sorted(rows["reason"].value_counts().iter_rows())}
    return dict(sorted(Counter(str(r["reason"]) for r in rows).items()))
