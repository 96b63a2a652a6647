"""Stage ``agreement``: how far a second judge agrees with the configured one.

A user who judges with a local model wants to know whether it can stand in for an expensive one. The reference
judge (``agreement.reference``, e.g. gpt-4o) rates a seeded sample of the LongBench-Write answers that the judge
rated in ``longbench``, with the same prompt. Over the answers both rated:

- per dimension: Spearman's rho and Kendall's tau-b between the two judges' 1-5 scores (None when either judge
  gave every answer the same score: no ranking to agree on), the share of exact agreement and of agreement
  within one point;
- S_q of each judge over those answers (0-100, as ``longbench`` computes it) and the difference reference minus
  judge, with a paired bootstrap percentile interval over answers.

A warning goes to the stage's output (and ``warning`` in its metrics) when a dimension's Spearman is below
``min_spearman`` or undefined. With the defaults the reference is the embedded judge itself, asked again at
temperature 1.0 with another seed: the figures are then the judge's agreement with itself (test-retest), i.e. how
much its ratings change when it is asked again with sampling, its noise; they say nothing about its agreement with
any other judge, and are not a comparison with a stronger one.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.checks import within
from longwriter.failures import failure_row, reason_counts, write_failures
from longwriter.files import read_table, write_csv, write_metrics
from longwriter.judge import DIMENSIONS, JudgeConfig, judge_answers
from longwriter.llm import ClientSettings, ModelSpec, Sampling
from longwriter.rank_correlation import kendall_tau_b, spearman
from longwriter.schemas import Answers, JudgeRatings, Scores, validate, write_checked
from longwriter.scoring import dimension_score, quality_score


@dataclass(frozen=True)
class AgreementConfig:
    """The ``agreement`` section."""

    # the second judge; default: the embedded model, i.e. the judge's agreement with itself (see the module)
    reference: ModelSpec = field(default_factory=ModelSpec)
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=1.0, top_p=1.0, max_tokens=768, seed=1))
    sample: int | None = 2      # answers the reference rates, drawn from those the judge rated (None: all)
    seed: int = 0
    bootstrap: int = 1000
    level: float = 0.95
    min_spearman: float = 0.3   # below it on any dimension, the stage warns

    def __post_init__(self) -> None:
        within("min_spearman", self.min_spearman, -1, 1)
        if self.sample is not None and self.sample < 2:
            raise ValueError("sample must be at least 2 (or null: all)")
        if self.bootstrap < 0 or not 0 < self.level < 1:
            raise ValueError("bootstrap must be >= 0 and level within (0, 1)")


def agreement_metrics(judge: list[dict[str, int]], reference: list[dict[str, int]], cfg: AgreementConfig
                      ) -> dict[str, Any]:
    """The figures over paired ratings (``judge[i]`` and ``reference[i]`` rate the same answer)."""
    dims: dict[str, Any] = {}
    for d in DIMENSIONS:
        a, b = [r[d] for r in judge], [r[d] for r in reference]
        diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
        rho, tau = spearman(a, b), kendall_tau_b(a, b)
        dims[d] = {"spearman": _round(rho), "kendall_tau_b": _round(tau),
                   "exact": _round(sum(x == 0 for x in diffs) / len(diffs)) if diffs else None,
                   "within_one": _round(sum(x <= 1 for x in diffs) / len(diffs)) if diffs else None}
    q_judge = [_quality(r) for r in judge]
    q_ref = [_quality(r) for r in reference]
    diff = [r - j for j, r in zip(q_judge, q_ref, strict=True)]
    rng = random.Random(cfg.seed)
    draws = sorted(sum(diff[rng.randrange(len(diff))] for _ in diff) / len(diff)
                   for _ in range(cfg.bootstrap)) if diff else []
    tail = (1 - cfg.level) / 2
    interval = ([_round(draws[int(tail * (len(draws) - 1))]), _round(draws[int((1 - tail) * (len(draws) - 1))])]
                if draws else None)
    rhos = [m["spearman"] for m in dims.values()]
    low = [d for d, m in dims.items() if m["spearman"] is None or m["spearman"] < cfg.min_spearman]
    warning = (f"the reference judge's Spearman is below {cfg.min_spearman} (or undefined) on {', '.join(low)}: "
               f"do not let the judge stand in for the reference on these" if low else None)
    return {
        "rated_by_both": len(judge), "dimensions": dims,
        "mean_spearman": _round(_mean([r for r in rhos if r is not None])),
        "S_q": {"judge": _round(_mean(q_judge)), "reference": _round(_mean(q_ref)),
                "reference_minus_judge": _round(_mean(diff)), "interval": interval, "level": cfg.level,
                "bootstrap": cfg.bootstrap},
        "warning": warning,
    }


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _quality(scores: dict[str, int]) -> float:
    value = quality_score({d: dimension_score([scores[d]]) for d in DIMENSIONS})
    assert value is not None
    return value


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def sample_rated(scores: pl.DataFrame, answers: pl.DataFrame, cfg: AgreementConfig) -> pl.DataFrame:
    """The answers the judge rated (all six scores), joined to their request and text, a seeded sample of them."""
    rated = scores.filter(pl.all_horizontal(pl.col(d).is_not_null() for d in DIMENSIONS))
    rated = rated.join(answers.filter(pl.col("sample") == 0).select("model", "index", "prompt", "text"),
                       on=["model", "index"], how="inner").sort("model", "index")
    if cfg.sample is not None and rated.height > cfg.sample:
        rated = rated.sample(cfg.sample, seed=cfg.seed).sort("model", "index")
    return rated


def run_agreement(cfg: AgreementConfig, judge: JudgeConfig, settings: ClientSettings,
                  scores_path: str | Path, answers_path: str | Path, output: str | Path, failures: str | Path,
                  metrics_path: str | Path, plot_path: str | Path, timings: str | Path | None = None) -> dict[str, Any]:
    scores = validate(read_table(scores_path), Scores, scores_path)
    answers = validate(read_table(answers_path), Answers, answers_path)
    rows = list(sample_rated(scores, answers, cfg).iter_rows(named=True))
    reference = dataclasses.replace(judge, model=cfg.reference, sampling=cfg.sampling, prompt_sampling=cfg.sampling)
    # the judge's own loop (concurrent, a progress bar), with the reference in the judge's place
    asked = pl.DataFrame([{"prompt": r["prompt"], "text": r["text"]} for r in rows],
                         schema={"prompt": pl.Utf8, "text": pl.Utf8})
    outcomes, llm_metrics = judge_answers(asked, reference, settings, "agreement: reference judge")
    table, failure_rows, mine, theirs = [], [], [], []
    for row, outcome in zip(rows, outcomes, strict=True):
        if outcome.rating is None:
            failure_rows.append(failure_row("agreement", outcome.reason, outcome.error,
                                            instruction_id=f"{row['model']}:{row['index']}", attempts=outcome.attempts))
            continue
        mine.append({d: row[d] for d in DIMENSIONS})
        theirs.append(outcome.rating.scores)
        for who, ratings in (("judge", mine[-1]), ("reference", theirs[-1])):
            table.append({"model": row["model"], "index": row["index"], "judge": who, **ratings,
                          "quality_score": _quality(ratings)})
    write_checked(pl.DataFrame(table, schema=_ratings_schema()),
                  JudgeRatings, output)
    write_failures(failure_rows, failures)
    result = {"reference": _describe(cfg.reference), "sampled": len(rows), "reference_failed": len(failure_rows),
              "failures": reason_counts(failure_rows), **agreement_metrics(mine, theirs, cfg),
              "llm": llm_metrics}
    write_csv(pl.DataFrame([{"dimension": d, **m} for d, m in result["dimensions"].items()],
                           schema={"dimension": pl.Utf8, "spearman": pl.Float64, "kendall_tau_b": pl.Float64,
                                   "exact": pl.Float64, "within_one": pl.Float64}), plot_path)
    write_metrics(result, metrics_path, timings)
    return result


def _ratings_schema() -> dict[str, Any]:
    return {"model": pl.Utf8, "index": pl.Int64, "judge": pl.Utf8, **dict.fromkeys(DIMENSIONS, pl.Int64),
            "quality_score": pl.Float64}


def _describe(spec: ModelSpec) -> str:
    """The reference judge in words for the metrics (never a key; a URL without credentials)."""
    if spec.provider == "embedded":
        return f"embedded:{spec.gguf_path or 'default'}"
    return f"{spec.provider}:{spec.model or spec.path}"
