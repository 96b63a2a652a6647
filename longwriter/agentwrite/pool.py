"""Reading instruction pools: JSONL or Parquet files, directories of them, and chat logs (WildChat-1M's
``conversation``, chat sets' ``messages``) whose first user turn is the instruction."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandera.polars as pa
import polars as pl

from longwriter.errors import InputError
from longwriter.failures import Reason, failure_row
from longwriter.files import read_table
from longwriter.schemas import Pool, validate


def _stable_ids(prompts: pl.Series) -> pl.Series:
    return pl.Series([hashlib.sha1(p.encode("utf-8")).hexdigest()[:12] for p in prompts.to_list()], dtype=pl.Utf8)


def _certainly_valid(df: pl.DataFrame, model: type[pa.DataFrameModel]) -> bool:
    """Whether ``df`` passes ``model``, decided with a few Polars aggregates (a million rows in a fraction of a
    second, where pandera takes about a second). False means "ask pandera", which then names the row; any
    column property or check this does not know also answers False."""
    schema = model.to_schema()
    if schema.checks or schema.unique or schema.coerce or schema.strict:
        return False
    exprs: list[pl.Expr] = []
    for name, column in schema.columns.items():
        if name not in df.columns:
            if column.required:
                return False
            continue
        if column.coerce or df.schema[name] != column.dtype.type:
            return False
        col = pl.col(name)
        if not column.nullable:
            exprs.append(col.null_count() == 0)
        if column.unique:
            exprs.append(col.n_unique() == pl.len())
        for check in column.checks:
            if check.name == "not_blank":  # _not_blank: something left after strip_chars
                exprs.append(col.str.contains(r"\S").all())
            elif check.name == "greater_than":
                exprs.append((col > check.statistics["min_value"]).all())
            else:
                return False
    return all(df.select(e.alias(f"c{i}") for i, e in enumerate(exprs)).row(0)) if exprs else True


# Chat logs serve as pools as they are published: a WildChat-1M Parquet shard holds one `conversation` per row
# (a list of {role, content, ...} turns) keyed by `conversation_hash`; chat sets hold `messages`. The instruction
# is the conversation's first user turn, the request the paper's selection starts from.
_CHAT_COLUMNS = ("conversation", "messages")
_POOL_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson")
# the columns select reads: a WildChat shard's others (moderation scores, headers, ...) stay on disk
_POOL_COLUMNS = ["id", "prompt", "source", "required_words", *_CHAT_COLUMNS, "conversation_hash"]


def pool_files(path: str) -> list[Path]:
    """The files of one ``select.pools`` entry: the file itself, or every pool file in a directory (e.g. the
    shards ``dvc import-url`` put there), in name order."""
    entry = Path(path)
    if not entry.is_dir():
        return [entry]
    files = sorted(p for p in entry.rglob("*") if p.is_file() and p.suffix.lower() in _POOL_SUFFIXES)
    if not files:
        raise InputError(path, f"no pool files ({', '.join(_POOL_SUFFIXES)}) in this directory")
    return files


def _chat_column(schema: pl.Schema, path: str | Path) -> str | None:
    """The chat column of a pool without a ``prompt`` (None when it has one), checked to hold {role, content}
    turns."""
    if "prompt" in schema:
        return None
    column = next((c for c in _CHAT_COLUMNS if c in schema), None)
    if column is None:
        raise InputError(path, "missing column 'prompt', and no chat column ('conversation' as in WildChat-1M, "
                               "or 'messages') to take the first user turn from")
    dtype = schema[column]
    if not (isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct)
            and {"role", "content"} <= {f.name for f in dtype.inner.fields}):
        raise InputError(path, f"expected a list of {{role, content}} turns, found {dtype}", column=column)
    return column


def _first_user_turns_parquet(path: Path, column: str, names: list[str]) -> pl.DataFrame:
    """A Parquet chat log's first user turns, read by DuckDB: the turns are reduced to one string per row inside
    the scan, so no conversation (replies and their metadata, most of a WildChat shard) is ever held in memory.
    Polars' list.eval over the read column took 10 s and 2.7 GiB on a million conversations; this 2 s, 1.1 GiB."""
    import duckdb

    keep = [c for c in _POOL_COLUMNS if c in names and c not in _CHAT_COLUMNS]
    select = ", ".join([f'"{c}"' for c in keep]
                       + [f"list_filter(\"{column}\", lambda t: t.role = 'user')[1].content AS prompt",
                          "file_row_number + 1 AS _row"])
    try:
        with duckdb.connect(config={"threads": pl.thread_pool_size()}) as con:
            return con.sql(f"SELECT {select} FROM read_parquet(?, file_row_number = true)",
                           params=[str(path)]).pl().with_columns(pl.col("_row").cast(pl.Int64))
    except duckdb.Error as e:
        raise InputError(path, f"not a readable chat log: {e}") from None


def first_user_turns(df: pl.DataFrame, path: str | Path, dropped: list[dict] | None = None) -> pl.DataFrame:
    """A pool file's rows as prompts: unchanged when it has a ``prompt`` column; a chat log's rows get the
    first user turn of their conversation as ``prompt`` (and ``conversation_hash`` as ``id``). Conversations
    without a non-blank user turn are left out (an empty chat message is not an instruction) and, when
    ``dropped`` is given, recorded there as failures rows."""
    column = _chat_column(df.schema, path)
    if column is None:
        return df
    turn = pl.element()
    first_user = pl.col(column).list.eval(
        turn.filter(turn.struct.field("role") == "user").struct.field("content").first()).list.first()
    return _keep_user_turns(df.with_columns(first_user.alias("prompt")).drop(column), path, dropped)


def _keep_user_turns(df: pl.DataFrame, path: str | Path, dropped: list[dict] | None) -> pl.DataFrame:
    has_turn = pl.col("prompt").str.contains(r"\S").fill_null(False)
    if dropped is not None:
        key = "id" if "id" in df.columns else "conversation_hash" if "conversation_hash" in df.columns else None
        for row in df.filter(~has_turn).select(
                pl.col(key).cast(pl.Utf8) if key else pl.lit(None, pl.Utf8), "_row").iter_rows():
            dropped.append(failure_row(
                "select", Reason.NO_USER_TURN, f"{path}: row {row[1]} has no non-blank user turn",
                instruction_id=row[0] or f"{Path(path).name}:{row[1]}", section=row[1]))
    df = df.filter(has_turn)
    if "id" not in df.columns and "conversation_hash" in df.columns:
        df = df.with_columns(pl.col("conversation_hash").cast(pl.Utf8).alias("id"))
    return df


def read_pool_file(file: Path, dropped: list[dict] | None = None) -> pl.DataFrame:
    """One pool file's prompts (see first_user_turns), with ``_row``."""
    if file.suffix.lower() == ".parquet" and file.exists():
        try:
            schema = pl.scan_parquet(file).collect_schema()
        except Exception as e:  # polars raises several unrelated types for corrupt files
            raise InputError(file, f"not a readable Parquet file: {e}") from None
        column = _chat_column(schema, file)
        if column is not None:
            return _keep_user_turns(_first_user_turns_parquet(file, column, schema.names()), file, dropped)
    return first_user_turns(read_table(file, _POOL_COLUMNS), file, dropped)


def load_pools(paths: list[str], dropped: list[dict] | None = None) -> pl.DataFrame:
    """Read and validate each pool; returns id, prompt, source, required_words (one frame, pool order).

    A pool is a file (JSONL or Parquet) or a directory of them; its source is the file's, or the directory's,
    name unless rows carry their own. Chat rows without a user turn go to ``dropped`` (see first_user_turns)."""
    frames = []
    for path in paths:
        source = Path(path).stem
        for file in pool_files(path):
            df = read_pool_file(file, dropped)
            df = (df.drop("_row") if _certainly_valid(df.drop("_row", strict=False), Pool)
                  else validate(df, Pool, str(file)))
            frames.append(df.select(
                pl.col("id") if "id" in df.columns else _stable_ids(df["prompt"]).alias("id"),
                pl.col("prompt"),
                (pl.col("source").fill_null(source) if "source" in df.columns else pl.lit(source)).alias("source"),
                (pl.col("required_words").cast(pl.Int64) if "required_words" in df.columns
                 else pl.lit(None, dtype=pl.Int64)).alias("required_words"),
            ))
    return pl.concat(frames, how="vertical_relaxed")
