"""The selector's verdict: does a prompt need a long answer, and of about how many words? Asked through a JSON
schema, checked in code, re-asked on unusable output; candidates are asked in a seeded order, only until each
language has its quota."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from longwriter.failures import Reason
from longwriter.llm import LLMClient
from longwriter.llm.runner import run_each
from longwriter.llm.structured import Unusable, ask_until_usable, extract_json
from longwriter.prompts import render_prompt
from longwriter.schemas import LANGS, Instructions, empty

if TYPE_CHECKING:  # the config lives beside the stage that reads it; importing it here would be circular
    from longwriter.agentwrite.select import SelectConfig

SELECTOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "needs_long_answer": {"type": "boolean"},
        "estimated_words": {"type": "integer", "minimum": 0, "maximum": 100000},
    },
    "required": ["needs_long_answer", "estimated_words"],
    "additionalProperties": False,
}

_UNUSABLE = 'it must be one JSON object with "needs_long_answer" (true or false) and "estimated_words" (an integer)'


@dataclass
class Verdict:
    id: str
    needs_long_answer: bool | None = None
    estimated_words: int | None = None
    attempts: int = 0
    error: str | None = None
    reason: Reason | None = None  # why, when error is set


def parse_selection(text: str) -> tuple[bool, int]:
    """``(needs_long_answer, estimated_words)`` from the selector's reply, or ``Unusable``."""
    obj = extract_json(text)
    if (isinstance(obj, dict) and isinstance(obj.get("needs_long_answer"), bool)
            and isinstance(obj.get("estimated_words"), int) and not isinstance(obj["estimated_words"], bool)):
        return obj["needs_long_answer"], max(0, obj["estimated_words"])
    raise Unusable(_UNUSABLE)


async def ask_selector(llm: LLMClient, prompt_id: str, prompt: str, cfg: SelectConfig) -> Verdict:
    """Ask the selector whether ``prompt`` needs a long answer; re-ask on unusable output."""
    content = render_prompt("select", min_words=cfg.min_estimated_words, prompt=prompt)
    messages = [{"role": "user", "content": content}]
    outcome = await ask_until_usable(llm, messages, cfg.sampling, parse_selection, schema=SELECTOR_SCHEMA,
                                     max_attempts=cfg.max_attempts,
                                     describe=lambda _, reply: f"unusable selector output: {reply[:200]!r}")
    verdict = Verdict(prompt_id, attempts=outcome.attempts, error=outcome.error, reason=outcome.reason)
    if outcome.value is not None:
        verdict.needs_long_answer, verdict.estimated_words = outcome.value
    return verdict


def accepts(v: Verdict, cfg: SelectConfig, required: int | None) -> bool:
    if not v.needs_long_answer:
        return False
    # a prompt that states its length is judged by that length, not by the model's guess
    words = required if required is not None else v.estimated_words
    return (words or 0) >= cfg.min_estimated_words


async def choose(llm: LLMClient, candidates: pl.DataFrame, cfg: SelectConfig,
                 progress: Any = None) -> tuple[pl.DataFrame, list[Verdict]]:
    """Judge candidates in a seeded order until each language has ``per_lang`` accepted ones."""
    order = candidates.sort("id").sample(fraction=1.0, shuffle=True, seed=cfg.seed)
    verdicts: list[Verdict] = []
    chosen: list[pl.DataFrame] = []
    window = max(2, llm.settings.max_concurrency * 2)
    for lang in LANGS:
        pending = order.filter(pl.col("lang") == lang)
        accepted: list[int] = []
        estimates: dict[int, int | None] = {}
        for start in range(0, pending.height, window):
            if cfg.per_lang is not None and len(accepted) >= cfg.per_lang:
                break
            batch = pending.slice(start, window)
            results = await run_each(batch.iter_rows(named=True),
                                     lambda r: ask_selector(llm, r["id"], r["prompt"], cfg), bar=progress)
            for offset, (row, v) in enumerate(zip(batch.iter_rows(named=True), results, strict=True)):
                verdicts.append(v)
                if accepts(v, cfg, row["required_words"]):
                    accepted.append(start + offset)
                    estimates[start + offset] = v.estimated_words
        accepted = accepted[: cfg.per_lang] if cfg.per_lang is not None else accepted
        if accepted:
            chosen.append(pending[accepted].with_columns(
                pl.Series("estimated_words", [estimates[i] for i in accepted], dtype=pl.Int64)))
    if not chosen:
        return empty(Instructions), verdicts
    return pl.concat(chosen).select(empty(Instructions).columns).sort("lang", "id"), verdicts
