"""The persistent response cache every stage shares.

A SQLite file in WAL mode, one row per completed call, committed as soon as the call returns: a stage killed
with ``kill -9`` loses only the calls in flight, and a rerun (or ``dvc repro -f``) replays every completed
call for free. Failed calls are never stored, so a rerun retries them. The cache lives outside DVC's outputs
on purpose: DVC deletes a stage's outputs before running it, which would defeat resuming.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any


def request_key(identity: str, payload: dict[str, Any]) -> str:
    """Stable hash of a model identity and everything that determines its answer."""
    blob = json.dumps({"model": identity, **payload}, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Key -> completed response (a JSON object). Safe to share between processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # autocommit mode: each put is its own transaction, durable when put() returns
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
            "response TEXT NOT NULL, created REAL NOT NULL)"
        )
        # Batch API jobs, recorded when their input file is uploaded and again when the batch exists, both
        # before polling: a rerun after a crash or Ctrl-C polls the same batch, never submits its calls twice
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (input_file_id TEXT PRIMARY KEY, batch_id TEXT, "
            "model TEXT NOT NULL, keys TEXT NOT NULL, created REAL NOT NULL, done INTEGER NOT NULL DEFAULT 0)"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, model: str, response: dict[str, Any]) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO responses (key, model, response, created) VALUES (?, ?, ?, ?)",
            (key, model, json.dumps(response, ensure_ascii=False), time.time()),
        )

    def batch_uploaded(self, input_file_id: str, model: str, keys: list[str]) -> None:
        self._db.execute("INSERT INTO batches (input_file_id, model, keys, created) VALUES (?, ?, ?, ?)",
                         (input_file_id, model, json.dumps(keys), time.time()))

    def batch_created(self, input_file_id: str, batch_id: str) -> None:
        self._db.execute("UPDATE batches SET batch_id = ? WHERE input_file_id = ?", (batch_id, input_file_id))

    def batch_finished(self, input_file_id: str) -> None:
        self._db.execute("UPDATE batches SET done = 1 WHERE input_file_id = ?", (input_file_id,))

    def batch_forget(self, input_file_id: str) -> None:
        self._db.execute("DELETE FROM batches WHERE input_file_id = ?", (input_file_id,))

    def open_batches(self, model: str) -> list[tuple[str, str | None, list[str]]]:
        """(input file id, batch id or None when creation was not confirmed, request keys) of ``model``'s
        batches not yet finished."""
        rows = self._db.execute("SELECT input_file_id, batch_id, keys FROM batches WHERE model = ? AND done = 0 "
                                "ORDER BY created", (model,)).fetchall()
        return [(f, b, json.loads(k)) for f, b, k in rows]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
