"""Models answering length-asking requests (the benchmarks' and the preference pairs'), through the shared client
and cache, each request's ``max_tokens`` sized from the words it asks for (``LengthCap``).

A request is sent as the user's only message, as the paper's evaluation does. Its ``max_tokens`` is the least of
three: the request's lossless cap, ``ceil(cap_ratio x required words x tokens_per_word) + cap_margin`` (S_l is 0
from 4x the required words on, so with ``cap_ratio`` 4 nothing a longer answer could score is lost), the
sampling's ``max_tokens`` (a ceiling; the paper: 32,768) and what fits the backend's context after the prompt,
where that is known. Each answer records whether its limit was lossless and whether it was below even the words
asked, and how much of it was written before it fell into a loop (``longwriter.repetition``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from longwriter.failures import Reason, failure_row
from longwriter.llm import CallStats, ClientSettings, LLMCallError, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.llm.runner import run_each
from longwriter.repetition import degeneration
from longwriter.schemas import Answers, empty
from longwriter.wordcount import count_words

# chat-template tokens around each message, and a little slack: the bound must never undershoot
_TEMPLATE_TOKENS_PER_MESSAGE = 16
_SLACK_TOKENS = 32
# S_l (longwriter.scoring.length_score) is 0 from this many times the required words on: a limit that lets
# an answer reach it loses nothing any longer answer could score
LOSSLESS_RATIO = 4.0


def default_tokens_per_word() -> dict[str, float]:
    # Upper bounds, so that a cap computed from them never cuts an answer short of its words. Words are the
    # paper's (one per CJK ideograph, one per Latin-letter word); punctuation, digits, markdown and line breaks
    # cost tokens but count no words. The SmolLM2 tokenizer (the embedded and trained models) measured 1.0-1.7
    # tokens per word on the project's English prompts and 2.2-2.3 on markdown-heavy English with digits
    # (README.md: 2.28), so en: 2.5. Chinese: 2.0-2.4 per counted character, punctuation and markdown included;
    # a byte-level BPE (GPT-2/SmolLM2 style) or a byte-fallback one spends at most 3 tokens on a CJK character
    # (its 3 UTF-8 bytes), and tokenizers trained on Chinese (GLM-4, Qwen, Llama 3, GPT-4o) about 0.7-1.5, so
    # zh: 3.0. A language without an entry ("other") takes the largest.
    return {"en": 2.5, "zh": 3.0}


@dataclass(frozen=True)
class LengthCap:
    """Per-request token limits from the words a request asks for (``EvalConfig``'s cap fields)."""

    ratio: float = LOSSLESS_RATIO
    tokens_per_word: float | dict[str, float] = field(default_factory=default_tokens_per_word)
    margin: int = 64

    def per_word(self, lang: str) -> float:
        if isinstance(self.tokens_per_word, dict):
            return self.tokens_per_word.get(lang, max(self.tokens_per_word.values()))
        return self.tokens_per_word

    def tokens(self, required: int, lang: str, ratio: float | None = None) -> int:
        """Tokens for ``ratio`` (default: the cap's) x ``required`` words in ``lang``, margin included."""
        return math.ceil((self.ratio if ratio is None else ratio) * required * self.per_word(lang)) + self.margin


@dataclass(frozen=True)
class EvalModel:
    """A model under test: a name for metrics and tables, and how to reach it."""

    name: str
    spec: ModelSpec = field(default_factory=ModelSpec)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"model name {self.name!r} must be letters, digits, '-' or '_' (it names metrics)")


def fit_max_tokens(spec: ModelSpec, messages: list[dict[str, str]], wanted: int) -> int:
    """``wanted`` capped so the answer fits the context after the prompt (UTF-8 bytes bound its tokens)."""
    context = spec.context_tokens()
    if context is None:
        return wanted
    prompt_bound = sum(len(m["content"].encode()) + _TEMPLATE_TOKENS_PER_MESSAGE for m in messages)
    return max(1, min(wanted, context - prompt_bound - _SLACK_TOKENS))


def answer_row(model: str, request: dict[str, Any], sample: int, text: str, finish_reason: str, max_tokens: int,
               prompt_tokens: int, completion_tokens: int, latency_s: float, cap: LengthCap | None = None
               ) -> dict[str, Any]:
    """One ``Answers`` row. ``cap`` (default: ``LengthCap()``) tells whether ``max_tokens`` was lossless (enough
    for 4x the required words) and whether it was below the words asked (1x)."""
    cap = cap or LengthCap()
    required, lang = request["required"], request["lang"]
    effective, degenerate = degeneration(text)
    return {"model": model, "index": request["index"], "sample": sample, "prompt": request["prompt"],
            "type": request["type"], "lang": lang, "required": required,
            "bucket": request["bucket"], "text": text, "words": count_words(text), "finish_reason": finish_reason,
            "max_tokens": max_tokens, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "latency_s": latency_s, "cap_lossless": max_tokens >= cap.tokens(required, lang, LOSSLESS_RATIO),
            "cap_below_ask": max_tokens < cap.tokens(required, lang, 1.0), "effective_words": effective,
            "degenerate": degenerate}


def request_limit(spec: ModelSpec, request: dict[str, Any], ceiling: int, cap: LengthCap | None) -> int:
    """A request's max_tokens: its cap (when there is one), the ceiling and the context, whichever is least."""
    wanted = ceiling if cap is None else min(ceiling, cap.tokens(request["required"], request["lang"]))
    return fit_max_tokens(spec, [{"role": "user", "content": request["prompt"]}], wanted)


def generate_answers(bench: pl.DataFrame, models: tuple[EvalModel, ...], sampling: Sampling,
                     settings: ClientSettings, stage: str, samples: int = 1, cap: LengthCap | None = None
                     ) -> tuple[pl.DataFrame, list[dict[str, Any]], dict[str, CallStats]]:
    """Every model answers every request ``samples`` times. Returns answers, failure rows, stats per model.

    ``cap``: each request's max_tokens is at most its ``cap.tokens(required, lang)`` (None: only the ceiling
    ``sampling.max_tokens`` and the context bound it)."""
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    stats: dict[str, CallStats] = {}
    requests = list(bench.iter_rows(named=True))
    for model in models:
        async def work(llm: LLMClient, model: EvalModel = model) -> list[dict[str, Any]]:
            async def one(job: tuple[dict[str, Any], int]) -> dict[str, Any]:
                request, sample = job
                messages = [{"role": "user", "content": request["prompt"]}]
                limit = request_limit(model.spec, request, sampling.max_tokens, cap)
                capped = dataclasses.replace(sampling, max_tokens=limit)
                try:
                    c = await llm.complete(messages, capped, sample=sample)
                    return answer_row(model.name, request, sample, c.text, c.finish_reason, limit,
                                      c.prompt_tokens, c.completion_tokens, c.latency_s, cap)
                except LLMCallError as e:
                    return failure_row(stage, Reason.LLM_ERROR, str(e),
                                       instruction_id=f"{model.name}/{request['index']}", section=sample,
                                       attempts=e.attempts)
            return await run_each([(r, s) for r in requests for s in range(samples)], one,
                                  desc=f"{stage} {model.name}", unit="answer",
                                  postfix=lambda: {"tokens": llm.stats.completion_tokens})

        results, stats[model.name] = run_with_llm(model.spec, settings, work)
        for r in results:
            (failures if "error" in r else rows).append(r)
    answers = pl.DataFrame(rows, schema=empty(Answers).schema).sort("model", "index", "sample")
    return answers, failures, stats
