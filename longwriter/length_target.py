"""Length targets: the word range an answer needs, for prompts that state no length (LongWriter-Zero's idea).

Most real requests (WildChat's, most of a user's) say nothing about length, so they get no S_l, no GRPO length
reward and no length-based DPO score: ``no_required_length`` failures. The ``length_target`` stage asks the
judge (``longwriter.judge.length_target``: JSON schema, re-asked when unusable, cached) for a range
[min_words, max_words] for each such prompt among its consumers' inputs, and writes them to one table:

- ``longbench_answer`` / ``longbench``: a request with no ``length`` is asked and capped at the range's top and
  scored with ``scoring.range_length_score`` (100 inside the range, S_l against the bound it misses);
- ``grpo``: the length reward of a prompt that states no length (before the plan's total, which was the old
  fallback) is S_l against the range;
- ``dpo_pairs``: an instruction with no stated length is scored against its range (before the selector's
  estimate).

A stated length always wins. How far to trust the predictor is measured where the answer is known: the first
``agreement`` requests of ``longbench.input`` that state a length are asked with the statement removed from the
prompt (``stated_length.hide_stated_length``), and the stated length is compared with the predicted range: the
share inside it, S_l of the stated length against the range (as if an answer of exactly the stated length had
been scored against the target), the ratio of the range's midpoint to the stated length, and Spearman's rho.

``length_target.enabled: false`` (the laptop default) writes an empty table, starts no model, and every consumer
behaves as before; a prompt without a target in the table keeps its old treatment (a failures row).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.agentwrite.stated_length import hide_stated_length
from longwriter.benchmark import read_benchmark
from longwriter.checks import positive_int
from longwriter.failures import failure_row, reason_counts, write_failures
from longwriter.files import read_table, write_metrics
from longwriter.judge import JudgeConfig, failure_reason, length_target
from longwriter.llm import ClientSettings, LLMClient, run_with_llm
from longwriter.llm.runner import run_each
from longwriter.rank_correlation import spearman
from longwriter.schemas import Instructions, LengthTargets, empty, validate, write_checked
from longwriter.scoring import bucket_of, range_length_score, rounded

STAGE = "length_target"


@dataclass(frozen=True)
class LengthTargetConfig:
    # off on a laptop: the 135M judge's ranges are noise, and the default run is over its time budget
    enabled: bool = False
    # prompts of longbench.input that state a length, asked with it hidden: the first N (null: all of them)
    agreement: int | None = 8

    def __post_init__(self) -> None:
        positive_int("agreement", self.agreement, optional=True)


def wanted(instructions_path: str | Path | None, pool: str | Path | None,
           benchmark: str | Path | None) -> pl.DataFrame:
    """The prompts that state no length among the consumers' inputs: source, id, prompt (each prompt once)."""
    rows: list[dict[str, str]] = []
    if instructions_path is not None:
        instructions = validate(read_table(instructions_path), Instructions, instructions_path)
        rows += [{"source": "selected", "id": r["id"], "prompt": r["prompt"]}
                 for r in instructions.filter(pl.col("required_words").is_null()).iter_rows(named=True)]
    for source, path in (("grpo_pool", pool), ("longbench", benchmark)):
        if path is not None:
            bench = read_benchmark(path, allow_unstated=True)
            rows += [{"source": source, "id": str(r["index"]), "prompt": r["prompt"]}
                     for r in bench.filter(pl.col("required").is_null()).iter_rows(named=True)]
    table = pl.DataFrame(rows, schema={"source": pl.Utf8, "id": pl.Utf8, "prompt": pl.Utf8})
    return table.unique("prompt", keep="first", maintain_order=True)


def agreement_set(benchmark: str | Path, first: int | None) -> pl.DataFrame:
    """The first ``first`` requests of ``benchmark`` that state a length: index, stated, the prompt with its
    length statement removed."""
    bench = read_benchmark(benchmark, allow_unstated=True).filter(pl.col("required").is_not_null())
    if first is not None:
        bench = bench.head(first)
    return bench.select("index", pl.col("required").alias("stated"),
                        pl.col("prompt").map_elements(hide_stated_length, return_dtype=pl.Utf8).alias("hidden"))


def agreement_metrics(stated: list[int], ranges: list[tuple[int, int] | None]) -> dict[str, Any]:
    """The predicted ranges against the lengths the prompts stated (a None range: the judge gave none)."""
    pairs = [(s, r) for s, r in zip(stated, ranges, strict=True) if r is not None]
    mids = [(lo + hi) / 2 for _, (lo, hi) in pairs]
    return {
        "asked": len(stated), "predicted": len(pairs),
        "in_range_share": rounded(statistics.fmean(lo <= s <= hi for s, (lo, hi) in pairs), 4) if pairs else None,
        "S_l_of_stated": rounded(statistics.fmean(range_length_score(lo, hi, s) for s, (lo, hi) in pairs))
        if pairs else None,
        "midpoint_to_stated_median": rounded(statistics.median(m / s for m, (s, _) in zip(mids, pairs,
                                                                                             strict=True)), 3)
        if pairs else None,
        "spearman": rounded(spearman([s for s, _ in pairs], mids), 3),
    }


def run_length_target(cfg: LengthTargetConfig, judge: JudgeConfig, settings: ClientSettings,
                      instructions: str | Path | None, pool: str | Path | None, benchmark: str | Path,
                      output: str | Path, failures: str | Path, metrics: str | Path,
                      timings: str | Path | None = None) -> dict[str, Any]:
    """Targets for every prompt that needs one, and the agreement figures; empty outputs when disabled."""
    if not cfg.enabled:
        write_checked(empty(LengthTargets), LengthTargets, output)
        write_failures([], failures)
        return write_metrics({"enabled": False}, metrics, timings)
    need = wanted(instructions, pool, benchmark)
    check = agreement_set(benchmark, cfg.agreement)
    prompts = need["prompt"].to_list() + check["hidden"].to_list()

    async def work(llm: LLMClient) -> list[tuple[tuple[int, int] | None, int, str | None]]:
        return await run_each(prompts, lambda p: length_target(llm, p, judge), desc="length targets",
                              unit="prompt")

    outcomes, stats = run_with_llm(judge.model, settings, work)
    mine, theirs = outcomes[:need.height], outcomes[need.height:]
    rows = [{**r, "min_words": o[0][0], "max_words": o[0][1], "attempts": o[1]}
            for r, o in zip(need.iter_rows(named=True), mine, strict=True) if o[0] is not None]
    write_checked(pl.DataFrame(rows, schema=empty(LengthTargets).schema), LengthTargets, output)
    failed = [failure_row(STAGE, failure_reason(o[2] or ""), o[2] or "", instruction_id=f"{r['source']}/{r['id']}",
                          attempts=o[1])
              for r, o in zip(need.iter_rows(named=True), mine, strict=True) if o[0] is None]
    failed += [failure_row(STAGE, failure_reason(o[2] or ""), f"agreement: {o[2]}",
                           instruction_id=f"agreement/{r['index']}", attempts=o[1])
               for r, o in zip(check.iter_rows(named=True), theirs, strict=True) if o[0] is None]
    write_failures(failed, failures)
    widths = [hi - lo for lo, hi in (r[0] for r in mine if r[0] is not None)]
    result = {"enabled": True,
              "targets": {"needed": need.height, "predicted": len(rows),
                          "by_source": {s: int(n) for s, n in need["source"].value_counts().sort("source").iter_rows()},
                          "median_width_words": rounded(statistics.median(widths), 1) if widths else None},
              "agreement": agreement_metrics(check["stated"].to_list(), [o[0] for o in theirs]),
              "failures": reason_counts(failed), "judge_llm": stats.as_metrics()}
    return write_metrics(result, metrics, timings)


def read_targets(path: str | Path | None) -> dict[str, tuple[int, int]]:
    """prompt -> (min_words, max_words) from a ``length_target`` table; {} for None (no targets)."""
    if path is None:
        return {}
    table = validate(read_table(path), LengthTargets, path)
    return {p: (lo, hi) for p, lo, hi in table.select("prompt", "min_words", "max_words").iter_rows()}


def with_targets(bench: pl.DataFrame, targets: dict[str, tuple[int, int]]) -> pl.DataFrame:
    """A benchmark table (``read_benchmark``) with ``required_min`` and ``targeted`` added: the stated length
    where there is one (then ``required_min == required``), else the prompt's target (``targeted``):
    ``required`` its top (which caps the answer and names its bucket) and ``required_min`` its bottom. A request
    with neither keeps ``required`` null."""
    low = pl.Series([targets.get(p, (None, None))[0] for p in bench["prompt"].to_list()], dtype=pl.Int64)
    high = pl.Series([targets.get(p, (None, None))[1] for p in bench["prompt"].to_list()], dtype=pl.Int64)
    out = bench.with_columns((pl.col("required").is_null() & high.is_not_null()).alias("targeted"),
                             pl.coalesce(pl.col("required"), high).alias("required"),
                             pl.coalesce(pl.col("required"), low).alias("required_min"))
    return out.with_columns(pl.coalesce(pl.col("bucket"), pl.col("required").map_elements(
        bucket_of, return_dtype=pl.Utf8)).alias("bucket"))
