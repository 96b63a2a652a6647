"""``provider: answers``: a table of answers already written (a paper's released outputs, another harness's
generations) stands in for a model, so every evaluation stage, the judge and ``compare`` score it like any other.

The table (``path``: JSONL or Parquet) has a ``prompt`` and an ``answer`` column, both strings. A request is
answered by the rows whose prompt is its last message's content (surrounding whitespace aside): the first such row
answers sample 0, the second sample 1, and so on. A request with no row (an unknown prompt, or more samples asked
than the table holds) is an unanswered call: the client raises ``LLMCallError`` and the stage writes its failures
row, as for a model that never answered. Nothing is sent anywhere, nothing costs, and no token is counted (the
table says none): the answers' words are what the stages measure.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import polars as pl

from longwriter.errors import InputError

COLUMNS = ("prompt", "answer")


@dataclass(frozen=True)
class SavedAnswers:
    source: str
    digest: str  # the file's content hash: the model's identity, so a changed file is a changed model
    by_prompt: dict[str, tuple[str, ...]]

    def answer(self, prompt: str, sample: int) -> str | None:
        """The answer to ``prompt``'s ``sample``-th draw, or None when the table has none."""
        answers = self.by_prompt.get(prompt.strip(), ())
        return answers[sample] if 0 <= sample < len(answers) else None


@cache
def load_saved_answers(path: str) -> SavedAnswers:
    """Read and check ``path``; InputError names the file, the row and the column of what is wrong."""
    from longwriter.files import read_table

    file = Path(path)
    table = read_table(file)
    for column in COLUMNS:
        if column not in table.columns:
            raise InputError(file, f"saved answers need this column (the file has: {', '.join(table.columns)})",
                             column=column)
        if table.schema[column] not in (pl.Utf8, pl.Null):
            raise InputError(file, f"must hold strings, not {table.schema[column]}", column=column)
        missing = table.filter(pl.col(column).is_null())
        if missing.height:
            raise InputError(file, "empty", row=int(missing["_row"][0]), column=column)
    by_prompt: dict[str, list[str]] = {}
    for prompt, answer in table.select(COLUMNS).iter_rows():
        by_prompt.setdefault(prompt.strip(), []).append(answer)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return SavedAnswers(str(file), digest, {p: tuple(a) for p, a in by_prompt.items()})
