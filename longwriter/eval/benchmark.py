"""Benchmark files in the public LongBench-Write / LongWrite-Ruler format, and what is derived from them.

One JSON object per line: ``prompt`` (the writing request), ``type`` (a free-text category) and ``length``
(the required number of words). Language and length bucket are derived here, so the public files and the
project's own sets are read the same way.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from longwriter.errors import InputError
from longwriter.eval.scoring import bucket_of
from longwriter.files import read_table
from longwriter.language import languages
from longwriter.schemas import Benchmark, validate


def read_benchmark(path: str | Path, lengths: list[int] | None = None) -> pl.DataFrame:
    """The requests of ``path`` with ``index`` (0-based line order), ``lang`` and ``bucket`` added.

    ``lengths``: keep only requests asking for one of these lengths; each must occur in the file.
    """
    raw = read_table(path, columns=["prompt", "type", "length"])  # other fields are ignored, whatever they hold
    if raw.height == 0:
        raise InputError(path, "the benchmark file holds no requests")
    for column in ("prompt", "type", "length"):
        if column in raw.columns and raw[column].dtype == pl.Null:
            raw = raw.with_columns(pl.col(column).cast(pl.Utf8 if column != "length" else pl.Int64))
    if "type" not in raw.columns:
        raw = raw.with_columns(pl.lit(None, dtype=pl.Utf8).alias("type"))
    checked = validate(raw, Benchmark, path)
    bench = checked.with_row_index("index").select(
        pl.col("index").cast(pl.Int64), "prompt", "type", pl.col("length").cast(pl.Int64).alias("required"))
    bench = bench.with_columns(
        languages(bench["prompt"]).alias("lang"),
        pl.col("required").map_elements(bucket_of, return_dtype=pl.Utf8).alias("bucket"))
    if lengths is not None:
        missing = sorted(set(lengths) - set(bench["required"].to_list()))
        if missing:
            raise InputError(path, f"no request asks for length(s) {', '.join(map(str, missing))} "
                             f"(the file has {', '.join(map(str, sorted(set(bench['required'].to_list()))))})",
                             column="length")
        bench = bench.filter(pl.col("required").is_in(lengths))
    return bench
