"""The selector's verdict: does a prompt need a long answer, and of about how many words? Asked through a JSON
schema, checked in code, re-asked on unusable output; candidates are asked in a seeded order, only until each
language has its quota."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from longwriter.llm import LLMCallError, LLMClient
from longwriter.llm.structured import extract_json, reask
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

SELECTOR_PROMPT = """You sort user requests for a writing assistant.
Decide whether a good answer to the request below must be a long piece of writing of at least {min_words} \
words (an essay, story, report, guide, chapter...), or whether a short answer is enough (a fact, a number, \
a translation, a slogan, a short note).

Reply with a JSON object: {{"needs_long_answer": true or false, "estimated_words": the number of words a good \
answer needs}}.

Request:
<<<
{prompt}
>>>"""

_UNUSABLE = 'it must be one JSON object with "needs_long_answer" (true or false) and "estimated_words" (an integer)'


@dataclass
class Verdict:
    id: str
    needs_long_answer: bool | None = None
    estimated_words: int | None = None
    attempts: int = 0
    error: str | None = None
    reason: str | None = None  # a failures-table reason when error is set


async def ask_selector(llm: LLMClient, prompt_id: str, prompt: str, cfg: SelectConfig) -> Verdict:
    """Ask the selector whether ``prompt`` needs a long answer; re-ask on unusable output."""
    messages = [{"role": "user", "content": SELECTOR_PROMPT.format(min_words=cfg.min_estimated_words, prompt=prompt)}]
    verdict = Verdict(prompt_id)
    request, sampling = messages, cfg.sampling
    for sample in range(cfg.max_attempts):
        verdict.attempts = sample + 1
        try:
            reply = await llm.complete(request, sampling, schema=SELECTOR_SCHEMA, sample=sample)
        except LLMCallError as e:
            verdict.error, verdict.reason = str(e), "llm_error"
            return verdict
        obj = extract_json(reply.text)
        if (isinstance(obj, dict) and isinstance(obj.get("needs_long_answer"), bool)
                and isinstance(obj.get("estimated_words"), int) and not isinstance(obj["estimated_words"], bool)):
            verdict.needs_long_answer = obj["needs_long_answer"]
            verdict.estimated_words = max(0, obj["estimated_words"])
            verdict.error = verdict.reason = None
            return verdict
        verdict.error, verdict.reason = f"unusable selector output: {reply.text[:200]!r}", "unusable_output"
        request, sampling = reask(messages, cfg.sampling, reply.text, _UNUSABLE, attempt=sample + 1)
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
            results = await asyncio.gather(*(ask_selector(llm, r["id"], r["prompt"], cfg)
                                             for r in batch.iter_rows(named=True)))
            for offset, (row, v) in enumerate(zip(batch.iter_rows(named=True), results, strict=True)):
                verdicts.append(v)
                if accepts(v, cfg, row["required_words"]):
                    accepted.append(start + offset)
                    estimates[start + offset] = v.estimated_words
            if progress is not None:
                progress.update(batch.height)
        accepted = accepted[: cfg.per_lang] if cfg.per_lang is not None else accepted
        if accepted:
            chosen.append(pending[accepted].with_columns(
                pl.Series("estimated_words", [estimates[i] for i in accepted], dtype=pl.Int64)))
    if not chosen:
        return empty(Instructions), verdicts
    return pl.concat(chosen).select(empty(Instructions).columns).sort("lang", "id"), verdicts
