"""The models under test answering benchmark requests (ruler, longbench), through the shared client and cache.

A request is sent as the user's only message, as the paper's evaluation does. ``max_tokens`` is the param's
value (the paper: 32,768) capped so that prompt and answer fit the backend's context, where that is known.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from tqdm import tqdm

from longwriter.llm import CallStats, ClientSettings, LLMCallError, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.schemas import Answers, empty
from longwriter.wordcount import count_words

# chat-template tokens around each message, and a little slack: the bound must never undershoot
_TEMPLATE_TOKENS_PER_MESSAGE = 16
_SLACK_TOKENS = 32


@dataclass(frozen=True)
class EvalModel:
    """A model under test: a name for metrics and tables, and how to reach it."""

    name: str
    spec: ModelSpec = field(default_factory=ModelSpec)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"model name {self.name!r} must be letters, digits, '-' or '_' (it names metrics)")


@dataclass(frozen=True)
class EvalConfig:
    """The ``eval`` section: which models are evaluated and how they sample."""

    models: tuple[EvalModel, ...] = (EvalModel("embedded"),)
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.5, top_p=1.0, max_tokens=32768))

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if not names:
            raise ValueError("list at least one model")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")


def fit_max_tokens(spec: ModelSpec, messages: list[dict[str, str]], wanted: int) -> int:
    """``wanted`` capped so the answer fits the context after the prompt (UTF-8 bytes bound its tokens)."""
    context = spec.context_tokens()
    if context is None:
        return wanted
    prompt_bound = sum(len(m["content"].encode()) + _TEMPLATE_TOKENS_PER_MESSAGE for m in messages)
    return max(1, min(wanted, context - prompt_bound - _SLACK_TOKENS))


def answer_row(model: str, request: dict[str, Any], sample: int, text: str, finish_reason: str, max_tokens: int,
               prompt_tokens: int, completion_tokens: int, latency_s: float) -> dict[str, Any]:
    """One ``Answers`` row."""
    return {"model": model, "index": request["index"], "sample": sample, "prompt": request["prompt"],
            "type": request["type"], "lang": request["lang"], "required": request["required"],
            "bucket": request["bucket"], "text": text, "words": count_words(text), "finish_reason": finish_reason,
            "max_tokens": max_tokens, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "latency_s": latency_s}


def generate_answers(bench: pl.DataFrame, models: tuple[EvalModel, ...], sampling: Sampling,
                     settings: ClientSettings, stage: str, samples: int = 1
                     ) -> tuple[pl.DataFrame, list[dict[str, Any]], dict[str, CallStats]]:
    """Every model answers every request ``samples`` times. Returns answers, failure rows, stats per model."""
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    stats: dict[str, CallStats] = {}
    requests = list(bench.iter_rows(named=True))
    for model in models:
        async def work(llm: LLMClient, model: EvalModel = model) -> list[dict[str, Any]]:
            with tqdm(total=len(requests) * samples, desc=f"{stage} {model.name}", unit="answer",
                      disable=None) as bar:
                async def one(request: dict[str, Any], sample: int) -> dict[str, Any]:
                    messages = [{"role": "user", "content": request["prompt"]}]
                    limit = fit_max_tokens(model.spec, messages, sampling.max_tokens)
                    capped = dataclasses.replace(sampling, max_tokens=limit)
                    try:
                        c = await llm.complete(messages, capped, sample=sample)
                        out = answer_row(model.name, request, sample, c.text, c.finish_reason, limit,
                                         c.prompt_tokens, c.completion_tokens, c.latency_s)
                    except LLMCallError as e:
                        out = {"stage": stage, "instruction_id": f"{model.name}/{request['index']}",
                               "section": sample, "attempts": e.attempts, "error": str(e)}
                    bar.update(1)
                    bar.set_postfix(tokens=llm.stats.completion_tokens, refresh=False)
                    return out
                return await asyncio.gather(*(one(r, s) for r in requests for s in range(samples)))

        results, stats[model.name] = run_with_llm(model.spec, settings, work)
        for r in results:
            (failures if "error" in r else rows).append(r)
    answers = pl.DataFrame(rows, schema=empty(Answers).schema).sort("model", "index", "sample")
    return answers, failures, stats
