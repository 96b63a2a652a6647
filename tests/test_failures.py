"""The failures tables: the reason vocabulary, the row builder, writing and counting."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from longwriter.errors import InputError
from longwriter.failures import (
    DROP_REASONS,
    ERROR_REASONS,
    Failures,
    Reason,
    failure_row,
    failures_frame,
    reason_counts,
    write_failures,
)
from longwriter.schemas import validate


def test_every_reason_is_an_error_or_a_drop_and_says_what_it_means() -> None:
    assert {Reason.LLM_ERROR, Reason.UNUSABLE_OUTPUT} == ERROR_REASONS
    assert set(Reason) == ERROR_REASONS | DROP_REASONS and not ERROR_REASONS & DROP_REASONS
    for r in Reason:
        assert r.kind in ("error", "drop") and r.doc and r.value == r.name.lower()


def test_a_reason_is_its_string() -> None:
    assert Reason.CUT_OFF == "cut_off" and f"{Reason.CUT_OFF}" == "cut_off" and str(Reason.CUT_OFF) == "cut_off"
    assert Reason("refusal") is Reason.REFUSAL


def test_the_schema_accepts_exactly_the_reasons() -> None:
    checks = Failures.to_schema().columns["reason"].checks
    assert [sorted(c.statistics["allowed_values"]) for c in checks] == [sorted(r.value for r in Reason)]


def test_unknown_reason_rejected() -> None:
    with pytest.raises(ValueError, match="something_else"):
        failure_row("plan", "something_else", "bad", instruction_id="i1")  # type: ignore[arg-type]


def test_row_has_the_schema_columns() -> None:
    row = failure_row("write", Reason.CUT_OFF, "section 2 cut_off", instruction_id="i1", section=2, attempts=3)
    assert list(row) == list(Failures.to_schema().columns)
    assert row == {"stage": "write", "instruction_id": "i1", "section": 2, "attempts": 3, "reason": "cut_off",
                   "error": "section 2 cut_off"}
    assert type(row["reason"]) is str  # a plain string, not the enum member
    defaults = failure_row("select", Reason.NO_USER_TURN, "no user turn", instruction_id="h3")
    assert (defaults["section"], defaults["attempts"]) == (None, 0)


def test_written_table_validates_with_plain_string_reasons(tmp_path: Path) -> None:
    rows = [failure_row("plan", Reason.UNUSABLE_OUTPUT, "bad JSON", instruction_id="i1", attempts=3),
            failure_row("write", Reason.LLM_ERROR, "HTTP 500", instruction_id="i2", section=4, attempts=5),
            failure_row("plan", Reason.DUPLICATE_POINT, "Intro", instruction_id="i3", attempts=1)]
    path = tmp_path / "failures.parquet"
    write_failures(rows, path)
    back = validate(pl.read_parquet(path), Failures, path)
    assert back.schema["reason"] == pl.String
    assert back["reason"].to_list() == ["unusable_output", "llm_error", "duplicate_point"]
    assert back["section"].to_list() == [None, 4, None]


def test_empty_table_is_written(tmp_path: Path) -> None:
    write_failures([], tmp_path / "f.parquet")
    assert validate(pl.read_parquet(tmp_path / "f.parquet"), Failures, "f").height == 0


def test_a_hand_built_reason_outside_the_vocabulary_is_refused_at_write(tmp_path: Path) -> None:
    row = {**failure_row("plan", Reason.LLM_ERROR, "x", instruction_id="i1"), "reason": "oops"}
    with pytest.raises(InputError):
        write_failures([row], tmp_path / "f.parquet")
    assert not (tmp_path / "f.parquet").exists()


def test_reason_counts_are_sorted_plain_strings() -> None:
    rows = [failure_row("s", r, "", instruction_id=str(i))
            for i, r in enumerate([Reason.REFUSAL, Reason.CUT_OFF, Reason.REFUSAL])]
    counts = reason_counts(rows)
    assert counts == {"cut_off": 1, "refusal": 2} and list(counts) == ["cut_off", "refusal"]
    assert reason_counts(failures_frame(rows).to_dicts()) == counts
