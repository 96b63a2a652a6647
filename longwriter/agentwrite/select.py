"""Stage ``select``: from raw instruction pools to the instructions AgentWrite will answer.

The cheap, deterministic part (read the pools, normalise, deduplicate, detect language, filter by length)
runs on whole pools with Polars (``pool``, ``dedup``, ``longwriter.language``, ``stated_length``). Only the
survivors are shown to the selector model (``selector``), in a seeded random order and only until each
language has its quota, so a million-row pool costs as many LLM calls as the quota needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.agentwrite.dedup import first_distinct, first_of_normalised, normalise, unique_ids
from longwriter.agentwrite.pool import load_pools
from longwriter.agentwrite.selector import Verdict, choose
from longwriter.agentwrite.stated_length import required_words
from longwriter.failures import failure_row, reason_counts, write_failures
from longwriter.files import write_metrics
from longwriter.language import languages
from longwriter.llm import ClientSettings, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.llm.runner import progress_bar
from longwriter.schemas import LANGS, Instructions, write_checked


@dataclass(frozen=True)
class SelectConfig:
    pools: tuple[str, ...] = ("data/pool/instructions.jsonl",)
    min_prompt_chars: int = 10
    max_prompt_chars: int = 4000
    # an instruction is kept when the selector says it needs a long answer of at least this many words
    min_estimated_words: int = 1200
    # instructions that state a longer required length than this are left out (laptop-sized runs)
    max_required_words: int | None = 1500
    per_lang: int | None = 3
    seed: int = 0
    max_attempts: int = 3
    selector: ModelSpec = field(default_factory=ModelSpec)
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, top_p=1.0, max_tokens=96))

    def __post_init__(self) -> None:
        # a bad value must stop the stage before it overwrites data/selected.parquet (per_lang -1 selected nothing)
        if self.per_lang is not None and self.per_lang < 1:
            raise ValueError(f"per_lang must be a positive integer or null (all accepted), got {self.per_lang}")
        if self.max_required_words is not None and self.max_required_words < 1:
            raise ValueError(f"max_required_words must be a positive integer or null, got {self.max_required_words}")
        if not 0 <= self.min_prompt_chars <= self.max_prompt_chars:
            raise ValueError(f"need 0 <= min_prompt_chars <= max_prompt_chars, got {self.min_prompt_chars} and "
                             f"{self.max_prompt_chars}")
        if self.min_estimated_words < 0 or self.max_attempts < 1:
            raise ValueError("min_estimated_words must be >= 0 and max_attempts >= 1")
        if not self.pools:
            raise ValueError("pools must name at least one file")


def prefilter(pool: pl.DataFrame, cfg: SelectConfig) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Normalise, deduplicate, detect language, filter by length. Returns the candidates and step counts.

    Normalising is NFKC then strip; two prompts are duplicates when they are equal after lowercasing and
    making every whitespace run one space (the first is kept). The steps run only where they can change
    something, so a million-row pool takes seconds.
    """
    counts: dict[str, Any] = {"read": pool.height}
    # a prompt equal to an earlier one is a duplicate whatever its key: dropped before the costly steps
    df = pool.filter(first_distinct(pool["prompt"].hash(), pool["prompt"].filter))
    normalised = normalise(df["prompt"])
    df = df.with_columns(normalised["p"].alias("prompt")).filter(first_of_normalised(normalised))
    del normalised
    # ids must stay unique across pools: a later pool reusing an id is a different prompt, so re-key it
    df = df.with_columns(unique_ids(df["id"]))
    counts["after_dedup"] = df.height
    df = df.with_columns(languages(df["prompt"]).alias("lang"), pl.col("prompt").str.len_chars().alias("_chars"))
    counts["by_lang"] = {lang: int(n) for lang, n in
                         df.group_by("lang").len().sort("lang").iter_rows()}
    df = df.filter(pl.col("lang").is_in(LANGS))
    counts["after_lang"] = df.height
    df = df.filter(pl.col("_chars").is_between(cfg.min_prompt_chars, cfg.max_prompt_chars))
    counts["after_length"] = df.height
    df = df.with_columns(pl.coalesce(pl.col("required_words"), required_words(df["prompt"])).alias("required_words"))
    if cfg.max_required_words is not None:
        df = df.filter(pl.col("required_words").is_null() | (pl.col("required_words") <= cfg.max_required_words))
    counts["after_required_words"] = df.height
    return df.drop("_chars"), counts


def run_select(output: str | Path, failures: str | Path, metrics: str | Path,
               cfg: SelectConfig, settings: ClientSettings, timings: str | Path | None = None) -> dict[str, Any]:
    """The whole stage: read pools, prefilter, ask the selector, write table, failures and metrics."""
    no_user_turn: list[dict] = []
    candidates, counts = prefilter(load_pools(list(cfg.pools), no_user_turn), cfg)

    async def work(llm: LLMClient) -> tuple[pl.DataFrame, list[Verdict]]:
        with progress_bar(candidates.height, "select: judged", "prompt") as bar:
            return await choose(llm, candidates, cfg, bar)

    (chosen, verdicts), stats = run_with_llm(cfg.selector, settings, work)
    failed = [v for v in verdicts if v.error is not None]
    write_checked(chosen, Instructions, output)
    rows = no_user_turn + [failure_row("select", v.reason, v.error, instruction_id=v.id, attempts=v.attempts)
                           for v in failed]
    write_failures(rows, failures)
    counts |= {
        "no_user_turn": len(no_user_turn),
        "judged": len(verdicts),
        "judged_long": sum(1 for v in verdicts if v.needs_long_answer),
        "judge_failed": len(failed),
        "selected": chosen.height,
        "selected_by_lang": {lang: int((chosen["lang"] == lang).sum()) for lang in LANGS},
        "failures": reason_counts(rows),
        "llm": stats.as_metrics(),
    }
    write_metrics(counts, metrics, timings)
    return counts
