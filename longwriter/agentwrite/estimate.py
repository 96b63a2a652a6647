"""What a write run will cost before it is paid for: prompt, cached and completion tokens, and dollars.

    python -m stages.write --estimate --instructions data/selected.parquet --plans data/plans.parquet \\
        [--estimate-json estimate.json]

Sequential AgentWrite re-sends the instruction, the plan and every earlier paragraph with each paragraph, so its
prompt tokens grow with the square of the length; a backend that caches prompt prefixes bills (OpenAI) or
computes (vLLM) the repeated part for less. This module estimates both modes, sequential and parallel, for the
plans at hand and the ``write`` params, without calling the model:

* **Prompts**: each paragraph's prompt is rendered by the stage's own ``section_messages``, with every earlier
  paragraph taken to come out at exactly its word budget (a stand-in text of that many words, distinct words so
  that no two histories look alike), so ``write.history_words`` bounds the re-sent text as it does in a run.
  One call per paragraph: no continuations, rewrites or retries (a run that needs them pays more).
* **Tokens**, without a tokenizer: ``tokens_per_word`` (default 4/3, the common rule of 100 tokens per 75
  English words; not ``write.tokens_per_word``, which sizes each call's ``max_tokens`` and is meant as a
  ceiling) per unit of text, a unit being a whitespace-separated piece, each CJK ideograph one unit of its own.
  A prompt's tokens are ceil(units x tokens_per_word); a paragraph's completion tokens are its budget's, capped
  by the call's ``max_tokens`` as the stage sets it.
* **Cached prompt tokens** model a backend with a prefix cache that still holds the prompts sent before (OpenAI
  keeps a prefix 5 to 10 minutes after its last use): a prompt's cached part is the longest run of whole units
  it shares, from its start, with the instruction's previous prompt (sequential: the instruction, the plan and
  the text up to the paragraph before last, or only up to the history's start once ``history_words`` cuts it;
  parallel: the instruction and the plan), and an instruction's first prompt shares the template's opening with
  the first prompt of the instruction before it. Rounded as the backend rounds: OpenAI caches a prefix of at
  least 1,024 tokens, in steps of 128 (the defaults ``min_cached_tokens`` and ``cached_step_tokens``); vLLM's
  prefix cache works in blocks of 16 tokens from any length (16 and 16).
* **Dollars** from the generator spec's prices: uncached prompt tokens at ``price_input_per_mtok``, cached ones at
  ``price_cached_input_per_mtok`` (null: the input price), completion tokens at ``price_output_per_mtok``, less
  ``batch_discount`` with ``batch: true``; ``usd_without_prefix_cache`` prices every prompt token at the input
  price. Null when the spec has no input or output price, or is not an ``openai`` provider (the embedded and
  local backends bill nothing).

Checked against real write runs on the fake server with its prefix cache on (tests/test_write_cost.py allows
1 % on prompt and completion tokens and 2 % on cached ones; bench/write_cost.py, 10,000-word plans, targets 5 %):
equal to the token there, since the fake counts 4/3 tokens per word and answers each paragraph at its budget. So
they check the prompts, the history window and the cache model; against a real API the tokenizer (set
``tokens_per_word`` for the model's, e.g. from a sample of its usage) and the continuations are the error. The
estimate renders every prompt: about 20 ms per 10,000-word instruction on one core.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Literal

from longwriter.agentwrite.write import (
    WriteConfig,
    instruction_order,
    read_inputs,
    sampling_for,
    section_messages,
)

Mode = Literal["sequential", "parallel"]
MODES: tuple[Mode, Mode] = ("sequential", "parallel")
# the common rule of thumb for English: 100 tokens per 75 words (the fake server counts the same)
TOKENS_PER_WORD = 4 / 3
# OpenAI's prompt caching: prefixes of at least 1,024 tokens, cached in steps of 128
MIN_CACHED_TOKENS = 1024
CACHED_STEP_TOKENS = 128

_CJK = re.compile(r"[\u4e00-\u9fff]")
_SPACE = re.compile(r"\s")


def units(text: str) -> int:
    """Whitespace-separated pieces of ``text``, each CJK ideograph counted as a piece of its own."""
    cjk = len(_CJK.findall(text))
    return cjk + len((_CJK.sub(" ", text) if cjk else text).split())


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix of ``a`` and ``b`` (binary search over C-speed slice compares)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def shared_units(a: str, b: str) -> int:
    """Units of the longest prefix ``a`` and ``b`` share in whole units: a piece cut by the first difference
    (``"10"`` against ``"1"``, or ``"word"`` against ``"words"``) is not shared."""
    k = _common_prefix(a, b)
    if k == len(a) == len(b):
        return units(a)

    def ends(s: str) -> bool:
        return k == len(s) or s[k].isspace() or bool(_CJK.match(s[k]))
    if not (ends(a) and ends(b)) and k and not (a[k - 1].isspace() or _CJK.match(a[k - 1])):
        cut = max((m.start() for m in _SPACE.finditer(a, 0, k)), default=-1)
        k = cut + 1
    return units(a[:k])


def _stand_in(paragraph: int, words: int, lang: str) -> str:
    """A paragraph of ``words`` units, distinct from every other stand-in (so no two histories share a prefix
    beyond their common paragraphs): Latin pieces, or CJK ideographs for Chinese (whose histories
    ``history_words`` cuts by characters, as the stage does)."""
    if lang == "zh":
        start = paragraph * 997
        return "".join(chr(0x4E00 + (start + i) % 20_000) for i in range(words)) + "。"
    return " ".join(f"p{paragraph}w{i}" for i in range(words)) + "."


def _tokens(n_units: int, tokens_per_word: float) -> int:
    return math.ceil(n_units * tokens_per_word - 1e-9)


def _round_cached(tokens: int, prompt_tokens: int, min_cached: int, step: int) -> int:
    rounded = tokens // step * step
    return min(rounded, prompt_tokens) if rounded >= min_cached else 0


def _content(messages: list[dict[str, str]]) -> str:
    return "\n".join(m["content"] for m in messages)


def estimate_mode(prompts: dict[str, str], langs: dict[str, str], plans: dict[str, list[tuple[str, int]]],
                  cfg: WriteConfig, mode: Mode, *, tokens_per_word: float = TOKENS_PER_WORD,
                  min_cached_tokens: int = MIN_CACHED_TOKENS,
                  cached_step_tokens: int = CACHED_STEP_TOKENS) -> dict[str, int]:
    """Calls, prompt, cached prompt and completion tokens of writing ``plans`` in ``mode``."""
    mcfg = dataclasses.replace(cfg, mode=mode)
    calls = prompt_tokens = cached = completion = 0
    previous_first = ""  # the first prompt of the instruction before
    for iid in instruction_order(plans):
        plan, lang = plans[iid], langs.get(iid, "en")
        written: list[str] = []
        before = previous_first
        for n, (_, budget) in enumerate(plan, start=1):
            text = _content(section_messages(prompts[iid], plan, n, written, mcfg))
            p_tokens = _tokens(units(text), tokens_per_word)
            shared = _tokens(shared_units(text, before), tokens_per_word) if before else 0
            cached += _round_cached(shared, p_tokens, min_cached_tokens, cached_step_tokens)
            prompt_tokens += p_tokens
            calls += 1
            max_tokens = sampling_for(budget, mcfg).max_tokens
            completion += min(_tokens(budget, tokens_per_word), max_tokens)
            if n == 1:
                previous_first = text
            before = text
            if mode == "sequential":
                written.append(_stand_in(n, budget, lang))
    return {"calls": calls, "prompt_tokens": prompt_tokens, "cached_prompt_tokens": cached,
            "completion_tokens": completion}


def _usd(counts: dict[str, int], cfg: WriteConfig) -> tuple[float | None, float | None]:
    spec = cfg.generator
    if spec.provider != "openai" or spec.price_input_per_mtok is None or spec.price_output_per_mtok is None:
        return None, None
    cached_price = (spec.price_input_per_mtok if spec.price_cached_input_per_mtok is None
                    else spec.price_cached_input_per_mtok)
    factor = (1 - spec.batch_discount) if spec.batch else 1.0
    prompt, cached, out = counts["prompt_tokens"], counts["cached_prompt_tokens"], counts["completion_tokens"]
    with_cache = ((prompt - cached) * spec.price_input_per_mtok + cached * cached_price
                  + out * spec.price_output_per_mtok) / 1e6 * factor
    without = (prompt * spec.price_input_per_mtok + out * spec.price_output_per_mtok) / 1e6 * factor
    return round(with_cache, 4), round(without, 4)


def estimate(prompts: dict[str, str], langs: dict[str, str], plans: dict[str, list[tuple[str, int]]],
             cfg: WriteConfig, *, tokens_per_word: float = TOKENS_PER_WORD,
             min_cached_tokens: int = MIN_CACHED_TOKENS, cached_step_tokens: int = CACHED_STEP_TOKENS,
             modes: tuple[Mode, ...] = MODES) -> dict[str, Any]:
    """The estimate of both modes (or ``modes``) for ``plans`` under ``cfg`` (see the module docstring)."""
    if tokens_per_word <= 0 or min_cached_tokens < 0 or cached_step_tokens < 1:
        raise ValueError("tokens_per_word must be > 0, min_cached_tokens >= 0 and cached_step_tokens >= 1")
    spec = cfg.generator
    out: dict[str, Any] = {
        "instructions": len(plans),
        "paragraphs": sum(len(p) for p in plans.values()),
        "planned_words": sum(w for p in plans.values() for _, w in p),
        "mode": cfg.mode,
        "history_words": cfg.history_words,
        "tokens_per_word": round(tokens_per_word, 4),
        "prefix_cache": {"min_cached_tokens": min_cached_tokens, "cached_step_tokens": cached_step_tokens},
        "prices": {"provider": spec.provider, "input_per_mtok": spec.price_input_per_mtok,
                   "cached_input_per_mtok": spec.price_cached_input_per_mtok,
                   "output_per_mtok": spec.price_output_per_mtok,
                   "batch_discount": spec.batch_discount if spec.batch else None},
    }
    for mode in modes:
        counts = estimate_mode(prompts, langs, plans, cfg, mode, tokens_per_word=tokens_per_word,
                               min_cached_tokens=min_cached_tokens, cached_step_tokens=cached_step_tokens)
        usd, usd_plain = _usd(counts, cfg)
        out[mode] = {**counts,
                     "prompt_tokens_per_completion_token": (round(counts["prompt_tokens"]
                                                                  / counts["completion_tokens"], 3)
                                                            if counts["completion_tokens"] else None),
                     "cached_share": (round(counts["cached_prompt_tokens"] / counts["prompt_tokens"], 4)
                                      if counts["prompt_tokens"] else None),
                     "usd": usd, "usd_without_prefix_cache": usd_plain}
    return out


def estimate_files(instructions_path: Any, plans_path: Any, cfg: WriteConfig, **kw: Any) -> dict[str, Any]:
    """``estimate`` of the plans in ``plans_path`` for the instructions in ``instructions_path`` (the stage's
    inputs, checked as the stage checks them)."""
    instructions, plans = read_inputs(instructions_path, plans_path)
    prompts = dict(instructions.select("id", "prompt").iter_rows())
    langs = dict(instructions.select("id", "lang").iter_rows())
    return estimate(prompts, langs, plans, cfg, **kw)


def summary(result: dict[str, Any]) -> str:
    """The estimate as a few lines of text."""
    lines = [f"write estimate: {result['instructions']} instructions, {result['paragraphs']} paragraphs, "
             f"{result['planned_words']:,} planned words; history_words {result['history_words']}, "
             f"{result['tokens_per_word']} tokens per word, cached prefixes >= "
             f"{result['prefix_cache']['min_cached_tokens']} tokens in steps of "
             f"{result['prefix_cache']['cached_step_tokens']}"]
    header = ("mode", "calls", "prompt tokens", "cached", "completion", "prompt/completion", "USD",
              "USD uncached")
    rows = [header]
    for mode in MODES:
        if mode not in result:
            continue
        m = result[mode]
        rows.append((mode + (" *" if mode == result["mode"] else ""), f"{m['calls']:,}", f"{m['prompt_tokens']:,}",
                     f"{m['cached_prompt_tokens']:,}", f"{m['completion_tokens']:,}",
                     str(m["prompt_tokens_per_completion_token"]), _money(m["usd"]),
                     _money(m["usd_without_prefix_cache"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.append("* the mode params.yaml runs; USD: none without the generator's prices")
    return "\n".join(lines)


def _money(v: float | None) -> str:
    return "none" if v is None else f"{v:,.2f}"
