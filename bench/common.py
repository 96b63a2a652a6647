"""Helpers shared by the load-server benchmarks (write_makespan.py, rerun_cost.py).

The load server is ``tests/fake_openai.py`` in script mode, in its own process so that it never shares the
GIL with the client under test. Its base URL is the first line it prints; every request it answers is
appended to a JSONL log, which is how the benchmarks count the requests that reached it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

ROOT = Path(__file__).resolve().parent.parent
FAKE_SERVER = ROOT / "tests" / "fake_openai.py"
RESULTS = ROOT / "bench" / "results"


def approx_tokens(n_words: int) -> int:
    """The load server's words-to-tokens rule (tests/fake_openai.py: approx_tokens)."""
    return (4 * n_words + 2) // 3


def served_words(words: int, max_tokens: int | None) -> int:
    """Words the load server answers a plain (schema-less) request with: ``words`` unless ``max_tokens`` cuts
    them (tests/fake_openai.py: FakeOpenAIServer._completion)."""
    if max_tokens is not None and words * 4 / 3 > max_tokens:
        return int(max_tokens * 0.75)
    return words


def service_time(completion_tokens: int, base_latency_s: float, tokens_per_s: float | None) -> float:
    """Seconds one successful request holds a server slot (the server's latency model)."""
    return base_latency_s + (completion_tokens / tokens_per_s if tokens_per_s else 0.0)


class LoadServer:
    """``tests/fake_openai.py`` as a subprocess on 127.0.0.1; use as a context manager.

    Stopped with SIGTERM (then SIGKILL) on exit, also when the block raises or on Ctrl-C.
    """

    def __init__(self, log_path: Path, *, words: int = 120, latency_s: float = 0.0,
                 tokens_per_s: float | None = None, capacity: int | None = None, seed: int = 0,
                 backlog: int = 128, start_timeout_s: float = 30.0,
                 prefix_cache: tuple[int, int, int] | None = None) -> None:
        self.log_path = Path(log_path)
        self.args = [sys.executable, str(FAKE_SERVER), "--port", "0", "--seed", str(seed), "--words", str(words),
                     "--latency", repr(float(latency_s)), "--log", str(self.log_path),
                     # a real inference server listens with a deep backlog; the fake's default of 5 drops the
                     # SYNs of a burst of connects, which then stall ~1 s (TCP's SYN retransmit)
                     "--backlog", str(backlog)]
        if tokens_per_s:
            self.args += ["--tokens-per-s", repr(float(tokens_per_s))]
        if capacity:
            self.args += ["--capacity", str(capacity)]
        if prefix_cache:  # (step, min, block): report cached prompt tokens (FakeOpenAIServer's prefix_cache)
            step, least, block = prefix_cache
            self.args += ["--prefix-cache", "--prefix-cache-step", str(step), "--prefix-cache-min", str(least),
                          "--prefix-cache-block", str(block)]
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> LoadServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT)
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.start_timeout_s)
        url = line[0].strip() if line else ""
        if not url.startswith("http://127.0.0.1:"):
            err = ""
            with contextlib.suppress(Exception):
                self.stop()
                err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"load server did not start (first line {url!r}): {err[-2000:]}")
        self.base_url = url
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server process has used so far (Linux /proc)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def entries(self) -> list[dict[str, Any]]:
        """Every request the server logged so far (one dict per request, in completion order)."""
        if not self.log_path.exists():
            return []
        with self.log_path.open(encoding="utf-8") as f:
            return [json.loads(s) for s in f if s.strip()]

    def count(self) -> int:
        return len(self.entries())


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so ``with LoadServer(...)`` blocks clean up as on Ctrl-C."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass(frozen=True)
class Workload:
    """Instructions and plans written as Parquet tables valid for ``Instructions`` and ``Plans``."""

    instructions: Path
    plans: Path
    budgets: dict[str, list[int]]  # instruction id -> section budgets, in section order

    @property
    def sections(self) -> int:
        return sum(len(b) for b in self.budgets.values())


def write_workload(directory: Path, n: int, *, min_sections: int, max_sections: int, min_budget: int,
                   max_budget: int, seed: int = 0) -> Workload:
    """``n`` instructions with ``min_sections``..``max_sections`` planned sections each (budgets drawn from
    ``min_budget``..``max_budget`` words), all from ``random.Random(seed)``."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    budgets: dict[str, list[int]] = {}
    for k in range(n):
        budgets[f"b{k:05d}"] = [rng.randint(min_budget, max_budget)
                                for _ in range(rng.randint(min_sections, max_sections))]
    ids = list(budgets)
    instructions = pl.DataFrame(
        {"id": ids,
         "prompt": [f"Write a {sum(budgets[i])}-word story number {k} about a lighthouse keeper."
                    for k, i in enumerate(ids)],
         "lang": ["en"] * n, "source": ["bench"] * n, "required_words": [sum(budgets[i]) for i in ids],
         "estimated_words": [None] * n},
        schema={"id": pl.Utf8, "prompt": pl.Utf8, "lang": pl.Utf8, "source": pl.Utf8, "required_words": pl.Int64,
                "estimated_words": pl.Int64})
    plans = pl.DataFrame(
        [{"instruction_id": i, "section": s, "main_point": f"Part {s} of the story: the keeper's day {s}",
          "words": w, "attempts": 1} for i in ids for s, w in enumerate(budgets[i], start=1)],
        schema={"instruction_id": pl.Utf8, "section": pl.Int64, "main_point": pl.Utf8, "words": pl.Int64,
                "attempts": pl.Int64})
    out = Workload(directory / "instructions.parquet", directory / "plans.parquet", budgets)
    instructions.write_parquet(out.instructions)
    plans.write_parquet(out.plans)
    return out


def section_max_tokens(budget: int, tokens_per_word: float, cap: int) -> int:
    """The write stage's per-call max_tokens (longwriter.agentwrite.write.sampling_for)."""
    return min(cap, math.ceil(budget * tokens_per_word) + 64)


def save_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain right-aligned text table."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


class Timer:
    def __enter__(self) -> Timer:
        self.started = time.perf_counter()
        self.wall_started = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started
        self.wall_ended = time.time()
