"""Stage ``write`` (AgentWrite step II): one call per planned paragraph.

``sequential`` (the paper's default): paragraph n sees the instruction, the whole plan, the text of
paragraphs 1..n-1 and its own plan line, so the answer reads as one piece. ``parallel`` drops the history:
all paragraphs of an instruction are written at once (the paper's "+Parallel" variant).

Instructions run concurrently (bounded by the client's ``max_concurrency``); paragraphs of one instruction
run in order. Beyond the paper, a paragraph that falls short of ``min_budget_ratio`` of its budget, or that
stopped on the token limit mid-sentence, gets up to ``max_continuations`` "continue" calls. A paragraph that is
still not complete text (``longwriter.completeness``: empty, a refusal, filtered, or cut off mid-sentence) is
written again with a new seed, up to ``max_attempts`` times; then its instruction is dropped and recorded with
the reason: a training target never ends in mid-sentence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from longwriter.completeness import ends_sentence, incomplete_reason, trim_to_sentence
from longwriter.errors import InputError
from longwriter.failures import Reason, failure_row, reason_counts, write_failures
from longwriter.files import read_table, write_metrics
from longwriter.llm import ClientSettings, LLMCallError, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.llm.runner import progress_bar, run_each
from longwriter.prompts import render_prompt
from longwriter.schemas import (
    Instructions,
    Plans,
    Sections,
    empty,
    validate,
    write_checked,
)
from longwriter.wordcount import cjk_count, count_words


@dataclass(frozen=True)
class WriteConfig:
    mode: Literal["sequential", "parallel"] = "sequential"
    # a paragraph shorter than this fraction of its budget is continued
    min_budget_ratio: float = 0.6
    max_continuations: int = 1
    # writes of a paragraph (each with its continuations) until it is complete text; then the sample is dropped
    max_attempts: int = 3
    # per-call max_tokens = budget * tokens_per_word + 64, capped by sampling.max_tokens
    tokens_per_word: float = 2.5
    # a write stopped on the token limit in mid-sentence that already holds min_budget_ratio of its budget in
    # complete sentences is cut back to its last one, rather than continued or written again: a model that
    # runs on to its limit (the embedded 135M one does in most paragraphs) then costs one call per paragraph
    trim_cut_off: bool = True
    # keep only the last N words of earlier paragraphs in the prompt (None: all, as in the paper)
    history_words: int | None = None
    generator: ModelSpec = field(default_factory=lambda: ModelSpec(penalty_last_n=1024))
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=1.0, max_tokens=2048, frequency_penalty=1.5,
                                                                presence_penalty=1.5))

    def __post_init__(self) -> None:
        if not 0 <= self.min_budget_ratio <= 1:
            raise ValueError("min_budget_ratio must be within [0, 1]")
        if self.max_continuations < 0 or self.tokens_per_word <= 0:
            raise ValueError("max_continuations must be >= 0 and tokens_per_word > 0")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")


_CJK_END = re.compile(r"[\u4e00-\u9fff]$")


def _tail_words(text: str, limit: int | None) -> str:
    if limit is None:
        return text
    parts = text.split()
    if len(parts) > limit:
        return "[...] " + " ".join(parts[-limit:])
    # Chinese has no spaces: fall back to a character budget. Only for such text: a spaced history within the
    # word limit is kept whole (cutting it at 2 x limit characters kept about a third of an English one's words)
    if len(text) <= limit * 2 or cjk_count(text) <= len(parts):
        return text
    return "[...]" + text[-limit * 2:]


def section_messages(instruction: str, plan: list[tuple[str, int]], n: int, written: list[str],
                     cfg: WriteConfig) -> list[dict[str, str]]:
    """The prompt for paragraph ``n`` (1-based); ``written`` holds paragraphs 1..n-1 (ignored in parallel)."""
    point, words = plan[n - 1]
    history, follow = "", ""
    if cfg.mode == "sequential" and written:
        so_far = _tail_words("\n\n".join(written), cfg.history_words)
        # no paragraph number in the heading: paragraph n's prompt then repeats paragraph n-1's up to the end
        # of the history they share, which a backend's prefix cache does not evaluate again
        history = "\n" + render_prompt("write_history", text=so_far) + "\n"
        follow = render_prompt("write_follow") + " "
    outline = "\n".join(f"{i}. {p} (about {w} words)" for i, (p, w) in enumerate(plan, start=1))
    content = render_prompt("write", instruction=instruction, plan=outline, history=history, n=n, point=point,
                            words=words, follow=follow)
    return [{"role": "user", "content": content}]


def _join(text: str, more: str) -> str:
    more = more.strip()
    if not more:
        return text
    if not text or text[-1].isspace() or _CJK_END.search(text):
        return text + more
    return text + " " + more


def needs_more(text: str, budget: int, finish_reason: str, cfg: WriteConfig) -> bool:
    """Short of its budget, or cut off by the token limit in mid-sentence (a continuation finishes the sentence
    even past the budget: a paragraph that stops mid-sentence is not a training target)."""
    words = count_words(text)
    return words < cfg.min_budget_ratio * budget or (finish_reason == "length" and not ends_sentence(text))


@dataclass
class Written:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    finish_reason: str = ""
    continuations: int = 0
    attempts: int = 1
    trimmed: bool = False


class IncompleteSection(Exception):
    """A paragraph that is not complete text after all its attempts: its instruction gives no sample."""

    def __init__(self, section: int, reason: Reason, attempts: int, text: str):
        self.section, self.reason, self.attempts = section, reason, attempts
        super().__init__(f"section {section} {reason} after {attempts} attempts: ...{text[-120:]!r}")


async def write_section(llm: LLMClient, instruction: str, plan: list[tuple[str, int]], n: int,
                        written: list[str], cfg: WriteConfig) -> Written:
    """Write one paragraph until it is complete text (``max_attempts`` writes, each with its continuations)."""
    out = Written("")
    for attempt in range(cfg.max_attempts):
        w = await _write_once(llm, instruction, plan, n, written, cfg, attempt)
        # every attempt is paid for: the row reports them all
        w.prompt_tokens += out.prompt_tokens
        w.completion_tokens += out.completion_tokens
        w.latency_s += out.latency_s
        w.continuations += out.continuations
        w.attempts, out = attempt + 1, w
        reason = incomplete_reason(w.text, w.finish_reason)
        if reason is None:
            return w
    raise IncompleteSection(n, reason, cfg.max_attempts, out.text)


async def _write_once(llm: LLMClient, instruction: str, plan: list[tuple[str, int]], n: int,
                      written: list[str], cfg: WriteConfig, attempt: int) -> Written:
    """One write of a paragraph, with continuation calls while it falls short (``attempt`` picks the seed)."""
    budget = plan[n - 1][1]
    messages = section_messages(instruction, plan, n, written, cfg)
    sampling = sampling_for(budget, cfg)
    reply = await llm.complete(messages, sampling, sample=attempt)
    out = Written(reply.text.strip(), reply.prompt_tokens, reply.completion_tokens, reply.latency_s,
                  reply.finish_reason)
    _trim_cut_off(out, budget, cfg)
    while out.continuations < cfg.max_continuations and needs_more(out.text, budget, out.finish_reason, cfg):
        remaining = max(budget - count_words(out.text), budget // 4, 20)
        follow = [*messages, {"role": "assistant", "content": out.text},
                  {"role": "user", "content": render_prompt("write_continue", words=remaining)}]
        reply = await llm.complete(follow, sampling_for(remaining, cfg), sample=attempt)
        out.continuations += 1
        out.prompt_tokens += reply.prompt_tokens
        out.completion_tokens += reply.completion_tokens
        out.latency_s += reply.latency_s
        out.finish_reason = reply.finish_reason
        before = count_words(out.text)
        out.text = _join(out.text, reply.text)
        _trim_cut_off(out, budget, cfg)
        if count_words(out.text) - before < 5:  # the model has nothing more to say
            break
    return out


def _trim_cut_off(out: Written, budget: int, cfg: WriteConfig) -> None:
    """Cut a text stopped in mid-sentence by the token limit back to its last sentence when what is left still
    holds ``min_budget_ratio`` of the budget (``WriteConfig.trim_cut_off``)."""
    if not cfg.trim_cut_off or out.finish_reason != "length" or ends_sentence(out.text):
        return
    kept = trim_to_sentence(out.text)
    if count_words(kept) >= cfg.min_budget_ratio * budget:
        out.text, out.trimmed = kept, True


def sampling_for(words: int, cfg: WriteConfig) -> Sampling:
    """The sampling of a call writing ``words`` words: max_tokens at most words x tokens_per_word + 64."""
    s = cfg.sampling
    return dataclasses.replace(s, max_tokens=min(s.max_tokens, math.ceil(words * cfg.tokens_per_word) + 64))


@dataclass
class InstructionResult:
    instruction_id: str
    rows: list[dict[str, Any]]
    error: str | None = None
    reason: Reason | None = None  # why, when error is set
    failed_section: int | None = None
    attempts: int = 0
    trimmed: int = 0  # sections cut back to their last sentence (WriteConfig.trim_cut_off)


async def write_instruction(llm: LLMClient, instruction_id: str, instruction: str, plan: list[tuple[str, int]],
                            cfg: WriteConfig, on_section: Any = None) -> InstructionResult:
    """All paragraphs of one instruction; a paragraph that fails after retries fails the instruction (a
    partial answer is not a training sample)."""
    result = InstructionResult(instruction_id, [])

    async def one(n: int, written: list[str]) -> Written:
        started = time.perf_counter()
        try:
            w = await write_section(llm, instruction, plan, n, written, cfg)
        except LLMCallError as e:
            e.section = n  # type: ignore[attr-defined]
            raise
        if on_section is not None:
            on_section(w, time.perf_counter() - started)
        return w

    try:
        if cfg.mode == "sequential":
            texts: list[str] = []
            outs = []
            for n in range(1, len(plan) + 1):
                w = await one(n, texts)
                texts.append(w.text)
                outs.append(w)
        else:
            outs = await run_each(range(1, len(plan) + 1), lambda n: one(n, []))
    except LLMCallError as e:
        result.error, result.attempts, result.reason = str(e), e.attempts, Reason.LLM_ERROR
        result.failed_section = getattr(e, "section", None)
        return result
    except IncompleteSection as e:
        result.error, result.attempts, result.reason = str(e), e.attempts, e.reason
        result.failed_section = e.section
        return result
    result.trimmed = sum(w.trimmed for w in outs)
    for n, w in enumerate(outs, start=1):
        result.rows.append({
            "instruction_id": instruction_id, "section": n, "text": w.text, "words": count_words(w.text),
            "budget": plan[n - 1][1], "prompt_tokens": w.prompt_tokens, "completion_tokens": w.completion_tokens,
            "latency_s": round(w.latency_s, 4), "finish_reason": w.finish_reason, "continuations": w.continuations,
            "attempts": w.attempts, "model": llm.endpoint.model})
    return result


def plans_by_instruction(plans: pl.DataFrame) -> dict[str, list[tuple[str, int]]]:
    out: dict[str, list[tuple[str, int]]] = {}
    for row in plans.sort("instruction_id", "section").iter_rows(named=True):
        out.setdefault(row["instruction_id"], []).append((row["main_point"], row["words"]))
    return out


def read_inputs(instructions_path: str | Path, plans_path: str | Path) -> tuple[pl.DataFrame,
                                                                                dict[str, list[tuple[str, int]]]]:
    """The stage's inputs, checked: the instructions table and each planned instruction's (point, words) lines."""
    instructions = validate(read_table(instructions_path), Instructions, instructions_path)
    plans = plans_by_instruction(validate(read_table(plans_path), Plans, plans_path))
    unknown = sorted(set(plans) - set(instructions["id"]))
    if unknown:
        raise InputError(plans_path, f"plans for unknown instruction ids: {', '.join(unknown[:5])}",
                         column="instruction_id")
    return instructions, plans


def instruction_order(plans: dict[str, list[tuple[str, int]]]) -> list[str]:
    """The order the stage starts instructions in: longest plans first (a shorter makespan), then by id."""
    return sorted(plans, key=lambda iid: (-sum(w for _, w in plans[iid]), iid))


def run_write(instructions_path: str | Path, plans_path: str | Path, output: str | Path, failures: str | Path,
              metrics: str | Path, cfg: WriteConfig, settings: ClientSettings,
              timings: str | Path | None = None) -> dict[str, Any]:
    """The whole stage: write every planned instruction, then the sections, failures and metrics."""
    instructions, plans = read_inputs(instructions_path, plans_path)
    prompts = dict(instructions.select("id", "prompt").iter_rows())
    total_sections = sum(len(p) for p in plans.values())

    async def work(llm: LLMClient) -> list[InstructionResult]:
        with progress_bar(total_sections, f"write ({cfg.mode})", "sec") as bar:  # advanced per section
            done = {"instructions": 0}
            started = time.perf_counter()

            def on_section(w: Written, _: float) -> None:
                bar.update(1)
                elapsed = max(time.perf_counter() - started, 1e-6)
                bar.set_postfix(instr=f"{done['instructions']}/{len(plans)}", tokens=llm.stats.completion_tokens,
                                tok_s=f"{llm.stats.sent_completion_tokens / elapsed:.0f}", refresh=False)

            # As many instructions in flight as requests may be: keeps every slot busy, and on a one-slot
            # server (the embedded llama.cpp) consecutive requests share a prompt prefix it can reuse.
            # Longest plans start first, which shortens the makespan.
            in_flight = asyncio.Semaphore(llm.max_in_flight)

            async def one(iid: str) -> InstructionResult:
                async with in_flight:
                    r = await write_instruction(llm, iid, prompts[iid], plans[iid], cfg, on_section)
                done["instructions"] += 1
                return r

            return await run_each(instruction_order(plans), one)

    results, stats = run_with_llm(cfg.generator, settings, work)
    rows = [row for r in results for row in r.rows]
    sections = pl.DataFrame(rows, schema=empty(Sections).schema).sort("instruction_id", "section")
    write_checked(sections, Sections, output)
    failed = [r for r in results if r.error is not None]
    failure_rows = [failure_row("write", r.reason, r.error, instruction_id=r.instruction_id,
                                section=r.failed_section, attempts=r.attempts) for r in failed]
    write_failures(failure_rows, failures)
    result = {
        "mode": cfg.mode,
        "instructions": len(plans),
        "written": len(results) - len(failed),
        "failed": len(failed),
        "failures": reason_counts(failure_rows),
        "sections": sections.height,
        "sections_rewritten": int((sections["attempts"] > 1).sum()) if sections.height else 0,
        "sections_trimmed": sum(r.trimmed for r in results if r.error is None),
        "words": int(sections["words"].sum()) if sections.height else 0,
        "planned_words": int(sections["budget"].sum()) if sections.height else 0,
        "written_to_planned": (round(sections["words"].sum() / sections["budget"].sum(), 4)
                               if sections.height else 0.0),
        "sections_continued": int((sections["continuations"] > 0).sum()) if sections.height else 0,
        "continuation_calls": int(sections["continuations"].sum()) if sections.height else 0,
        "sections_short": (int((sections["words"] < cfg.min_budget_ratio * sections["budget"]).sum())
                           if sections.height else 0),
        "finish_reasons": ({k: int(v) for k, v in sections.group_by("finish_reason").len().sort(
            "finish_reason").iter_rows()} if sections.height else {}),
        "llm": stats.as_metrics(),
    }
    write_metrics(result, metrics, timings)
    return result
