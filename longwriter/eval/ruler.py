"""Stage ``ruler`` (LongWrite-Ruler): how long can each model write when asked for L words?

Each listed model answers every request of the ruler file (8 requests, 4 zh + 4 en, per length L). Per model:
the mean produced words per L, the largest L whose mean reaches ``reach`` x L ("max output length", the paper's,
on the words produced), the same two on the effective words (those written before an answer fell into a loop,
``longwriter.repetition``), the share of answers that fell into a loop, the share cut by the token limit and how
many answers had a limit below the lossless one or below the words asked (``longwriter.generation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.benchmark import read_benchmark
from longwriter.eval.answers import EvalConfig, answer_metrics
from longwriter.eval.plots import length_png
from longwriter.failures import write_failures
from longwriter.files import write_csv, write_metrics
from longwriter.generation import generate_answers
from longwriter.llm import ClientSettings
from longwriter.schemas import Answers, write_checked


@dataclass(frozen=True)
class RulerConfig:
    input: str = "data/eval/ruler.jsonl"
    # the paper's: 1000, 2000, 5000, 10000, 20000, 30000; each must occur in the input file
    lengths: tuple[int, ...] = (50, 100)
    # a length is reached when the mean answer has at least this fraction of the words asked for
    reach: float = 0.8

    def __post_init__(self) -> None:
        if not self.lengths or any(n <= 0 for n in self.lengths):
            raise ValueError("lengths must be a non-empty list of positive integers")
        if not 0 < self.reach <= 1:
            raise ValueError("reach must be within (0, 1]")


def _per_length(answers: pl.DataFrame, column: str, lengths: tuple[int, ...], reach: float
                 ) -> tuple[dict[str, float], int]:
    """Mean of ``column`` per required length (the listed ones present), and the largest length it reaches."""
    means = {int(n): float(m) for n, m in answers.group_by("required").agg(pl.col(column).mean()).iter_rows()}
    reached = [n for n in sorted(lengths) if n in means and means[n] >= reach * n]
    return {str(n): round(means[n], 1) for n in sorted(lengths) if n in means}, max(reached, default=0)


def ruler_metrics(answers: pl.DataFrame, lengths: tuple[int, ...], reach: float) -> dict[str, Any]:
    """Per model: mean words per length and max output length, on the words produced (the paper's) and on the
    effective words; degenerate and truncated shares; limits below lossless and below the ask."""
    out: dict[str, Any] = {}
    for model in sorted(answers["model"].unique().to_list()):
        mine = answers.filter(pl.col("model") == model)
        mean_words, max_length = _per_length(mine, "words", lengths, reach)
        mean_effective, max_effective = _per_length(mine, "effective_words", lengths, reach)
        out[model] = {
            "answers": mine.height,
            "max_output_length": max_length,
            "max_output_length_effective": max_effective,
            **answer_metrics(mine),
            "mean_words": mean_words,
            "mean_effective_words": mean_effective,
            "mean_words_by_lang": {
                lang: round(float(mine.filter(pl.col("lang") == lang)["words"].mean()), 1)
                for lang in sorted(mine["lang"].unique().to_list())},
        }
    return out


def run_ruler(cfg: RulerConfig, eval_cfg: EvalConfig, settings: ClientSettings, output: str | Path,
              failures: str | Path, metrics: str | Path, plot_csv: str | Path, plot_png: str | Path,
              timings: str | Path | None = None) -> dict[str, Any]:
    """The whole stage: answers, failures, metrics and the required-vs-produced curve (CSV + PNG)."""
    bench = read_benchmark(cfg.input, list(cfg.lengths))
    answers, failed, stats = generate_answers(bench, eval_cfg.models, eval_cfg.sampling, settings, "ruler",
                                              cap=eval_cfg.length_cap)
    write_checked(answers, Answers, output)
    write_failures(failed, failures)
    result = ruler_metrics(answers, cfg.lengths, cfg.reach)
    for model in eval_cfg.models:
        mine = result.setdefault(model.name, {"answers": 0, "max_output_length": 0})
        mine["failed"] = sum(1 for f in failed if f["instruction_id"].startswith(f"{model.name}/"))
        mine["llm"] = stats[model.name].as_metrics()
    curve = (answers.group_by("model", "required").agg(pl.col("words").mean().round(1).alias("produced"))
             .sort("model", "required"))
    write_csv(curve, plot_csv)
    length_png(curve, plot_png, "LongWrite-Ruler: mean words produced per required length", lines=True)
    write_metrics(result, metrics, timings)
    return result
