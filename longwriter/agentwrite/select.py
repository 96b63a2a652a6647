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
from longwriter.agentwrite.selector import Verdict, accepts, choose
from longwriter.agentwrite.stated_length import required_words
from longwriter.failures import Reason, failure_row, failures_frame, failures_of, reason_counts, write_failures
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
    per_lang: int | None = 4
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


def prefilter(pool: pl.DataFrame, cfg: SelectConfig) -> tuple[pl.DataFrame, dict[str, Any], pl.DataFrame]:
    """Normalise, deduplicate, detect language, filter by length. Returns the candidates, step counts and a
    ``Failures`` frame with a row for every prompt a step left out (its reason: duplicate, other_language,
    prompt_length, over_required_words).

    Ids are made unique first (a later pool reusing an id is a different prompt: suffixed -1, -2...), so every
    pool row is one id in the candidates or the failures. Normalising is NFKC then strip; two prompts are
    duplicates when they are equal after lowercasing and making every whitespace run one space (the first is
    kept). The steps run only where they can change something, so a million-row pool takes seconds.
    """
    counts: dict[str, Any] = {"read": pool.height}
    pool = pool.with_columns(unique_ids(pool["id"]))
    dropped: list[pl.DataFrame] = []
    # a prompt equal to an earlier one is a duplicate whatever its key: dropped before the costly steps
    first = first_distinct(pool["prompt"].hash(), pool["prompt"].filter)
    dropped.append(failures_of("select", Reason.DUPLICATE, pool["id"].filter(~first),
                               "the same prompt as an earlier pool row"))
    df = pool.filter(first)
    normalised = normalise(df["prompt"])
    df = df.with_columns(normalised["p"].alias("prompt"))
    first = first_of_normalised(normalised)
    del normalised
    dropped.append(failures_of("select", Reason.DUPLICATE, df["id"].filter(~first),
                               "the same prompt as an earlier pool row after normalising (case, whitespace, NFKC)"))
    df = df.filter(first)
    counts["after_dedup"] = df.height
    df = df.with_columns(languages(df["prompt"]).alias("lang"), pl.col("prompt").str.len_chars().alias("_chars"))
    counts["by_lang"] = {lang: int(n) for lang, n in
                         df.group_by("lang").len().sort("lang").iter_rows()}
    other = df.filter(~pl.col("lang").is_in(LANGS))
    dropped.append(failures_of("select", Reason.OTHER_LANGUAGE, other["id"],
                               "language " + other["lang"].fill_null("unknown") + f", not one of {', '.join(LANGS)}"))
    df = df.filter(pl.col("lang").is_in(LANGS))
    counts["after_lang"] = df.height
    fits = pl.col("_chars").is_between(cfg.min_prompt_chars, cfg.max_prompt_chars)
    out = df.filter(~fits)
    dropped.append(failures_of("select", Reason.PROMPT_LENGTH, out["id"],
                               out["_chars"].cast(pl.Utf8) + f" characters, outside min_prompt_chars "
                               f"{cfg.min_prompt_chars} .. max_prompt_chars {cfg.max_prompt_chars}"))
    df = df.filter(fits)
    counts["after_length"] = df.height
    df = df.with_columns(pl.coalesce(pl.col("required_words"), required_words(df["prompt"])).alias("required_words"))
    if cfg.max_required_words is not None:
        fits = pl.col("required_words").is_null() | (pl.col("required_words") <= cfg.max_required_words)
        out = df.filter(~fits)
        dropped.append(failures_of("select", Reason.OVER_REQUIRED_WORDS, out["id"],
                                   "states " + out["required_words"].cast(pl.Utf8)
                                   + f" words > max_required_words {cfg.max_required_words}"))
        df = df.filter(fits)
    counts["after_required_words"] = df.height
    return df.drop("_chars"), counts, pl.concat(dropped)


def verdict_failures(candidates: pl.DataFrame, chosen_ids: set[str], verdicts: list[Verdict],
                     cfg: SelectConfig) -> list[dict[str, Any]]:
    """A failures row for every candidate the selector's step did not choose: its verdict failed (the verdict's
    reason), it needs no long answer (``not_long``), or ``per_lang`` left it out (``left_out``: accepted after the
    quota was full, or never judged because the quota filled first)."""
    by_id = {v.id: v for v in verdicts}
    rows: list[dict[str, Any]] = []
    for cid, lang, required in candidates.select("id", "lang", "required_words").iter_rows():
        if cid in chosen_ids:
            continue
        v = by_id.get(cid)
        if v is None:
            rows.append(failure_row("select", Reason.LEFT_OUT, f"not judged: select.per_lang {cfg.per_lang} for "
                                    f"{lang} was filled first", instruction_id=cid))
        elif v.error is not None:
            rows.append(failure_row("select", v.reason, v.error, instruction_id=cid, attempts=v.attempts))
        elif accepts(v, cfg, required):
            rows.append(failure_row("select", Reason.LEFT_OUT, f"accepted after select.per_lang {cfg.per_lang} for "
                                    f"{lang} was full", instruction_id=cid, attempts=v.attempts))
        else:
            words = required if required is not None else v.estimated_words
            why = ("the selector says it needs no long answer" if not v.needs_long_answer else
                   f"{words} words ({'stated' if required is not None else 'estimated'}) < min_estimated_words "
                   f"{cfg.min_estimated_words}")
            rows.append(failure_row("select", Reason.NOT_LONG, why, instruction_id=cid, attempts=v.attempts))
    return rows


def run_select(output: str | Path, failures: str | Path, metrics: str | Path,
               cfg: SelectConfig, settings: ClientSettings, timings: str | Path | None = None) -> dict[str, Any]:
    """The whole stage: read pools, prefilter, ask the selector, write table, failures and metrics."""
    no_user_turn: list[dict] = []
    candidates, counts, filtered = prefilter(load_pools(list(cfg.pools), no_user_turn), cfg)

    async def work(llm: LLMClient) -> tuple[pl.DataFrame, list[Verdict]]:
        with progress_bar(candidates.height, "select: judged", "prompt") as bar:
            return await choose(llm, candidates, cfg, bar)

    (chosen, verdicts), stats = run_with_llm(cfg.selector, settings, work)
    failed = [v for v in verdicts if v.error is not None]
    write_checked(chosen, Instructions, output)
    rows = pl.concat([failures_frame(no_user_turn), filtered,
                      failures_frame(verdict_failures(candidates, set(chosen["id"]), verdicts, cfg))])
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
