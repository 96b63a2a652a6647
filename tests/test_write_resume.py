"""``write`` on the embedded model, killed with ``kill -9`` mid-run and run again, writes the table an
uninterrupted run writes, text included: the rerun replays the completed calls from the response cache and
sends the calls in flight at the kill again, to a fresh server, whose replies must not depend on what the
killed run's server had evaluated (``longwriter.llm.llama_server.exact_prefix``)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import polars as pl
import yaml
from test_stage_faults import write_instructions

ROOT = Path(__file__).parent.parent


def _workspace(d: Path) -> None:
    d.mkdir()
    write_instructions(d / "in.parquet", 1)
    # one paragraph: the smallest plan with a call in flight after a completed one (its continuation)
    pl.DataFrame([{"instruction_id": "i0", "section": 1, "main_point": "How the story begins", "words": 30,
                   "attempts": 1}]).write_parquet(d / "plans.parquet")
    (d / "params.yaml").write_text(yaml.safe_dump({
        "llm": {"cache_dir": str(d / "cache")},  # one per run: the killed run never reads the other's replies
        "write": {"generator": {"provider": "embedded", "n_ctx": 1024, "penalty_last_n": 1024},
                  # 24 tokens are fewer than the 30 words planned, so each write of the paragraph gets its
                  # continuation call: a prompt that repeats the paragraph's prompt and reply, which a server
                  # reusing its KV state would evaluate from its last few tokens, and a fresh one (the rerun's)
                  # from the start. Seed 1 writes it complete in one attempt here: two calls in all
                  "min_budget_ratio": 1.0, "max_continuations": 1, "max_attempts": 2,
                  "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 24, "seed": 1,
                               "frequency_penalty": 1.5, "presence_penalty": 1.5}}}))


def _start(d: Path) -> subprocess.Popen:
    # its own process group: kill -9 takes the stage and its server down together
    return subprocess.Popen(
        [sys.executable, "-m", "stages.write", "--params", str(d / "params.yaml"), "--instructions",
         str(d / "in.parquet"), "--plans", str(d / "plans.parquet"), "--output", str(d / "sections.parquet"),
         "--failures", str(d / "fail.parquet"), "--metrics", str(d / "m.json"), "--timings", str(d / "t.json")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _cached(d: Path) -> int:
    path = d / "cache" / "responses.sqlite"
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(path, timeout=5)) as db:
            return db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
    except sqlite3.OperationalError:  # its table not created yet
        return 0


def _finish(proc: subprocess.Popen) -> None:
    try:
        out = proc.communicate(timeout=300)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out


def test_write_killed_mid_run_and_rerun_writes_what_an_uninterrupted_run_writes(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    _workspace(clean)
    _workspace(killed)
    _finish(_start(clean))
    calls = _cached(clean)
    assert calls >= 2  # the paragraph and its continuation

    proc = _start(killed)
    deadline = time.monotonic() + 240
    # kill while a continuation is in flight: a paragraph done, its continuation not (an odd count)
    while _cached(killed) % 2 == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the stage finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "sections.parquet").exists()
    assert 0 < _cached(killed) < calls
    _finish(_start(killed))

    a = pl.read_parquet(clean / "sections.parquet").drop("latency_s")
    b = pl.read_parquet(killed / "sections.parquet").drop("latency_s")
    assert a.height == 1
    assert b["text"].to_list() == a["text"].to_list()
    assert b.equals(a)
