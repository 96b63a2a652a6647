"""Reading inputs with precise errors, and writing outputs atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest

from longwriter.errors import InputError
from longwriter.files import atomic_path, read_jsonl, read_table, write_json, write_table


def hidden_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def read_error(path: Path) -> InputError:
    reader = read_jsonl if path.suffix == ".jsonl" else read_table
    with pytest.raises(InputError) as info:
        reader(path)
    assert info.value.path == str(path)
    return info.value


# --- read_jsonl -----------------------------------------------------------------------------------------

def test_read_jsonl_rows_are_line_numbers_blank_lines_counted(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "a", "n": 1}\n\n{"prompt": "b", "n": 2}\n', encoding="utf-8")
    df = read_jsonl(path)
    assert df["_row"].to_list() == [1, 3]
    assert df["prompt"].to_list() == ["a", "b"]
    assert df["n"].to_list() == [1, 2]
    assert df.schema["_row"] == pl.Int64


def test_read_jsonl_whitespace_only_lines_and_no_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text('  \n{"prompt": "中文"}\r\n\t\n{"prompt": "x"}', encoding="utf-8")
    df = read_jsonl(path)
    assert df["_row"].to_list() == [2, 4]
    assert df["prompt"].to_list() == ["中文", "x"]


def test_read_jsonl_missing_keys_become_null(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "a", "id": "1"}\n{"prompt": "b"}\n', encoding="utf-8")
    df = read_jsonl(path)
    assert df["id"].to_list() == ["1", None]


def test_read_jsonl_malformed_json(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",}\n{"prompt": "d"}\n', encoding="utf-8")
    err = read_error(path)
    assert err.row == 3
    assert "malformed JSON" in str(err)
    assert "row 3" in str(err)


def test_read_jsonl_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "\xff\xfe"}\n{"prompt": "c"}\n')
    err = read_error(path)
    assert err.row == 2
    assert "UTF-8" in str(err)


@pytest.mark.parametrize(("line", "kind"), [("[1, 2]", "list"), ('"text"', "str"), ("42", "int")])
def test_read_jsonl_non_object_line(tmp_path: Path, line: str, kind: str) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "a"}\n' + line + "\n", encoding="utf-8")
    err = read_error(path)
    assert err.row == 2
    assert "expected a JSON object" in str(err)
    assert kind in str(err)


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank-lines"])
def test_read_jsonl_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text(content, encoding="utf-8")
    err = read_error(path)
    assert "empty" in str(err)
    assert err.row is None


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.parquet"])
def test_missing_file(tmp_path: Path, name: str) -> None:
    err = read_error(tmp_path / name)
    assert "file not found" in str(err)


def test_read_jsonl_incompatible_nested_types_name_column_and_row(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text('{"prompt": "a", "meta": [1]}\n\n{"prompt": "b", "meta": {"k": 1}}\n', encoding="utf-8")
    err = read_error(path)
    assert err.column == "meta"
    assert err.row == 3
    assert "column 'meta'" in str(err)
    assert "object" in str(err) and "array" in str(err)


def test_read_jsonl_int_and_float_share_a_column(tmp_path: Path) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text('{"x": 1}\n{"x": 1.5}\n', encoding="utf-8")
    assert read_jsonl(path)["x"].to_list() == [1.0, 1.5]


@pytest.mark.parametrize(("first", "second"), [('"two"', "2"), ("2", '"two"'), ("true", "2")],
                         ids=["str-then-int", "int-then-str", "bool-then-int"])
def test_read_jsonl_mixed_scalar_types_raise(tmp_path: Path, first: str, second: str) -> None:
    path = tmp_path / "pool.jsonl"
    path.write_text(f'{{"prompt": "a", "x": {first}}}\n{{"prompt": "b", "x": {second}}}\n', encoding="utf-8")
    err = read_error(path)
    assert err.column == "x"
    assert err.row == 2


# --- read_table -----------------------------------------------------------------------------------------

def test_read_table_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    df = pl.DataFrame({"id": ["a", "b", "c"], "n": [1, 2, 3]})
    write_table(df, path)
    out = read_table(path)
    assert out.columns == ["_row", "id", "n"]
    assert out["_row"].to_list() == [1, 2, 3]
    assert out.schema["_row"] == pl.Int64
    assert out.drop("_row").equals(df)


def test_read_table_dispatches_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"a": 1}\n', encoding="utf-8")
    out = read_table(path)
    assert out["_row"].to_list() == [1]
    assert out["a"].to_list() == [1]


def test_read_table_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n", encoding="utf-8")
    err = read_error(path)
    assert "unsupported file type '.csv'" in str(err)


def test_read_table_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    path.write_bytes(bytes(range(256)) * 4)
    err = read_error(path)
    assert "not a readable Parquet" in str(err)


def test_read_table_truncated_parquet(tmp_path: Path) -> None:
    good = tmp_path / "good.parquet"
    pl.DataFrame({"a": list(range(100))}).write_parquet(good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[:-20])
    err = read_error(bad)
    assert "not a readable Parquet" in str(err)


# --- atomic writes --------------------------------------------------------------------------------------

def test_atomic_path_success_replaces_target(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".out.txt.")
        tmp.write_text("new", encoding="utf-8")
        assert target.read_text(encoding="utf-8") == "old"  # not visible until the block ends
    assert target.read_text(encoding="utf-8") == "new"
    assert hidden_files(tmp_path) == []


def test_atomic_path_new_file_appears_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "out.txt"
    with atomic_path(target) as tmp:
        tmp.write_text("x", encoding="utf-8")
        assert not target.exists()
    assert target.read_text(encoding="utf-8") == "x"
    assert hidden_files(target.parent) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_atomic_path_failure_keeps_old_content(tmp_path: Path, exc: BaseException) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(type(exc)), atomic_path(target) as tmp:
        tmp.write_text("half-written", encoding="utf-8")
        raise exc
    assert target.read_text(encoding="utf-8") == "old"
    assert hidden_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_path_failure_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_path(target):
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_write_json_content(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json({"b": 2, "a": "中文"}, target)
    text = target.read_text(encoding="utf-8")
    assert text == '{\n  "a": "中文",\n  "b": 2\n}\n'
    assert json.loads(text) == {"a": "中文", "b": 2}
    assert hidden_files(tmp_path) == []


def test_write_json_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    write_json({"v": 1}, target)
    with pytest.raises(TypeError):
        write_json({"v": object()}, target)
    assert json.loads(target.read_text(encoding="utf-8")) == {"v": 1}
    assert hidden_files(tmp_path) == []


def test_write_table_failure_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "t.parquet"
    write_table(pl.DataFrame({"a": [1, 2]}), target)
    with pytest.raises(pl.exceptions.PolarsError):
        write_table(pl.DataFrame({"a": [object()]}, schema={"a": pl.Object}), target)
    assert pl.read_parquet(target)["a"].to_list() == [1, 2]
    assert hidden_files(tmp_path) == []


def test_write_table_failure_on_new_path_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "t.parquet"
    with pytest.raises(pl.exceptions.PolarsError):
        write_table(pl.DataFrame({"a": [object()]}, schema={"a": pl.Object}), target)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_respects_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        plain = tmp_path / "plain.json"
        plain.write_text("{}\n", encoding="utf-8")
        target = tmp_path / "metrics.json"
        write_json({}, target)
    finally:
        os.umask(old)
    assert plain.stat().st_mode & 0o777 == 0o644
    assert target.stat().st_mode & 0o777 == 0o644
