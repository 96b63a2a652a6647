"""Reading stage inputs with precise errors, and writing outputs atomically.

Every output goes to a temporary file in the same directory and is renamed into place, so a crash or
Ctrl-C never leaves a half-written table or metrics file for DVC to cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's private 0600 would survive the rename
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; it replaces ``path`` (and all it held) only if the block
    succeeds, so a crash leaves the old directory or none, never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    old = path.with_name(f".{path.name}.old")
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_table(df: pl.DataFrame, path: str | Path) -> None:
    """Write ``df`` as Parquet, atomically."""
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)


def write_json(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as pretty JSON (metrics), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8")


# Timing figures: how long a run took, not what it produced. A key is one when, split at "_", its last part is "s"
# or "ms" (a unit: runtime_s, sent_tokens_per_s, latency_ms; case-sensitive, so longbench's "S" and "S_l" are not)
# or any part is one of TIMING_WORDS (seconds, sent_seconds, latency_p50, wall_time, throughput). Its whole value
# (a number or a dict of them) moves out of the results.
TIMING_WORDS = frozenset({"seconds", "second", "latency", "runtime", "elapsed", "duration", "wall", "throughput"})


def is_timing_key(key: object) -> bool:
    """Whether a metrics key names a timing figure (the rule above); non-string keys never do."""
    if not isinstance(key, str):
        return False
    parts = key.split("_")
    return (len(parts) > 1 and parts[-1] in ("s", "ms")) or any(p.lower() in TIMING_WORDS for p in parts)


def split_metrics(obj: Any) -> tuple[Any, Any]:
    """``(results, timings)``: ``obj`` without its timing figures, and those figures at the same paths.

    Dicts are walked recursively (a dict emptied by the split is left out of the results); a list keeps its
    elements, each split, and its timings are a list of the elements' timings when any has one (else ``{}``).
    ``obj`` is not changed.
    """
    if isinstance(obj, dict):
        results: dict[Any, Any] = {}
        timings: dict[Any, Any] = {}
        for key, value in obj.items():
            if is_timing_key(key):
                timings[key] = value
                continue
            kept, timed = split_metrics(value)
            if timed:
                timings[key] = timed
            if kept != {} or value == {}:
                results[key] = kept
        return results, timings
    if isinstance(obj, list):
        parts = [split_metrics(v) for v in obj]
        timed = [t for _, t in parts]
        return [r for r, _ in parts], (timed if any(timed) else {})
    return obj, {}


def timings_path(path: str | Path) -> Path:
    """Where ``write_metrics`` puts the timings of ``path``: ``timings/<name>`` beside it
    (``metrics/plan.json`` -> ``metrics/timings/plan.json``)."""
    path = Path(path)
    return path.parent / "timings" / path.name


def write_metrics(result: dict[str, Any], path: str | Path, timings: str | Path | None = None) -> dict[str, Any]:
    """Write a stage's metrics: the results to ``path``, the timing figures (``split_metrics``) to ``timings``
    (default ``timings_path(path)``; ``{}`` when there are none), each atomically, and neither when either cannot
    be. A rerun that reproduces the results leaves ``path`` unchanged, so ``dvc metrics diff`` shows only what
    really changed. Returns the results."""
    results, timed = split_metrics(result)
    json.dumps([results, timed])  # what cannot be written raises here, before either file is replaced
    write_json(timed, timings_path(path) if timings is None else timings)
    write_json(results, path)
    return results


def write_csv(df: pl.DataFrame, path: str | Path) -> None:
    """Write a table as CSV, atomically (DVC plot data)."""
    with atomic_path(path) as tmp:
        df.write_csv(tmp)


def jsonl_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; malformed lines, non-objects and non-UTF-8
    bytes raise ``InputError`` with the row (blank lines are counted, so rows match an editor's line numbers)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(path, f"not valid UTF-8 (byte {e.start}: {raw[e.start:e.start + 4]!r})",
                                 row=lineno) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(path, f"malformed JSON: {e.msg} at character {e.colno}", row=lineno) from None
            if not isinstance(obj, dict):
                raise InputError(path, f"expected a JSON object, got {type(obj).__name__}", row=lineno)
            yield lineno, obj


def read_jsonl(path: str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """Read a JSONL file of objects (``jsonl_objects``) as a table with a ``_row`` column.

    ``columns``: keep only these fields, so a loosely typed field nobody reads cannot make the file unreadable.
    """
    path = Path(path)
    rows: list[dict[str, Any]] = []
    for lineno, obj in jsonl_objects(path):
        if columns is not None:
            obj = {k: obj[k] for k in columns if k in obj}
        obj["_row"] = lineno
        rows.append(obj)
    if not rows:
        raise InputError(path, "file is empty")
    # polars would silently coerce a column of mixed types (2 -> "2", true -> 1): refuse it instead
    mixed = _first_mixed_column(rows)
    if mixed is not None:
        name, lineno, kind, expected = mixed
        raise InputError(path, f"value of type {kind} where other rows have {expected}", row=lineno, column=name)
    try:
        return pl.DataFrame(rows, infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as e:
        raise InputError(path, f"cannot build a table: {e}") from None


_JSON_KIND = {str: "string", bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}


def _first_mixed_column(rows: list[dict[str, Any]]) -> tuple[str, int, str, str] | None:
    """In the first column holding values of several JSON types (ints and floats are both numbers), the first
    row whose type is not the column's most common one: that is the odd row out, wherever it is."""
    kinds: dict[str, Counter[str]] = {}
    for row in rows:
        for key, value in row.items():
            if value is not None:
                kinds.setdefault(key, Counter())[_JSON_KIND.get(type(value), type(value).__name__)] += 1
    for key, counts in kinds.items():
        if len(counts) > 1:
            expected = counts.most_common(1)[0][0]
            for row in rows:
                value = row.get(key)
                kind = _JSON_KIND.get(type(value), type(value).__name__) if value is not None else expected
                if kind != expected:
                    return key, row["_row"], kind, expected
    return None


def read_table(path: str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """Read a stage table: Parquet (``.parquet``) or JSONL (``.jsonl``/``.json``), with a ``_row`` column.

    ``columns``: keep only those of these columns that the file has.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in {".jsonl", ".json", ".ndjson"}:
        return read_jsonl(path, columns)
    if not path.exists():
        raise InputError(path, "file not found")
    if suffix != ".parquet":
        raise InputError(path, f"unsupported file type '{suffix}' (expected .parquet or .jsonl)")
    try:
        df = _read_parquet(path)
    except Exception as e:  # polars raises several unrelated types for corrupt files
        raise InputError(path, f"not a readable Parquet file: {e}") from None
    if columns is not None:
        df = df.select([c for c in columns if c in df.columns])
    return df.with_row_index("_row", offset=1).with_columns(pl.col("_row").cast(pl.Int64))


_ROWS_PER_READER = 200_000


def _read_parquet(path: Path) -> pl.DataFrame:
    """``pl.read_parquet``; a large file is read as row slices on parallel threads (Polars decodes one read's
    strings on one core: a million prompts took 1.6 s, and 0.8 s on two threads)."""
    rows = pl.scan_parquet(path).select(pl.len()).collect().item()
    readers = min(pl.thread_pool_size(), rows // _ROWS_PER_READER)
    if readers < 2:
        return pl.read_parquet(path)
    step = -(-rows // readers)
    with ThreadPoolExecutor(readers) as pool:
        return pl.concat(pool.map(lambda i: pl.scan_parquet(path).slice(i * step, step).collect(), range(readers)))
