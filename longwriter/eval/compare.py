"""Stage ``compare``: which of two models answers the same LongBench-Write request better?

The judge sees each pair twice, in both orders, so a judge that prefers whatever comes first cancels out.
Per request, model a scores 1 for a verdict in its favour, 0.5 for a tie, 0 against; the mean of the two
orders above 0.5 is a win, 0.5 a tie, below a loss. Across every model the pairs name, each verdict is also a
game for an Elo rating (a Bradley-Terry fit with bootstrap intervals, ``longwriter.eval.elo``), reported with
the judge's position bias.

With ``compare.reference`` (a model of eval.models, typically ``provider: answers``: a fixed set of reference
answers), every other model that answered is also paired with it, and the Elo scale puts the reference at 1000:
Arena-Write's protocol, each model rated by its games against the same references.

Every (pair, request asked) ends as one row: a verdicts row, or a failures row (``left_out`` by
``compare.requests``'s sample, or ``unanswered``: one or both of the pair did not answer it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.errors import ConfigError, InputError
from longwriter.eval.elo import elo_ratings
from longwriter.failures import Failures, Reason, failure_row, reason_counts, write_failures
from longwriter.files import read_table, write_csv, write_metrics
from longwriter.judge import JudgeConfig, failure_reason, verdict
from longwriter.llm import ClientSettings, LLMClient, run_with_llm
from longwriter.llm.runner import run_each
from longwriter.schemas import Answers, Comparisons, empty, validate, write_checked

_POINTS = {"a": 1.0, "tie": 0.5, "b": 0.0}


@dataclass(frozen=True)
class CompareConfig:
    # pairs of model names from eval.models, e.g. [[sft, base]]; empty: the stage writes empty outputs
    pairs: tuple[tuple[str, str], ...] = (("sft", "base"),)
    # Elo intervals: resamples of the requests, and their seed
    bootstrap: int = 200
    seed: int = 0
    # requests compared: a sample of this many (seeded), the same for every pair; null: all of them
    requests: int | None = 2
    # a model (eval.models' name) every other model is compared with, and the Elo anchor (1000); null: none
    reference: str | None = None

    def __post_init__(self) -> None:
        for pair in self.pairs:
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"each pair names two different models, got {list(pair)}")
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise ValueError(f"bootstrap must be a non-negative integer, got {self.bootstrap!r}")
        if self.requests is not None and (isinstance(self.requests, bool) or not isinstance(self.requests, int)
                                          or self.requests < 1):
            raise ValueError(f"requests must be a positive integer or null, got {self.requests!r}")


def outcome(a_first: str | None, b_first: str | None) -> str | None:
    """Model a's result from the two orders' verdicts (each 'a', 'b' or 'tie'); None if either failed."""
    if a_first is None or b_first is None:
        return None
    points = (_POINTS[a_first] + _POINTS[b_first]) / 2
    return "win" if points > 0.5 else "tie" if points == 0.5 else "loss"


def compare_metrics(table: pl.DataFrame, pairs: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a, b in pairs:
        mine = table.filter(pl.col("model_a") == a, pl.col("model_b") == b)
        judged = mine.filter(pl.col("outcome").is_not_null())
        n = judged.height
        share = {k: round(int((judged["outcome"] == k).sum()) / n, 4) if n else None for k in ("win", "tie", "loss")}
        agree = int((judged["a_first"] == judged["b_first"]).sum()) if n else 0
        out[f"{a}_vs_{b}"] = {"win_rate": share["win"], "tie_rate": share["tie"], "loss_rate": share["loss"],
                              "judged": n, "failed": mine.height - n,
                              # both orders gave the same verdict: low values mean position bias or noise
                              "order_agreement": round(agree / n, 4) if n else None}
    return out


def unanswered_requests(path: str | Path) -> set[tuple[str, int]]:
    """(model, index) of every request asked that got no answer, from the answering stage's failures table (ids
    ``model/index``; its ``left_out`` rows, requests never asked, are not among them)."""
    out = set()
    for row, failure in enumerate(validate(read_table(path), Failures, path).iter_rows(named=True), start=1):
        if failure["reason"] == Reason.LEFT_OUT:
            continue
        model, _, index = failure["instruction_id"].rpartition("/")
        if not model or not index.isdigit():
            raise InputError(path, f"{failure['instruction_id']!r} is no model/index id", row=row,
                             column="instruction_id")
        out.add((model, int(index)))
    return out


def run_compare(cfg: CompareConfig, judge: JudgeConfig, settings: ClientSettings, answers_path: str | Path,
                output: str | Path, failures: str | Path, metrics: str | Path,
                elo_plot: str | Path | None = None, timings: str | Path | None = None,
                answer_failures: str | Path | None = None) -> dict[str, Any]:
    """The whole stage. The requests are every request asked: those in the answers table (any model, any sample)
    and, with ``answer_failures`` (the answering stage's failures table), those no model answered. Each (pair,
    request) ends as exactly one row: a ``left_out`` failures row when ``compare.requests`` samples it out, else
    a verdicts row when both models answered it (a failed judgement adds a failures row to it), else an
    ``unanswered`` failures row (one or both of the pair did not answer)."""
    full = validate(read_table(answers_path), Answers, answers_path)
    failed = unanswered_requests(answer_failures) if answer_failures is not None else set()
    present = set(full["model"].unique().to_list()) | {m for (m, _) in failed}
    if cfg.reference is not None:
        if cfg.reference not in present:
            raise ConfigError(f"compare.reference names model {cfg.reference!r} with no answers in {answers_path}")
        against = tuple((m, cfg.reference) for m in sorted(present - {cfg.reference}))
        cfg = dataclasses.replace(cfg, pairs=tuple(dict.fromkeys((*cfg.pairs, *against))))
    for pair in cfg.pairs:
        unknown = [m for m in pair if m not in present]
        if unknown:
            raise ConfigError(f"compare.pairs names model(s) {unknown} with no answers in {answers_path}")
    by_key = {(r["model"], r["index"]): r for r in full.filter(pl.col("sample") == 0).iter_rows(named=True)}
    asked = sorted(set(full["index"].to_list()) | {i for (_, i) in failed})
    indices = asked
    if cfg.requests is not None and cfg.requests < len(asked):
        indices = sorted(random.Random(cfg.seed).sample(asked, cfg.requests))
    left_out = [failure_row("compare", Reason.LEFT_OUT, f"not in the sample of compare.requests {cfg.requests}",
                            instruction_id=f"{a}_vs_{b}/{i}")
                for a, b in cfg.pairs for i in sorted(set(asked) - set(indices))]
    jobs = [(a, b, i) for a, b in cfg.pairs for i in indices if (a, i) in by_key and (b, i) in by_key]
    # a request one or both of the two models did not answer cannot be compared: recorded, not skipped in silence
    unanswered = [failure_row("compare", Reason.UNANSWERED,
                              f"no answer from {', '.join(m for m in (a, b) if (m, i) not in by_key)}",
                              instruction_id=f"{a}_vs_{b}/{i}")
                  for a, b in cfg.pairs for i in indices if (a, i) not in by_key or (b, i) not in by_key]

    async def work(llm: LLMClient) -> list[dict[str, Any]]:
        async def one(job: tuple[str, str, int]) -> dict[str, Any]:
            a, b, i = job
            request, ta, tb = by_key[(a, i)]["prompt"], by_key[(a, i)]["text"], by_key[(b, i)]["text"]
            (v1, n1, e1), (v2, n2, e2) = await asyncio.gather(verdict(llm, request, ta, tb, judge),
                                                              verdict(llm, request, tb, ta, judge))
            a_first = {"A": "a", "B": "b", "tie": "tie"}.get(v1) if v1 else None
            b_first = {"A": "b", "B": "a", "tie": "tie"}.get(v2) if v2 else None
            return {"model_a": a, "model_b": b, "index": i, "a_first": a_first, "b_first": b_first,
                    "outcome": outcome(a_first, b_first), "attempts": n1 + n2, "error": e1 or e2}
        return await run_each(jobs, one, desc="compare", unit="pair")

    rows, stats = run_with_llm(judge.model, settings, work) if jobs else ([], None)
    table = pl.DataFrame([{k: v for k, v in r.items() if k != "error"} for r in rows],
                         schema=empty(Comparisons).schema).sort("model_a", "model_b", "index")
    write_checked(table, Comparisons, output)
    failure_rows = unanswered + [
        failure_row("compare", failure_reason(r["error"]), r["error"],
                    instruction_id=f"{r['model_a']}_vs_{r['model_b']}/{r['index']}", attempts=r["attempts"])
        for r in rows if r["outcome"] is None] + left_out
    write_failures(failure_rows, failures)
    result = compare_metrics(table, cfg.pairs)
    for a, b in cfg.pairs:
        result[f"{a}_vs_{b}"]["unanswered"] = sum(1 for f in unanswered
                                                  if f["instruction_id"].startswith(f"{a}_vs_{b}/"))
    result["failures"] = reason_counts(failure_rows)
    result["requests"] = len(indices)
    result["left_out_by_requests"] = len(asked) - len(indices)
    models = list(dict.fromkeys(m for pair in cfg.pairs for m in pair))
    result["elo"] = elo_ratings(table, models, cfg.bootstrap, cfg.seed, anchor=cfg.reference)
    result["pairs"] = [list(pair) for pair in cfg.pairs]
    if elo_plot is not None:
        ratings = result["elo"]["ratings"]
        write_csv(pl.DataFrame({"model": models, "elo": [ratings[m]["elo"] for m in models],
                                "ci_low": [ratings[m]["ci_low"] for m in models],
                                "ci_high": [ratings[m]["ci_high"] for m in models]},
                               schema={"model": pl.Utf8, "elo": pl.Float64, "ci_low": pl.Float64,
                                       "ci_high": pl.Float64}), elo_plot)
    if stats is not None:
        result["judge_llm"] = stats.as_metrics()
    write_metrics(result, metrics, timings)
    return result
