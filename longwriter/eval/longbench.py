"""Stages ``longbench_answer`` and ``longbench`` (LongBench-Write): answers, then length and quality scores.

Answering and judging are separate stages so that changing the judge re-judges without regenerating, and
changing a model under test regenerates only what the response cache has not seen. Scores follow the paper:
S_l per answer from the word counts, S_q from the judge's six 1-5 ratings, S = (S_l + S_q) / 2, overall, per
length bucket and per language. Beside the paper's S_l (on the words produced, the headline) stands
``S_l_effective``, on the words written before an answer fell into a loop (``longwriter.repetition``): a model
that loops up to the requested length scores well on the first and not on the second.

A request that states no length (no ``length`` field) is asked only with a length target
(``longwriter.length_target``): capped by the range's top, in the top's bucket, and its S_l is
``range_length_score`` (100 inside the range). Without one it is not asked: a ``no_required_length`` row. Run
without a targets table (``--targets``, as the evaluation pipeline does), such a request is an input error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.benchmark import read_benchmark
from longwriter.errors import InputError
from longwriter.eval.answers import EvalConfig, answer_metrics
from longwriter.eval.plots import length_png
from longwriter.failures import Failures, Reason, failure_row, write_failures
from longwriter.files import read_table, write_csv, write_metrics
from longwriter.generation import generate_answers
from longwriter.judge import DIMENSIONS, JudgeConfig, RatingOutcome, judge_answers
from longwriter.length_target import read_targets, with_targets
from longwriter.llm import ClientSettings
from longwriter.schemas import Answers, Scores, empty, validate, write_checked
from longwriter.scoring import BUCKETS, dimension_score, overall, quality_score, range_length_score, rounded


@dataclass(frozen=True)
class LongBenchConfig:
    # any file in LongBench-Write's format (prompt, type, length), e.g. the public 120-prompt set
    input: str = "data/eval/longbench.jsonl"
    # a file of the benchmark's English requests (the public release's English half): its prompts count as en,
    # the others as zh; None: by each request's lang field, else by its script (benchmark.read_benchmark)
    en_file: str | None = None
    # requests asked per language: the first N of each in file order, so a sample keeps the file's language
    # balance and the same requests from run to run; None: all. The others are counted, never asked
    per_lang: int | None = 1

    def __post_init__(self) -> None:
        if self.per_lang is not None and (isinstance(self.per_lang, bool) or not isinstance(self.per_lang, int)
                                          or self.per_lang < 1):
            raise ValueError(f"per_lang must be a positive integer or null (all), got {self.per_lang!r}")


def asked_requests(bench: pl.DataFrame, per_lang: int | None) -> pl.DataFrame:
    """The first ``per_lang`` requests of each language, in file order (None: all)."""
    if per_lang is None:
        return bench
    return bench.filter(pl.int_range(pl.len()).over("lang") < per_lang)


def benchmark_with_targets(path: str | Path, en_file: str | Path | None,
                           targets: str | Path | None) -> pl.DataFrame:
    """The benchmark file's requests with ``required_min`` (``length_target.with_targets``): a request that
    states no length gets its target's range, or keeps a null ``required`` when it has none. Without a targets
    table (the evaluation pipeline) such a request is an error naming its row: most likely the wrong file."""
    return with_targets(read_benchmark(path, en_file=en_file, allow_unstated=targets is not None),
                        read_targets(targets))


def run_longbench_answers(cfg: LongBenchConfig, eval_cfg: EvalConfig, settings: ClientSettings,
                          output: str | Path, failures: str | Path, metrics: str | Path,
                          timings: str | Path | None = None, targets: str | Path | None = None) -> dict[str, Any]:
    """Every listed model answers every request asked (``cfg.per_lang``) once; ``targets``: the length targets
    table (requests that state no length)."""
    in_file = benchmark_with_targets(cfg.input, cfg.en_file, targets)
    sampled = asked_requests(in_file, cfg.per_lang)
    bench = sampled.filter(pl.col("required").is_not_null())
    no_length = [failure_row("longbench_answer", Reason.NO_REQUIRED_LENGTH, "the request states no length and "
                             "has no length target (length_target.enabled)", instruction_id=f"{model.name}/{index}")
                 for model in eval_cfg.models for index in sampled.filter(pl.col("required").is_null())["index"]]
    answers, failed, stats = generate_answers(bench, eval_cfg.models, eval_cfg.sampling, settings,
                                              "longbench_answer", cap=eval_cfg.length_cap)
    write_checked(answers, Answers, output)
    asked = set(sampled["index"].to_list())
    left_out = no_length + [
        failure_row("longbench_answer", Reason.LEFT_OUT, f"past longbench.per_lang {cfg.per_lang} for {lang}",
                    instruction_id=f"{model.name}/{index}")
        for model in eval_cfg.models for index, lang in in_file.select("index", "lang").iter_rows()
        if index not in asked]
    write_failures(failed + left_out, failures)
    result: dict[str, Any] = {}
    for model in eval_cfg.models:
        mine = answers.filter(pl.col("model") == model.name)
        result[model.name] = {
            "answers": mine.height,
            "failed": sum(1 for f in failed if f["instruction_id"].startswith(f"{model.name}/")),
            "mean_words": rounded(mine["words"].mean() if mine.height else None, 1),
            "mean_effective_words": rounded(mine["effective_words"].mean() if mine.height else None, 1),
            **answer_metrics(mine),
            "llm": stats[model.name].as_metrics(),
        }
    # not a model: what of the file was asked, so a sample is never read as the whole benchmark
    result["requests"] = {"in_file": in_file.height, "asked": bench.height,
                          "left_out_by_per_lang": in_file.height - sampled.height,
                          "no_length": sampled.height - bench.height,
                          "length_targets": int(bench["targeted"].sum())}
    write_metrics(result, metrics, timings)
    return result


def _mean_length_score(rows: pl.DataFrame, column: str = "length_score") -> float | None:
    return float(rows[column].mean()) if rows.height else None


def _group_scores(rows: pl.DataFrame) -> dict[str, Any]:
    """S_l over every request asked (an unanswered one scores 0, as a model that errors on long prompts must not
    score higher for it), beside S_l over the answered ones and S_l on the effective words (over every request
    too); S_q over the judged answers."""
    answered = rows.filter(pl.col("answered"))
    judged = answered.filter(pl.col("quality_score").is_not_null())
    dims = {d: dimension_score(judged[d].to_list()) for d in DIMENSIONS}
    s_l = _mean_length_score(rows)
    s_q = quality_score(dims)
    return {"S": rounded(overall(s_l, s_q)), "S_l": rounded(s_l), "S_q": rounded(s_q),
            "S_l_answered": rounded(_mean_length_score(answered)),
            "S_l_effective": rounded(_mean_length_score(rows, "length_score_effective")), "requests": rows.height,
            "answers": answered.height, "judged": judged.height}


def longbench_metrics(scores: pl.DataFrame) -> dict[str, Any]:
    """Per model: S, S_l, S_q overall, per bucket and per language; S_q per dimension; judge counts."""
    out: dict[str, Any] = {}
    for model in sorted(scores["model"].unique().to_list()):
        mine = scores.filter(pl.col("model") == model)
        answered = mine.filter(pl.col("answered"))
        judged = answered.filter(pl.col("quality_score").is_not_null())
        out[model] = {
            **_group_scores(mine),
            "unanswered": mine.height - answered.height,
            "judge_failed": answered.height - judged.height,
            "judge_truncated": int(answered["judge_truncated"].sum()),
            "degenerate_share": rounded(float(answered["degenerate"].mean()) if answered.height else None, 4),
            "dimensions": {d: rounded(dimension_score(judged[d].to_list())) for d in DIMENSIONS},
            "buckets": {label: _group_scores(mine.filter(pl.col("bucket") == label))
                        for label in [b[2] for b in BUCKETS] + sorted(set(mine["bucket"]) - {b[2] for b in BUCKETS})
                        if mine.filter(pl.col("bucket") == label).height},
            "lang": {lang: _group_scores(mine.filter(pl.col("lang") == lang))
                     for lang in sorted(mine["lang"].unique().to_list())},
        }
    return out


def unanswered_row(model: str, request: dict[str, Any]) -> dict[str, Any]:
    """The ``Scores`` row of a benchmark request ``model`` left unanswered: produced 0, so S_l 0, unjudged."""
    return {"model": model, "index": request["index"], "lang": request["lang"], "bucket": request["bucket"],
            "required": request["required"], "produced": 0, "answered": False, "length_score": 0.0,
            "effective_words": 0, "degenerate": False, "length_score_effective": 0.0, **dict.fromkeys(DIMENSIONS),
            "quality_score": None, "judge_attempts": 0, "judge_truncated": False, "analysis": None}


def score_row(answer: dict[str, Any], outcome: RatingOutcome, low: int | None = None) -> dict[str, Any]:
    """One ``Scores`` row from an answer and its rating (ratings null when the judge failed); ``low``: the
    bottom of the request's length target (S_l against [low, required]), None for a stated length."""
    low = answer["required"] if low is None else low
    ratings = outcome.rating.scores if outcome.rating else dict.fromkeys(DIMENSIONS)
    quality = quality_score({d: dimension_score([v]) for d, v in ratings.items()}) if outcome.rating else None
    return {"model": answer["model"], "index": answer["index"], "lang": answer["lang"], "bucket": answer["bucket"],
            "required": answer["required"], "produced": answer["words"], "answered": True,
            "length_score": range_length_score(low, answer["required"], answer["words"]),
            "effective_words": answer["effective_words"], "degenerate": answer["degenerate"],
            "length_score_effective": range_length_score(low, answer["required"], answer["effective_words"]),
            **ratings,
            "quality_score": quality, "judge_attempts": outcome.attempts, "judge_truncated": outcome.truncated,
            "analysis": outcome.rating.analysis if outcome.rating else None}


def unanswered_rows(benchmark: pl.DataFrame, unanswered: pl.DataFrame, path: str | Path) -> list[dict[str, Any]]:
    """A ``Scores`` row for every request in the answering stage's failures (``model/index`` ids, read from
    ``path``), except its ``left_out`` and ``no_required_length`` rows: a request ``longbench.per_lang`` left out,
    or one with no length to score against, was never asked, so it is neither unanswered nor scored."""
    requests = {r["index"]: r for r in benchmark.iter_rows(named=True)}
    rows = []
    for row, failure in enumerate(unanswered.iter_rows(named=True), start=1):
        if failure["reason"] in (Reason.LEFT_OUT, Reason.NO_REQUIRED_LENGTH):
            continue
        model, _, index = failure["instruction_id"].rpartition("/")
        if not index.isdigit() or int(index) not in requests:
            raise InputError(path, f"{failure['instruction_id']!r} is no request of the benchmark file (answers "
                                   "made from another longbench.input?)", row=row, column="instruction_id")
        rows.append(unanswered_row(model, requests[int(index)]))
    return rows


def run_longbench(judge: JudgeConfig, settings: ClientSettings, benchmark_path: str | Path,
                  answers_path: str | Path, answer_failures_path: str | Path, output: str | Path,
                  failures: str | Path, metrics: str | Path, plot_csv: str | Path, plot_png: str | Path,
                  en_file: str | Path | None = None, timings: str | Path | None = None,
                  targets: str | Path | None = None) -> dict[str, Any]:
    """The whole judging stage: scores table (every request, answered or not), failures, metrics and the length
    scatter of the answers (CSV + PNG). ``targets``: the length targets the answers were asked with."""
    answers = validate(read_table(answers_path), Answers, answers_path).filter(pl.col("sample") == 0)
    unanswered = validate(read_table(answer_failures_path), Failures, answer_failures_path)
    benchmark = benchmark_with_targets(benchmark_path, en_file, targets)
    lows = dict(benchmark.select("index", "required_min").iter_rows())
    outcomes, judge_stats = judge_answers(answers, judge, settings, "longbench judge")
    rows = [score_row(a, o, lows.get(a["index"])) for a, o in zip(answers.iter_rows(named=True), outcomes,
                                                                    strict=True)]
    rows += unanswered_rows(benchmark, unanswered, answer_failures_path)
    scores = pl.DataFrame(rows, schema=empty(Scores).schema).sort("model", "index")
    write_checked(scores, Scores, output)
    write_failures([failure_row("longbench", o.reason, o.error, instruction_id=f"{a['model']}/{a['index']}",
                                attempts=o.attempts)
                    for a, o in zip(answers.iter_rows(named=True), outcomes, strict=True) if o.rating is None],
                   failures)
    result = longbench_metrics(scores)
    result["length_targets"] = int(benchmark.filter(pl.col("targeted") & pl.col("index").is_in(
        scores["index"].implode()))["index"].len())
    result["judge_llm"] = judge_stats
    points = scores.filter(pl.col("answered")).select("model", "index", "required", "produced", "length_score")
    write_csv(points, plot_csv)
    length_png(points, plot_png, "LongBench-Write: produced vs required words", lines=False)
    write_metrics(result, metrics, timings)
    return result
