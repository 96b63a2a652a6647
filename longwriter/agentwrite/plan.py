"""Stage ``plan`` (AgentWrite step I): an outline per instruction, one paragraph per line, each with its
main point and word budget.

Plans come back as JSON through a schema where the backend takes one, else in the paper's line format
("Paragraph N - Main Point: ... - Word Count: N words"), parsed tolerantly. Either way the model's plan is
checked and repaired in code, because a grammar enforces structure but not sense: small models repeat main
points and ignore numeric bounds. A plan that cannot be repaired is asked for again, a bounded number of
times, and then recorded as a failure.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.checks import positive_int
from longwriter.failures import Reason, failure_row, reason_counts, write_failures
from longwriter.files import read_table, write_metrics
from longwriter.llm import ClientSettings, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.llm.runner import run_each
from longwriter.llm.structured import Unusable, ask_until_usable, extract_json
from longwriter.prompts import render_prompt
from longwriter.schemas import Instructions, Plans, empty, validate, write_checked


@dataclass(frozen=True)
class PlanConfig:
    min_paragraphs: int = 4
    max_paragraphs: int = 5
    # per-paragraph budget bounds (the paper asks for 200-1000 words per paragraph)
    min_words: int = 300
    max_words: int = 400
    max_attempts: int = 3
    generator: ModelSpec = field(default_factory=ModelSpec)
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=1024))

    def __post_init__(self) -> None:
        if not 1 <= self.min_paragraphs <= self.max_paragraphs:
            raise ValueError("need 1 <= min_paragraphs <= max_paragraphs")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError("need 1 <= min_words <= max_words")
        positive_int("max_attempts", self.max_attempts)


@dataclass(frozen=True)
class Paragraph:
    main_point: str
    words: int | None


@dataclass
class Repairs:
    duplicates_dropped: int = 0
    empty_dropped: int = 0
    budgets_filled: int = 0
    budgets_clamped: int = 0
    rescaled: int = 0


class UnusablePlan(Unusable):
    pass


def paragraph_bounds(required: int | None, cfg: PlanConfig) -> tuple[int, int]:
    """How many paragraphs a plan may have, so that budgets within [min_words, max_words] can sum to
    ``required`` (capped by max_paragraphs, where the per-paragraph maximum then has to give)."""
    if required is None:
        return cfg.min_paragraphs, cfg.max_paragraphs
    fit = max(1, required // cfg.min_words)
    lo = max(math.ceil(required / cfg.max_words), min(cfg.min_paragraphs, fit))
    hi = max(lo, min(cfg.max_paragraphs, fit))
    if lo > cfg.max_paragraphs:
        lo = hi = cfg.max_paragraphs
    return lo, hi


# --- parsing -------------------------------------------------------------------------------------------

PLAN_SCHEMA_ITEM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "main_point": {"type": "string", "minLength": 4, "maxLength": 600},
        "word_count": {"type": "integer", "minimum": 1},
    },
    "required": ["main_point", "word_count"],
    "additionalProperties": False,
}


def plan_schema(lo: int, hi: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"paragraphs": {"type": "array", "items": PLAN_SCHEMA_ITEM, "minItems": lo, "maxItems": hi}},
        "required": ["paragraphs"],
        "additionalProperties": False,
    }


_NUMBER = re.compile(r"\d[\d,]*")
_MARKUP = re.compile(r"[*_`#>]+")
_POINT = re.compile(r"(?:main\s*points?|主要内容|要点|内容)\s*[:：]\s*(?P<point>.*)", re.IGNORECASE)
_COUNT = re.compile(r"(?:word\s*count|words?|字数)\s*[:：]?\s*(?:about|approximately|around|roughly|~|约|大约)?\s*"
                    r"(?P<n>\d[\d,]*)", re.IGNORECASE)
_COUNT_SPLIT = re.compile(r"\s*[-–—|,;，；(（\[]*\s*(?:word\s*count|字数)\s*[:：]", re.IGNORECASE)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        m = _NUMBER.search(value)
        return int(m.group().replace(",", "")) if m else None
    return None


def parse_plan_json(text: str) -> list[Paragraph]:
    """Paragraphs from a JSON plan: {"paragraphs": [{"main_point", "word_count"}]} or a bare list."""
    obj = extract_json(text)
    items = obj.get("paragraphs") if isinstance(obj, dict) else obj
    if not isinstance(items, list):
        raise UnusablePlan("no JSON list of paragraphs in the reply")
    out = []
    for item in items:
        if not isinstance(item, dict):
            continue
        point = item.get("main_point") or item.get("main point") or item.get("point") or ""
        words = _as_int(item.get("word_count", item.get("words")))
        out.append(Paragraph(str(point).strip(), words))
    return out


def parse_plan_lines(text: str) -> list[Paragraph]:
    """Paragraphs from the paper's line format, tolerant of markdown, bullets, Chinese labels, and a word
    count on the line after its main point."""
    out: list[Paragraph] = []
    pending: str | None = None
    for raw in text.splitlines():
        line = _MARKUP.sub("", raw).strip(" \t-•")
        if not line:
            continue
        point_match = _POINT.search(line)
        count_match = _COUNT.search(line)
        if point_match:
            if pending is not None:
                out.append(Paragraph(pending, None))
            point = _COUNT_SPLIT.split(point_match.group("point"))[0].strip(" -–—|")
            if count_match and count_match.start() > point_match.start():
                out.append(Paragraph(point, int(count_match.group("n").replace(",", ""))))
                pending = None
            else:
                pending = point
        elif count_match and pending is not None:
            out.append(Paragraph(pending, int(count_match.group("n").replace(",", ""))))
            pending = None
    if pending is not None:
        out.append(Paragraph(pending, None))
    if not out:
        raise UnusablePlan("no 'Main Point: ... Word Count: ...' lines in the reply")
    return out


def format_plan(paragraphs: list[tuple[str, int]]) -> str:
    """The plan in the paper's line format, as the write prompts show it."""
    return "\n".join(f"Paragraph {i} - Main Point: {point} - Word Count: {words} words"
                     for i, (point, words) in enumerate(paragraphs, start=1))


# --- validation and repair ----------------------------------------------------------------------------

def rescale(words: list[int], total: int, lo: int, hi: int) -> list[int]:
    """Integer budgets proportional to ``words`` that sum exactly to ``total`` within [lo, hi] each.

    Bounds that make the sum impossible are widened just enough. Proportional scaling, then clamping,
    then the remainder is spread over the paragraphs that still have room, largest first.
    """
    n = len(words)
    lo = min(lo, total // n)
    hi = max(hi, math.ceil(total / n))
    weight = sum(words) or n
    scaled = [min(hi, max(lo, round(w * total / weight))) for w in words]
    diff = total - sum(scaled)
    order = sorted(range(n), key=lambda i: -words[i])
    while diff != 0:
        step = 1 if diff > 0 else -1
        movable = [i for i in order if (scaled[i] < hi if step > 0 else scaled[i] > lo)]
        share = max(1, abs(diff) // len(movable))
        for i in movable:
            room = (hi - scaled[i]) if step > 0 else (scaled[i] - lo)
            delta = min(share, room, abs(diff))
            scaled[i] += step * delta
            diff -= step * delta
            if diff == 0:
                break
    return scaled


_ENUMERATION = re.compile(
    r"^\s*(?:(?:paragraph|section|part)\s*\d+\s*[-:.)–—]?|\d+\s*[.)、:：]|第\s*\d+\s*段\s*[:：、]?)\s*", re.IGNORECASE)


def _key(point: str) -> str:
    return re.sub(r"\W+", " ", point.lower()).strip()


def repair(paragraphs: list[Paragraph], required: int | None, cfg: PlanConfig,
           repairs: Repairs, dropped: list[str] | None = None) -> list[tuple[str, int]]:
    """Validate and repair a parsed plan, or raise ``UnusablePlan``. Points left out (empty, or repeating an
    earlier one) are described in ``dropped`` when it is given."""
    lo, hi = paragraph_bounds(required, cfg)
    kept: list[Paragraph] = []
    seen: set[str] = set()
    for p in paragraphs:
        # small models number their points ("1. Intro"); the plan's order already says that
        p = Paragraph(_ENUMERATION.sub("", p.main_point).strip(), p.words)
        key = _key(p.main_point)
        if len(key) < 2:
            repairs.empty_dropped += 1
            if dropped is not None:
                dropped.append(f"empty point {p.main_point!r} left out")
            continue
        if key in seen:
            repairs.duplicates_dropped += 1
            if dropped is not None:
                dropped.append(f"point {p.main_point[:80]!r} repeats an earlier one: left out")
            continue
        seen.add(key)
        kept.append(p)
    if len(kept) < lo:
        raise UnusablePlan(f"{len(kept)} distinct paragraphs, need at least {lo}")
    if len(kept) > hi:
        raise UnusablePlan(f"{len(kept)} paragraphs, at most {hi} allowed")
    known = [p.words for p in kept if p.words and p.words > 0]
    fill = round(sum(known) / len(known)) if known else (required or cfg.min_words * len(kept)) // len(kept)
    words = []
    for p in kept:
        w = p.words if p.words and p.words > 0 else None
        if w is None:
            repairs.budgets_filled += 1
            w = fill
        if not cfg.min_words <= w <= cfg.max_words:
            repairs.budgets_clamped += 1
            w = min(cfg.max_words, max(cfg.min_words, w))
        words.append(w)
    if required is not None and sum(words) != required:
        repairs.rescaled += 1
        words = rescale(words, required, cfg.min_words, cfg.max_words)
    return [(p.main_point, w) for p, w in zip(kept, words, strict=True)]


# --- prompts and the stage -----------------------------------------------------------------------------

def plan_messages(instruction: str, required: int | None, cfg: PlanConfig, structured: bool) -> list[dict]:
    lo, hi = paragraph_bounds(required, cfg)
    # the total-length rule is a line of its own, only when the instruction states a length
    length_rule = "\n" + render_prompt("plan_length_rule", required=required) if required else ""
    format_rule = render_prompt("plan_json_rule") if structured else render_prompt("plan_line_rule")
    content = render_prompt("plan", instruction=instruction, lo=lo, hi=hi, min_words=cfg.min_words,
                            max_words=cfg.max_words, length_rule=length_rule, format_rule=format_rule)
    return [{"role": "user", "content": content}]


@dataclass
class PlanOutcome:
    instruction_id: str
    paragraphs: list[tuple[str, int]] | None
    attempts: int
    error: str | None = None
    reason: Reason | None = None  # why, when paragraphs is None
    dropped_points: list[str] = field(default_factory=list)


async def plan_one(llm: LLMClient, row: dict[str, Any], cfg: PlanConfig, repairs: Repairs) -> PlanOutcome:
    required = row.get("required_words")
    structured = llm.endpoint.structured_output != "none"
    lo, hi = paragraph_bounds(required, cfg)
    schema = plan_schema(lo, hi) if structured else None

    def parse(text: str) -> tuple[list[tuple[str, int]], list[str]]:
        parsed = parse_plan_json(text) if structured else parse_plan_lines(text)
        dropped: list[str] = []
        return repair(parsed, required, cfg, repairs, dropped), dropped

    outcome = await ask_until_usable(llm, plan_messages(row["prompt"], required, cfg, structured), cfg.sampling,
                                     parse, schema=schema, max_attempts=cfg.max_attempts,
                                     describe=lambda fault, _: f"unusable plan: {fault}")
    if outcome.value is None:
        return PlanOutcome(row["id"], None, outcome.attempts, outcome.error, outcome.reason)
    paragraphs, dropped = outcome.value
    return PlanOutcome(row["id"], paragraphs, outcome.attempts, dropped_points=dropped)


def run_plan(instructions_path: str | Path, output: str | Path, failures: str | Path, metrics: str | Path,
             cfg: PlanConfig, settings: ClientSettings, timings: str | Path | None = None) -> dict[str, Any]:
    """The whole stage: read instructions, plan each, write plans, failures and metrics."""
    instructions = validate(read_table(instructions_path), Instructions, instructions_path)
    repairs = Repairs()

    modes: list[str] = []  # the mode the endpoint resolved to (a local checkpoint's depends on whether vLLM serves it)

    async def work(llm: LLMClient) -> list[PlanOutcome]:
        modes.append(llm.endpoint.structured_output)
        return await run_each(instructions.iter_rows(named=True), lambda row: plan_one(llm, row, cfg, repairs),
                              desc="plan", unit="instr")

    outcomes, stats = run_with_llm(cfg.generator, settings, work)
    rows = [{"instruction_id": o.instruction_id, "section": i, "main_point": point, "words": words,
             "attempts": o.attempts}
            for o in outcomes if o.paragraphs for i, (point, words) in enumerate(o.paragraphs, start=1)]
    plans = pl.DataFrame(rows, schema=empty(Plans).schema).sort("instruction_id", "section")
    write_checked(plans, Plans, output)
    failed = [o for o in outcomes if o.paragraphs is None]
    failure_rows = [failure_row("plan", o.reason, o.error, instruction_id=o.instruction_id, attempts=o.attempts)
                    for o in failed]
    failure_rows += [failure_row("plan", Reason.DUPLICATE_POINT, d, instruction_id=o.instruction_id,
                                 attempts=o.attempts) for o in outcomes for d in o.dropped_points]
    write_failures(failure_rows, failures)
    planned = [o for o in outcomes if o.paragraphs]
    sizes = [len(o.paragraphs or []) for o in planned]
    result = {
        "instructions": instructions.height,
        "planned": len(planned),
        "failed": len(failed),
        "success_rate": round(len(planned) / len(outcomes), 4) if outcomes else 0.0,
        "first_try_rate": round(sum(1 for o in planned if o.attempts == 1) / len(outcomes), 4) if outcomes else 0.0,
        "attempts": dict(sorted(Counter(str(o.attempts) for o in outcomes).items())),
        "structured_output": modes[0] if modes else cfg.generator.resolved_structured_output(),
        "paragraphs": {"total": sum(sizes), "min": min(sizes, default=0), "max": max(sizes, default=0),
                       "mean": round(sum(sizes) / len(sizes), 2) if sizes else 0.0},
        "planned_words": int(plans["words"].sum()) if plans.height else 0,
        "repairs": vars(repairs),
        "failures": reason_counts(failure_rows),
        "llm": stats.as_metrics(),
    }
    write_metrics(result, metrics, timings)
    return result
