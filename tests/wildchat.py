"""WildChat-1M-shaped Parquet shards, written from a prompt pool: the column layout of the public shards
(allenai/WildChat-1M, data/train-*.parquet), one conversation per row, the prompt as its first user turn."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

TURN = pl.Struct({"content": pl.Utf8, "country": pl.Utf8, "hashed_ip": pl.Utf8, "header": pl.Struct(
    {"accept-language": pl.Utf8, "user-agent": pl.Utf8}), "language": pl.Utf8, "redacted": pl.Boolean,
    "role": pl.Utf8, "state": pl.Utf8, "timestamp": pl.Datetime("us", "UTC"), "toxic": pl.Boolean,
    "turn_identifier": pl.Int64})
SCHEMA = {"conversation_hash": pl.Utf8, "model": pl.Utf8, "timestamp": pl.Datetime("us", "UTC"),
          "conversation": pl.List(TURN), "turn": pl.Int64, "language": pl.Utf8, "toxic": pl.Boolean,
          "redacted": pl.Boolean, "state": pl.Utf8, "country": pl.Utf8, "hashed_ip": pl.Utf8}


def _turn(role: str, content: str, n: int) -> dict:
    return {"content": content, "country": "Nowhere", "hashed_ip": "0" * 64,
            "header": {"accept-language": "en", "user-agent": "test"}, "language": "English", "redacted": False,
            "role": role, "state": None, "timestamp": datetime(2024, 1, 1), "toxic": False, "turn_identifier": n}


def conversation(*user_turns: str) -> list[dict]:
    """User turns, each followed by an assistant reply, as WildChat stores a conversation."""
    turns = []
    for i, text in enumerate(user_turns):
        turns += [_turn("user", text, i), _turn("assistant", f"(reply {i})", i)]
    return turns


def write_shard(path: Path, rows: list[tuple[str, list[dict]]]) -> Path:
    """``rows``: (conversation_hash, conversation) pairs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({
        "conversation_hash": [h for h, _ in rows], "model": ["gpt-4-0314"] * len(rows),
        "timestamp": [datetime(2024, 1, 1)] * len(rows), "conversation": [c for _, c in rows],
        "turn": [sum(t["role"] == "user" for t in c) for _, c in rows], "language": ["English"] * len(rows),
        "toxic": [False] * len(rows), "redacted": [False] * len(rows), "state": [None] * len(rows),
        "country": ["Nowhere"] * len(rows), "hashed_ip": ["0" * 64] * len(rows),
    }, schema=SCHEMA).write_parquet(path)
    return path


def shard_from_pool(pool: Path, path: Path) -> Path:
    """The prompts of a JSONL pool as a WildChat-shaped shard, ``id`` as ``conversation_hash``; every other
    conversation has a second user turn, which must not be read."""
    df = pl.read_ndjson(pool)
    return write_shard(path, [(row["id"], conversation(row["prompt"], *(["Thanks! Now shorter."] * (i % 2))))
                              for i, row in enumerate(df.iter_rows(named=True))])
