"""Stage ``segments``: how a long answer changes along its length.

Each answer of each text set (the AgentWrite answers, and each evaluated model's LongBench-Write answers) is cut
into ``parts`` equal runs of the paper's word units (``longwriter.wordcount.word_units``); per part:

- ``words``: its word units;
- ``distinct_n``: distinct n-grams / n-grams inside the part (low: the part says the same few things);
- ``repeats_earlier``: the share of the part's n-grams that already occurred anywhere before it in the answer
  (high: the part copies earlier text, as a loop does).

An n-gram belongs to the part it lies in entirely. Answers with fewer than ``min_words`` words are left out and
counted (``short``): a 40-word answer cut in four says nothing about position. Per set, the means per part make
the curve (``plots/segments.csv``); the metrics give the first and last part and the drop between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.files import read_table, write_csv, write_json
from longwriter.schemas import Answers, LongSamples, validate
from longwriter.wordcount import word_units

AGENTWRITE = "agentwrite"


@dataclass(frozen=True)
class SegmentsConfig:
    """The ``segments`` section."""

    parts: int = 4
    n: int = 2                 # n-gram length of distinct_n and repeats_earlier
    min_words: int = 200

    def __post_init__(self) -> None:
        for name, low in (("parts", 2), ("n", 1), ("min_words", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.min_words < self.parts * self.n:
            raise ValueError(f"min_words must be at least parts x n ({self.parts * self.n}): each part needs an "
                             f"n-gram")


def part_measures(units: Sequence[str], parts: int, n: int) -> list[dict[str, float | int]]:
    """Per part (1-based ``part``): words, distinct_n and repeats_earlier of the word units ``units``."""
    bounds = [k * len(units) // parts for k in range(parts + 1)]
    seen: set[tuple[str, ...]] = set()
    out = []
    for k in range(parts):
        chunk = units[bounds[k]:bounds[k + 1]]
        grams = [tuple(chunk[i:i + n]) for i in range(len(chunk) - n + 1)]
        earlier = sum(1 for g in grams if g in seen)
        out.append({"part": k + 1, "words": len(chunk),
                    "distinct_n": round(len(set(grams)) / len(grams), 4) if grams else 0.0,
                    "repeats_earlier": round(earlier / len(grams), 4) if grams else 0.0})
        # what the next parts may repeat: every n-gram up to this part's end, across the boundary too
        upto = units[:bounds[k + 1]]
        seen.update(tuple(upto[i:i + n]) for i in range(max(0, bounds[k] - n + 1), len(upto) - n + 1))
    return out


def text_sets(samples_path: str | Path, answers_path: str | Path) -> dict[str, list[str]]:
    """The answers to measure, per set: the AgentWrite answers, then each model's (first sample) answers."""
    samples = validate(read_table(samples_path), LongSamples, samples_path)
    answers = validate(read_table(answers_path), Answers, answers_path).filter(pl.col("sample") == 0)
    sets = {AGENTWRITE: [m[-1]["content"] for m in samples["messages"].to_list()]}
    for model in answers["model"].unique(maintain_order=True).to_list():
        sets[model] = answers.filter(pl.col("model") == model).sort("index")["text"].to_list()
    return sets


def segment_metrics(sets: dict[str, list[str]], cfg: SegmentsConfig) -> tuple[dict[str, Any], pl.DataFrame]:
    """Per set: answers measured and left out, the mean per part, first vs last part; and the curve's rows."""
    metrics: dict[str, Any] = {}
    rows = []
    for name, texts in sets.items():
        measured = [part_measures(u, cfg.parts, cfg.n) for u in (word_units(t) for t in texts)
                    if len(u) >= cfg.min_words]
        mean = [{key: round(sum(a[k][key] for a in measured) / len(measured), 4)
                 for key in ("words", "distinct_n", "repeats_earlier")} for k in range(cfg.parts)] if measured else []
        for k, m in enumerate(mean):
            rows.append({"model": name, "part": k + 1, **m})
        first, last = (mean[0], mean[-1]) if mean else ({}, {})
        metrics[name] = {
            "answers": len(measured), "short": len(texts) - len(measured),
            "first": first or None, "last": last or None,
            # positive: the last part is worse than the first
            "distinct_n_drop": round(first["distinct_n"] - last["distinct_n"], 4) if mean else None,
            "repeats_earlier_rise": round(last["repeats_earlier"] - first["repeats_earlier"], 4) if mean else None,
        }
    curve = pl.DataFrame(rows, schema={"model": pl.Utf8, "part": pl.Int64, "words": pl.Float64,
                                       "distinct_n": pl.Float64, "repeats_earlier": pl.Float64})
    return metrics, curve


def run_segments(cfg: SegmentsConfig, samples_path: str | Path, answers_path: str | Path, metrics_path: str | Path,
                 plot_path: str | Path) -> dict[str, Any]:
    metrics, curve = segment_metrics(text_sets(samples_path, answers_path), cfg)
    result = {"parts": cfg.parts, "n": cfg.n, "min_words": cfg.min_words, "sets": metrics}
    write_csv(curve, plot_path)
    write_json(result, metrics_path)
    return result
