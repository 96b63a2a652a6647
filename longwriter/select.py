"""Stage ``select``: from raw instruction pools to the instructions AgentWrite will answer.

The cheap, deterministic part (normalise, deduplicate, detect language, filter by length) runs on whole
pools with Polars. Only the survivors are shown to the selector model, in a seeded random order and only
until each language has its quota, so a million-row pool costs as many LLM calls as the quota needs.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from longwriter.files import read_table, write_json
from longwriter.llm import ClientSettings, LLMCallError, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.llm.structured import extract_json
from longwriter.schemas import LANGS, Instructions, Pool, empty, validate, write_checked, write_failures


@dataclass(frozen=True)
class SelectConfig:
    pools: tuple[str, ...] = ("data/pool/instructions.jsonl",)
    min_prompt_chars: int = 10
    max_prompt_chars: int = 4000
    # an instruction is kept when the selector says it needs a long answer of at least this many words
    min_estimated_words: int = 800
    # instructions that state a longer required length than this are left out (laptop-sized runs)
    max_required_words: int | None = None
    per_lang: int | None = 3
    seed: int = 0
    max_attempts: int = 3
    selector: ModelSpec = field(default_factory=ModelSpec)
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, max_tokens=96))


JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "needs_long_answer": {"type": "boolean"},
        "estimated_words": {"type": "integer", "minimum": 0, "maximum": 100000},
    },
    "required": ["needs_long_answer", "estimated_words"],
    "additionalProperties": False,
}

JUDGE_PROMPT = """You sort user requests for a writing assistant.
Decide whether a good answer to the request below must be a long piece of writing of at least {min_words} \
words (an essay, story, report, guide, chapter...), or whether a short answer is enough (a fact, a number, \
a translation, a slogan, a short note).

Reply with a JSON object: {{"needs_long_answer": true or false, "estimated_words": the number of words a good \
answer needs}}.

Request:
<<<
{prompt}
>>>"""

# Stated lengths: "2000 words", "2,000-word", "3k words", "3000字", "三千字", "1.5万字".
_EN_LENGTH = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s*(k)?\s*-?\s*words?\b", re.IGNORECASE)
_ZH_LENGTH = re.compile(r"(\d+(?:\.\d+)?|[一二两三四五六七八九十百千万]+)\s*(万)?\s*字")
_ZH_DIGITS = {"一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}


def _zh_number(text: str) -> int | None:
    total, current = 0, 0
    for ch in text:
        if ch in _ZH_DIGITS:
            current = _ZH_DIGITS[ch]
        elif ch in _ZH_UNITS:
            unit = _ZH_UNITS[ch]
            if unit == 10000:
                total = (total + current) * unit
            else:
                total += (current or 1) * unit
            current = 0
    return (total + current) or None


def required_words_in(prompt: str) -> int | None:
    """The length a prompt asks for, if it states one (the largest stated number of words or 字)."""
    found: list[float] = []
    for number, k in _EN_LENGTH.findall(prompt):
        value = float(number.replace(",", ""))
        found.append(value * 1000 if k else value)
    for number, wan in _ZH_LENGTH.findall(prompt):
        value = float(number) if number[0].isdigit() else float(_zh_number(number) or 0)
        found.append(value * 10000 if wan else value)
    found = [v for v in found if v >= 20]  # "5 words" is a constraint, not a length requirement
    return int(max(found)) if found else None


# A cheap superset of the prompts required_words_in can find a length in: only those go through Python.
_MAY_STATE_LENGTH = r"(?i)\d\s*k?\s*-?\s*words?|[\d一二两三四五六七八九十百千万]\s*万?\s*字"


def _stated_lengths(prompts: pl.Series) -> pl.Series:
    rows = prompts.str.contains(_MAY_STATE_LENGTH).arg_true()
    values = pl.Series([required_words_in(p) for p in prompts.gather(rows).to_list()], dtype=pl.Int64)
    return pl.Series("required_words", [None] * len(prompts), dtype=pl.Int64).scatter(rows, values)


def language_expr(col: str = "prompt") -> pl.Expr:
    """zh, en or other: by the units the word counter counts, plus other scripts, in the first 2,000 chars.

    A heuristic, not a word count: the ASCII word boundary ``(?-u:\b)`` lets the regex engine use its fast
    path (a Unicode ``\b`` on non-ASCII text made this the slowest step at pool scale), and the prefix keeps
    a 20,000-char prompt as cheap as a short one.
    """
    text = pl.col(col).str.slice(0, 2000)
    cjk = text.str.count_matches(r"[\u4e00-\u9fff]")
    latin = text.str.count_matches(r"(?-u:\b)[a-zA-Z]+(?-u:\b)")
    # kana, hangul, cyrillic, arabic, devanagari, thai, greek, hebrew: languages we do not target
    other = text.str.count_matches(
        r"[\u3040-\u30ff\uac00-\ud7af\u0400-\u04ff\u0600-\u06ff\u0900-\u097f\u0e00-\u0e7f\u0370-\u03ff\u0590-\u05ff]")
    return (pl.when((other > 0) & (other * 2 >= cjk + latin)).then(pl.lit("other"))
            .when(cjk >= latin).then(pl.when(cjk > 0).then(pl.lit("zh")).otherwise(pl.lit("other")))
            .when(cjk * 4 >= latin).then(pl.lit("zh"))
            .otherwise(pl.lit("en")))


def _stable_ids(prompts: pl.Series) -> pl.Series:
    return pl.Series([hashlib.sha1(p.encode("utf-8")).hexdigest()[:12] for p in prompts], dtype=pl.Utf8)


def load_pools(paths: list[str]) -> pl.DataFrame:
    """Read and validate each pool; returns id, prompt, source, required_words (one frame, pool order)."""
    frames = []
    for path in paths:
        df = validate(read_table(path), Pool, path)
        source = Path(path).stem
        frames.append(df.select(
            pl.col("id") if "id" in df.columns else _stable_ids(df["prompt"]).alias("id"),
            pl.col("prompt"),
            (pl.col("source").fill_null(source) if "source" in df.columns else pl.lit(source)).alias("source"),
            (pl.col("required_words").cast(pl.Int64) if "required_words" in df.columns
             else pl.lit(None, dtype=pl.Int64)).alias("required_words"),
        ))
    return pl.concat(frames, how="vertical_relaxed")


def prefilter(pool: pl.DataFrame, cfg: SelectConfig) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Normalise, deduplicate, detect language, filter by length. Returns the candidates and step counts."""
    counts: dict[str, Any] = {"read": pool.height}
    df = pool.with_columns(pl.col("prompt").str.normalize("NFKC").str.strip_chars())
    df = df.with_columns(
        pl.col("prompt").str.to_lowercase().str.replace_all(r"\s+", " ").alias("_key"))
    df = df.unique(subset="_key", keep="first", maintain_order=True)
    # ids must stay unique across pools: a later pool reusing an id is a different prompt, so re-key it
    df = df.with_columns(
        pl.when(pl.col("id").is_duplicated() & (pl.int_range(pl.len()).over("id") > 0))
        .then(pl.col("id") + "-" + pl.int_range(pl.len()).over("id").cast(pl.Utf8))
        .otherwise(pl.col("id")).alias("id"))
    counts["after_dedup"] = df.height
    df = df.with_columns(language_expr("prompt").alias("lang"), pl.col("prompt").str.len_chars().alias("_chars"))
    counts["by_lang"] = {lang: int(n) for lang, n in
                         df.group_by("lang").len().sort("lang").iter_rows()}
    df = df.filter(pl.col("lang").is_in(LANGS))
    counts["after_lang"] = df.height
    df = df.filter(pl.col("_chars").is_between(cfg.min_prompt_chars, cfg.max_prompt_chars))
    counts["after_length"] = df.height
    df = df.with_columns(pl.coalesce(pl.col("required_words"), _stated_lengths(df["prompt"])).alias("required_words"))
    if cfg.max_required_words is not None:
        df = df.filter(pl.col("required_words").is_null() | (pl.col("required_words") <= cfg.max_required_words))
    counts["after_required_words"] = df.height
    return df.drop("_key", "_chars"), counts


@dataclass
class Verdict:
    id: str
    needs_long_answer: bool | None = None
    estimated_words: int | None = None
    attempts: int = 0
    error: str | None = None


async def judge(llm: LLMClient, prompt_id: str, prompt: str, cfg: SelectConfig) -> Verdict:
    """Ask the selector whether ``prompt`` needs a long answer; re-ask on unusable output."""
    messages = [{"role": "user", "content": JUDGE_PROMPT.format(min_words=cfg.min_estimated_words, prompt=prompt)}]
    verdict = Verdict(prompt_id)
    for sample in range(cfg.max_attempts):
        verdict.attempts = sample + 1
        try:
            reply = await llm.complete(messages, cfg.sampling, schema=JUDGE_SCHEMA, sample=sample)
        except LLMCallError as e:
            verdict.error = str(e)
            return verdict
        obj = extract_json(reply.text)
        if (isinstance(obj, dict) and isinstance(obj.get("needs_long_answer"), bool)
                and isinstance(obj.get("estimated_words"), int) and not isinstance(obj["estimated_words"], bool)):
            verdict.needs_long_answer = obj["needs_long_answer"]
            verdict.estimated_words = max(0, obj["estimated_words"])
            verdict.error = None
            return verdict
        verdict.error = f"unusable selector output: {reply.text[:200]!r}"
    return verdict


def _accepts(v: Verdict, cfg: SelectConfig, required: int | None) -> bool:
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
            results = await asyncio.gather(*(judge(llm, r["id"], r["prompt"], cfg)
                                             for r in batch.iter_rows(named=True)))
            for offset, (row, v) in enumerate(zip(batch.iter_rows(named=True), results, strict=True)):
                verdicts.append(v)
                if _accepts(v, cfg, row["required_words"]):
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


def run_select(output: str | Path, failures: str | Path, metrics: str | Path,
               cfg: SelectConfig, settings: ClientSettings) -> dict[str, Any]:
    """The whole stage: read pools, prefilter, ask the selector, write table, failures and metrics."""
    candidates, counts = prefilter(load_pools(list(cfg.pools)), cfg)

    async def work(llm: LLMClient) -> tuple[pl.DataFrame, list[Verdict]]:
        with tqdm(total=candidates.height, desc="select: judged", unit="prompt", disable=None) as bar:
            return await choose(llm, candidates, cfg, bar)

    (chosen, verdicts), stats = run_with_llm(cfg.selector, settings, work)
    failed = [v for v in verdicts if v.error is not None]
    write_checked(chosen, Instructions, output)
    write_failures([{"stage": "select", "instruction_id": v.id, "section": None, "attempts": v.attempts,
                     "error": v.error} for v in failed], failures)
    counts |= {
        "judged": len(verdicts),
        "judged_long": sum(1 for v in verdicts if v.needs_long_answer),
        "judge_failed": len(failed),
        "selected": chosen.height,
        "selected_by_lang": {lang: int((chosen["lang"] == lang).sum()) for lang in LANGS},
        "llm": stats.as_metrics(),
    }
    write_json(counts, metrics)
    return counts

