"""Stage ``segments``: how a long answer changes along its length.

Each answer of each text set (the AgentWrite answers, and each evaluated model's LongBench-Write answers) is cut
into ``parts`` equal runs of the paper's word units (``longwriter.wordcount.word_units``); per part:

- ``words``: its word units;
- ``distinct_n``: distinct n-grams / n-grams inside the part (low: the part says the same few things);
- ``repeats_earlier``: the share of the part's n-grams that already occurred anywhere before it in the answer
  (high: the part copies earlier text, as a loop does).

- ``quality`` (with ``judge: true``): the judge's six ratings of the part (S_q's 0-100 scale), given the request
  and the answer's text before the part (``longwriter.judge.part_messages``), for the first
  ``judge_answers`` measured answers of each set; a part the judge could not rate goes to the failures table.

An n-gram belongs to the part it lies in entirely. Answers with fewer than ``min_words`` words are left out and
counted (``short``): a 40-word answer cut in four says nothing about position. Per set, the means per part make
the curve (``plots/segments.csv``); the metrics give the first and last part and the drop between them.

Each text has an id (the sample's ``id`` in the AgentWrite set, the request's ``index`` in a model's), and the
measures of every part of every measured text are the ``SegmentParts`` table (``data/eval/segments.parquet``:
set, text_id, part, words, distinct_n, repeats_earlier, quality). A text too short to measure is a failures row
(``too_short``, ``instruction_id`` ``set/text_id``), so every text is either rows of the table or one failures row;
a part the judge could not rate keeps its row (quality null) and has a failures row with ``section`` its part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.checks import positive_int
from longwriter.failures import Reason, failure_row, reason_counts, write_failures
from longwriter.files import read_table, write_csv, write_metrics
from longwriter.judge import DIMENSIONS, JudgeConfig, RatingOutcome, rate_part
from longwriter.llm import ClientSettings, LLMClient, run_with_llm
from longwriter.llm.runner import run_each
from longwriter.schemas import Answers, LongSamples, SegmentParts, empty, validate, write_checked
from longwriter.scoring import dimension_score, quality_score
from longwriter.wordcount import cut_by_units, word_units

AGENTWRITE = "agentwrite"

# one text of a set: (text_id, request, text); its unit key is f"{set}/{text_id}"
Text = tuple[str, str, str]


@dataclass(frozen=True)
class SegmentsConfig:
    """The ``segments`` section."""

    parts: int = 4
    n: int = 2                 # n-gram length of distinct_n and repeats_earlier
    min_words: int = 100
    # rate each part with the judge (the judge section's model) given the text before it: parts calls per answer
    judge: bool = False
    judge_answers: int | None = 4  # per text set, the first N measured answers are rated (None: all)

    def __post_init__(self) -> None:
        for name, low in (("parts", 2), ("n", 1), ("min_words", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        positive_int("judge_answers", self.judge_answers, optional=True)
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


def text_sets(samples_path: str | Path, answers_path: str | Path) -> dict[str, list[Text]]:
    """The (text_id, request, answer) texts to measure, per set: the AgentWrite answers (text_id: the sample's id),
    then each model's first sample (text_id: the request's index), by index."""
    samples = validate(read_table(samples_path), LongSamples, samples_path)
    answers = validate(read_table(answers_path), Answers, answers_path).filter(pl.col("sample") == 0)
    sets = {AGENTWRITE: [(i, m[0]["content"], m[-1]["content"])
                         for i, m in zip(samples["id"].to_list(), samples["messages"].to_list(), strict=True)]}
    for model in answers["model"].unique(maintain_order=True).to_list():
        rows = answers.filter(pl.col("model") == model).sort("index")
        sets[model] = [(str(i), q, t) for i, q, t in
                       zip(rows["index"].to_list(), rows["prompt"].to_list(), rows["text"].to_list(), strict=True)]
    return sets


# per set, per measured text (by text_id, in the set's order): its parts' measures (``part_measures``)
Measured = dict[str, dict[str, list[dict[str, float | int]]]]


def measure_texts(sets: dict[str, list[Text]], cfg: SegmentsConfig) -> tuple[Measured, list[dict[str, Any]]]:
    """Every text of at least ``min_words`` words, measured per part; a ``too_short`` failures row for each other."""
    measured: Measured = {}
    short = []
    for name, texts in sets.items():
        measured[name] = {}
        for text_id, _, text in texts:
            units = word_units(text)
            if len(units) >= cfg.min_words:
                measured[name][text_id] = part_measures(units, cfg.parts, cfg.n)
            else:
                short.append(failure_row("segments", Reason.TOO_SHORT,
                                         f"{len(units)} words, fewer than segments.min_words ({cfg.min_words})",
                                         instruction_id=f"{name}/{text_id}"))
    return measured, short


# a set's rated parts: per rated text (by text_id, in the set's order), per part, the quality (None: the judge
# could not rate it)
PartQuality = dict[str, dict[str, list[float | None]]]


def judge_parts(sets: dict[str, list[Text]], measured: Measured, cfg: SegmentsConfig, judge: JudgeConfig,
                settings: ClientSettings) -> tuple[PartQuality, list[dict[str, Any]], dict[str, Any]]:
    """The judge's quality of every part of the first ``judge_answers`` measured answers of each set; the failure
    rows of the parts it could not rate; its call stats."""
    jobs = []  # (set, text_id, part number, request, text before, part)
    for name, texts in sets.items():
        rated = [(i, q, t) for i, q, t in texts if i in measured[name]]
        for text_id, request, text in rated[:cfg.judge_answers]:
            pieces = cut_by_units(text, cfg.parts)
            jobs += [(name, text_id, k, request, "".join(pieces[:k]), pieces[k]) for k in range(cfg.parts)]

    async def work(llm: LLMClient) -> list[RatingOutcome]:
        return await run_each(jobs, lambda job: rate_part(llm, job[3], job[4], job[5], judge),
                              desc="segments: judge", unit="part")

    outcomes, stats = run_with_llm(judge.model, settings, work)
    quality: PartQuality = {}
    failures = []
    for (name, text_id, k, *_), outcome in zip(jobs, outcomes, strict=True):
        answer = quality.setdefault(name, {}).setdefault(text_id, [None] * cfg.parts)
        if outcome.rating is None:
            failures.append(failure_row("segments", outcome.reason, outcome.error,
                                        instruction_id=f"{name}/{text_id}", section=k + 1,
                                        attempts=outcome.attempts))
        else:
            answer[k] = quality_score({d: dimension_score([outcome.rating.scores[d]]) for d in DIMENSIONS})
    return quality, failures, stats.as_metrics()


def segment_metrics(sets: dict[str, list[Text]], measured_texts: Measured, cfg: SegmentsConfig,
                    quality: PartQuality | None = None) -> tuple[dict[str, Any], pl.DataFrame]:
    """Per set: answers measured and left out, the mean per part, first vs last part; and the curve's rows."""
    metrics: dict[str, Any] = {}
    rows = []
    for name, texts in sets.items():
        measured = list(measured_texts[name].values())
        mean = [{key: round(sum(a[k][key] for a in measured) / len(measured), 4)
                 for key in ("words", "distinct_n", "repeats_earlier")} for k in range(cfg.parts)] if measured else []
        rated = list((quality or {}).get(name, {}).values())
        by_part = [[q[k] for q in rated if q[k] is not None] for k in range(cfg.parts)]
        part_quality = [round(sum(v) / len(v), 4) if v else None for v in by_part]
        for k, m in enumerate(mean):
            rows.append({"model": name, "part": k + 1, **m, "quality": part_quality[k]})
        first, last = (mean[0], mean[-1]) if mean else ({}, {})
        metrics[name] = {
            "answers": len(measured), "short": len(texts) - len(measured),
            "first": first or None, "last": last or None,
            # positive: the last part is worse than the first
            "distinct_n_drop": round(first["distinct_n"] - last["distinct_n"], 4) if mean else None,
            "repeats_earlier_rise": round(last["repeats_earlier"] - first["repeats_earlier"], 4) if mean else None,
        }
        if quality is not None:
            q_first, q_last = part_quality[0], part_quality[-1]
            metrics[name] |= {
                "judged_answers": len(rated), "quality_first": q_first, "quality_last": q_last,
                "quality_drop": round(q_first - q_last, 4) if q_first is not None and q_last is not None else None,
            }
    curve = pl.DataFrame(rows, schema={"model": pl.Utf8, "part": pl.Int64, "words": pl.Float64,
                                       "distinct_n": pl.Float64, "repeats_earlier": pl.Float64,
                                       "quality": pl.Float64})
    return metrics, curve


def segment_parts(measured: Measured, quality: PartQuality | None = None) -> pl.DataFrame:
    """The ``SegmentParts`` table: one row per measured text per part, with the judge's quality where it rated it."""
    rows = []
    for name, texts in measured.items():
        rated = (quality or {}).get(name, {})
        for text_id, parts in texts.items():
            q = rated.get(text_id) or [None] * len(parts)
            rows += [{"set": name, "text_id": text_id, **p, "quality": q[k]} for k, p in enumerate(parts)]
    return pl.DataFrame(rows, schema=empty(SegmentParts).schema)


def run_segments(cfg: SegmentsConfig, samples_path: str | Path, answers_path: str | Path, output_path: str | Path,
                 metrics_path: str | Path, plot_path: str | Path, failures_path: str | Path,
                 judge: JudgeConfig | None = None, settings: ClientSettings | None = None,
                 timings: str | Path | None = None) -> dict[str, Any]:
    sets = text_sets(samples_path, answers_path)
    measured, failure_rows = measure_texts(sets, cfg)
    quality, judge_failures, judge_llm = None, [], None
    if cfg.judge:
        if judge is None or settings is None:
            raise ValueError("segments.judge needs the judge and llm settings")
        quality, judge_failures, judge_llm = judge_parts(sets, measured, cfg, judge, settings)
    failure_rows += judge_failures
    metrics, curve = segment_metrics(sets, measured, cfg, quality)
    result = {"parts": cfg.parts, "n": cfg.n, "min_words": cfg.min_words, "judge": cfg.judge, "sets": metrics,
              "failures": reason_counts(failure_rows)}
    if cfg.judge:
        result |= {"judge_failed": len(judge_failures), "judge_llm": judge_llm}
    write_checked(segment_parts(measured, quality), SegmentParts, output_path)
    write_failures(failure_rows, failures_path)
    write_csv(curve, plot_path)
    write_metrics(result, metrics_path, timings)
    return result
