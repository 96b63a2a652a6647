"""Benchmark files in the public LongBench-Write / LongWrite-Ruler format, and what is derived from them.

One JSON object per line: ``prompt`` (the writing request), ``type`` (a free-text category) and ``length``
(the required number of words). Language and length bucket are derived here, so the public files and the
project's own sets are read the same way.

A request's language, first that applies: its ``lang`` field ("zh" or "en") when the file has one; else, given
``en_file`` (a file of the English requests, as the public LongBench-Write release ships its English half), en
for a prompt that file holds and zh for the others; else the script of the prompt (``longwriter.language``).
The script alone counts a Chinese request for an English article as zh; the release counts it by its half.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from longwriter.errors import InputError
from longwriter.files import read_table
from longwriter.language import languages
from longwriter.schemas import Benchmark, validate
from longwriter.scoring import bucket_of

LANGS = ("zh", "en")  # what a ``lang`` field may say


def _as_text(values: pl.Series) -> pl.Series | None:
    """A column as strings, or None when it holds something else (numbers, lists...)."""
    return values.cast(pl.Utf8) if values.dtype in (pl.Utf8, pl.Null, pl.Categorical) else None


def _first_bad(raw: pl.DataFrame, bad: pl.Series) -> tuple[int, int] | None:
    """(position, file row) of the first True in ``bad``; None when there is none."""
    found = bad.arg_true()
    return (int(found[0]), int(raw["_row"][int(found[0])])) if len(found) else None


def _given_langs(raw: pl.DataFrame, path: str | Path) -> pl.Series:
    """The file's own ``lang`` field, every value checked to be zh or en (the first bad one names its row)."""
    text = _as_text(raw["lang"])
    bad = pl.Series([True] * raw.height) if text is None else ~text.is_in(LANGS).fill_null(False)
    if (first := _first_bad(raw, bad)) is not None:
        value = raw["lang"][first[0]]
        got = "it is missing (other rows give it)" if value is None else f"got {value!r}"
        raise InputError(path, f'lang must be "zh" or "en": {got}', row=first[1], column="lang")
    return text  # type: ignore[return-value]


def english_prompts(en_file: str | Path) -> set[str]:
    """The prompts of ``en_file`` (records like the benchmark file's; only ``prompt`` is read), trimmed."""
    raw = read_table(en_file, columns=["prompt"])
    if "prompt" not in raw.columns:
        raise InputError(en_file, "no 'prompt' field (longbench.en_file holds the benchmark's English records)",
                         column="prompt")
    text = _as_text(raw["prompt"])
    trimmed = text.str.strip_chars() if text is not None else None
    bad = pl.Series([True] * raw.height) if trimmed is None else (trimmed.str.len_chars() == 0).fill_null(True)
    if (first := _first_bad(raw, bad)) is not None:
        raise InputError(en_file, "prompt is missing, blank or not a string", row=first[1], column="prompt")
    return set(trimmed.to_list())  # type: ignore[union-attr]


def _languages_by_file(bench: pl.DataFrame, path: str | Path, en_file: str | Path) -> pl.Series:
    """en for a prompt ``en_file`` holds (compared trimmed), zh for the others."""
    english = english_prompts(en_file)
    held = bench["prompt"].str.strip_chars().is_in(list(english))
    if not held.any():
        raise InputError(en_file, f"none of its prompts is a request of {path}: not the English part of that "
                                  "benchmark (longbench.en_file)")
    return pl.select(pl.when(held).then(pl.lit("en")).otherwise(pl.lit("zh")).alias("lang")).to_series()


def read_benchmark(path: str | Path, lengths: list[int] | None = None,
                   en_file: str | Path | None = None, allow_unstated: bool = False) -> pl.DataFrame:
    """The requests of ``path`` with ``index`` (0-based line order), ``lang`` and ``bucket`` added.

    ``lengths``: keep only requests asking for one of these lengths; each must occur in the file.
    ``en_file``: a file of English requests; a prompt it holds is en, any other zh (unless the file has ``lang``).
    ``allow_unstated``: a request may leave ``length`` out (null ``required`` and ``bucket``: its length target,
    ``longwriter.length_target``, decides them); otherwise that is an error naming the row.
    """
    # other fields are ignored, whatever they hold
    raw = read_table(path, columns=["prompt", "type", "length", "lang"])
    if raw.height == 0:
        raise InputError(path, "the benchmark file holds no requests")
    for column in ("prompt", "type", "length"):
        if column in raw.columns and raw[column].dtype == pl.Null:
            raw = raw.with_columns(pl.col(column).cast(pl.Utf8 if column != "length" else pl.Int64))
    if "type" not in raw.columns:
        raw = raw.with_columns(pl.lit(None, dtype=pl.Utf8).alias("type"))
    if "length" not in raw.columns and allow_unstated:
        raw = raw.with_columns(pl.lit(None, dtype=pl.Int64).alias("length"))
    checked = validate(raw.drop("lang", strict=False), Benchmark, path)
    if not allow_unstated and "length" in checked.columns and (missing := checked["length"].is_null().arg_true()).len():
        raise InputError(path, "length is missing (a request without one needs length targets: "
                               "length_target.enabled)", row=int(raw["_row"][int(missing[0])]), column="length")
    bench = checked.with_row_index("index").select(
        pl.col("index").cast(pl.Int64), "prompt", "type", pl.col("length").cast(pl.Int64).alias("required"))
    if "lang" in raw.columns:
        lang = _given_langs(raw, path)
    elif en_file is not None:
        lang = _languages_by_file(bench, path, en_file)
    else:
        lang = languages(bench["prompt"])
    bench = bench.with_columns(
        lang.alias("lang"),
        pl.col("required").map_elements(bucket_of, return_dtype=pl.Utf8).alias("bucket"))
    if lengths is not None:
        missing = sorted(set(lengths) - set(bench["required"].to_list()))
        if missing:
            raise InputError(path, f"no request asks for length(s) {', '.join(map(str, missing))} "
                             f"(the file has {', '.join(map(str, sorted(set(bench['required'].to_list()))))})",
                             column="length")
        bench = bench.filter(pl.col("required").is_in(lengths))
    return bench
