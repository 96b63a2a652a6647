"""Stage ``ruler`` (LongWrite-Ruler): how long can each model write when asked for L words?

Each listed model answers the first ``per_length`` requests of each length L in ``lengths`` (file order; the
default file has 8 per length, 4 zh + 4 en, alternating en, zh; null: all). Per model: the mean produced words
per L and the largest L whose mean reaches ``reach`` x L ("max output length", on the words produced; the
paper reads its maximum off the required-vs-produced plot and states no threshold: ``reach``, 0.8 by default, is
ours), the same two on the effective words (those written before an answer fell into a loop,
``longwriter.repetition``), the share of answers that fell into a loop and the share cut by the token limit.

Censored. A model that reaches the longest length asked may write longer still: its max output length is only a
lower bound, flagged ``max_output_length_censored`` (and ``max_output_length_effective_censored``) and shown as
"≥ L". The flag is also set when a longer length's miss may be the token limit's doing (below).

Token limits, lossless for the decision. The ruler decides, per L, whether the mean of the n answers at L (n =
requests per length x samples) reaches ``reach`` x L, i.e. whether their sum reaches reach x n x L. An answer
cut at reach x n x L words or more cannot change that decision: if any answer is cut there, the sum already
reaches reach x n x L; otherwise nothing was cut. So each request's max_tokens is the ``LengthCap`` of ratio
reach x n (``decision_ratio``; eval's tokens_per_word and cap_margin, upper bounds, so the tokens never undershoot
the words), under the ruler's own ceiling ``max_tokens`` and what fits the backend's context. A request whose
limit falls below that cap is counted (``capped_below_decision``) and the stage warns; a length not reached while
one of its answers was cut at such a limit is ``decision_uncertain`` (the model might have reached it). The cap
bounds the words of every answer, so the mean words per L (the curve) are figures under the cap, not what an
unlimited answer would hold; the answers table keeps ``cap_lossless`` / ``cap_below_ask`` as LongBench-Write
defines them (4x, 1x the words asked), which a ruler cap below 4x the ask leaves False / True. The guarantee is
for the max output length on the words produced: the loop measure of a cut answer can differ from the uncut one's
(a loop begun within the last 50 words before the cut goes unseen; repeats before the cut weigh more without the
text after it), so the effective maximum has no such guarantee.

Failed requests count 0 words. A request that got no answer (a row of the stage's failures table, e.g. an
``llm_error``) counts as an answer of 0 words in the headline figures, as LongBench-Write counts an unanswered
request: ``mean_words``, ``mean_effective_words``, ``mean_words_by_lang`` and both max output lengths are over
every request asked, so a model that fails on long asks is not credited with the lengths it could not answer.
Beside them, ``mean_words_answered``, ``mean_effective_words_answered``, ``mean_words_by_lang_answered`` and
``max_output_length_answered`` / ``max_output_length_effective_answered`` (each with its censored flag) are over
the answered requests only; ``requests``, ``answers`` and ``failed`` count them, per length in
``counts_by_length``. The caps stay lossless for both: n counts every request asked, so a failed one (0 words)
only lowers the sum, and the answered-only mean of k <= n answers is reached by an answer cut at reach x n x L
words all the more.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.benchmark import read_benchmark
from longwriter.eval.answers import EvalConfig
from longwriter.eval.plots import length_png
from longwriter.failures import Reason, failure_row, write_failures
from longwriter.files import write_csv, write_metrics
from longwriter.generation import LengthCap, generate_answers
from longwriter.llm import ClientSettings
from longwriter.schemas import Answers, write_checked


@dataclass(frozen=True)
class RulerConfig:
    input: str = "data/eval/ruler.jsonl"
    # each must occur in the input file; the paper's: 1000, 2000, 5000, 10000, 20000, 30000
    lengths: tuple[int, ...] = (100, 300, 1000)
    # requests per length: the first N of each length in file order (None: all of them)
    per_length: int | None = 1
    # a length is reached when the mean answer has at least this fraction of the words asked for
    reach: float = 0.8
    # the ruler's ceiling over each request's decision-lossless cap (eval.sampling.max_tokens is LongBench's)
    max_tokens: int = 2560

    def __post_init__(self) -> None:
        if not self.lengths or any(n <= 0 for n in self.lengths):
            raise ValueError("lengths must be a non-empty list of positive integers")
        if self.per_length is not None and (isinstance(self.per_length, bool) or self.per_length < 1):
            raise ValueError(f"per_length must be a positive integer or null (all), got {self.per_length!r}")
        if not 0 < self.reach <= 1:
            raise ValueError("reach must be within (0, 1]")
        if isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")


def select_requests(bench: pl.DataFrame, per_length: int | None) -> pl.DataFrame:
    """The first ``per_length`` requests of each required length, in file order (None: all)."""
    bench = bench.sort("index")
    if per_length is None:
        return bench
    return bench.filter(pl.int_range(pl.len()).over("required") < per_length)


def left_out_rows(in_file: pl.DataFrame, asked: pl.DataFrame, cfg: RulerConfig, models: list[str]
                  ) -> list[dict[str, Any]]:
    """A ``left_out`` failures row per model for every request of the file the ruler does not ask: its length is
    not in ``lengths``, or it is past the first ``per_length`` of its length."""
    chosen = set(asked["index"].to_list())
    rows = []
    for index, required in in_file.select("index", "required").iter_rows():
        if index in chosen:
            continue
        why = (f"length {required} not in ruler.lengths" if required not in cfg.lengths
               else f"past ruler.per_length {cfg.per_length} for length {required}")
        rows += [failure_row("ruler", Reason.LEFT_OUT, why, instruction_id=f"{m}/{index}") for m in models]
    return rows


def answers_per_length(bench: pl.DataFrame, samples: int = 1) -> int:
    """n: the most answers any one length gets (requests at that length x samples)."""
    return samples * int(bench.group_by("required").len()["len"].max() or 0)


def decision_ratio(reach: float, n: int) -> float:
    """The cap ratio (x the words asked) that cannot change whether n answers' mean reaches ``reach`` x L: an
    answer cut at reach x n x L words alone brings their sum to reach x n x L."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return reach * n


def decision_cap(cfg: RulerConfig, eval_cfg: EvalConfig, n: int) -> LengthCap:
    """The per-request cap that is lossless for the ruler's decision: ratio reach x n, eval's tokens per word and
    margin."""
    return LengthCap(decision_ratio(cfg.reach, n), eval_cfg.tokens_per_word, eval_cfg.cap_margin)


_FAILED_SCHEMA = {"model": pl.Utf8, "required": pl.Int64, "lang": pl.Utf8}


def failed_requests(bench: pl.DataFrame, failed: list[dict[str, Any]]) -> pl.DataFrame:
    """The requests that got no answer, one row per failures row (ids ``model/index``): model, required, lang."""
    by_index = {int(i): (int(r), lang) for i, r, lang in bench.select("index", "required", "lang").iter_rows()}
    rows = []
    for f in failed:
        model, _, index = f["instruction_id"].rpartition("/")
        required, lang = by_index[int(index)]
        rows.append({"model": model, "required": required, "lang": lang})
    return pl.DataFrame(rows, schema=_FAILED_SCHEMA)


def asked_words(answers: pl.DataFrame, failed: pl.DataFrame | None = None) -> pl.DataFrame:
    """Every request asked (model, required, lang, words, effective_words): the answers, and each failed request
    (``failed_requests``) as an answer of 0 words, as LongBench-Write counts an unanswered request."""
    columns = [pl.col("model").cast(pl.Utf8), pl.col("required").cast(pl.Int64), pl.col("lang").cast(pl.Utf8)]
    frames = [answers.select(*columns, pl.col("words").cast(pl.Int64), pl.col("effective_words").cast(pl.Int64))]
    if failed is not None and failed.height:
        frames.append(failed.select(*columns, pl.lit(0, dtype=pl.Int64).alias("words"),
                                    pl.lit(0, dtype=pl.Int64).alias("effective_words")))
    return pl.concat(frames)


def _per_length(answers: pl.DataFrame, column: str, lengths: tuple[int, ...], reach: float
                 ) -> tuple[dict[int, float], list[int]]:
    """Mean of ``column`` per required length (the listed ones present), and the lengths it reaches."""
    means = {int(n): float(m) for n, m in answers.group_by("required").agg(pl.col(column).mean()).iter_rows()}
    present = {n: means[n] for n in sorted(lengths) if n in means}
    return present, [n for n in present if present[n] >= reach * n]


def _maximum(means: dict[int, float], reached: list[int], uncertain: list[int]) -> tuple[int, bool]:
    """The max output length and whether it is censored: no longer length was measured (it reached the longest
    one asked), or a longer length's miss may be the token limit's doing."""
    best = max(reached, default=0)
    censored = (best > 0 and best == max(means)) or any(n > best for n in uncertain)
    return best, censored


def _by_lang(frame: pl.DataFrame) -> dict[str, float]:
    return {lang: round(float(frame.filter(pl.col("lang") == lang)["words"].mean()), 1)
            for lang in sorted(frame["lang"].unique().to_list())}


def ruler_metrics(answers: pl.DataFrame, lengths: tuple[int, ...], reach: float,
                  cap: LengthCap | None = None, failed: pl.DataFrame | None = None) -> dict[str, Any]:
    """Per model: mean words per length and max output length (with its censored flag), on the words produced (the
    paper's) and on the effective words; degenerate and truncated shares. With ``cap`` (the decision-lossless one):
    answers whose limit was below it, and the lengths not reached where one of those was cut at its limit.

    ``failed`` (``failed_requests``): the requests that got no answer. The headline means and max output lengths
    count each as 0 words (LongBench-Write's rule); the ``*_answered`` figures beside them are over the answers
    only. The shares and ``capped_below_decision`` are of the answers."""
    asked_all = asked_words(answers, failed)
    out: dict[str, Any] = {}
    for model in sorted(asked_all["model"].unique().to_list()):
        mine = answers.filter(pl.col("model") == model)
        asked = asked_all.filter(pl.col("model") == model)
        n = mine.height
        below = pl.Series("below", [cap is not None and t < cap.tokens(r, lang) for t, r, lang
                                    in mine.select("max_tokens", "required", "lang").iter_rows()], dtype=pl.Boolean)
        # lengths where an answer below the cap was cut at it: a miss there may be the limit's doing
        cut = (mine.with_columns(below).filter(pl.col("below") & (pl.col("finish_reason") == "length"))
               ["required"].unique().to_list())
        figures = {}
        for over, frame in (("asked", asked), ("answered", mine)):
            for column in ("words", "effective_words"):
                means, reached = _per_length(frame, column, lengths, reach)
                uncertain = sorted(int(r) for r in cut if int(r) in means and int(r) not in reached)
                figures[over, column] = (means, *_maximum(means, reached, uncertain), uncertain)
        words, best, censored, uncertain = figures["asked", "words"]
        effective, best_eff, censored_eff, uncertain_eff = figures["asked", "effective_words"]
        words_ans, best_ans, censored_ans, _ = figures["answered", "words"]
        effective_ans, best_eff_ans, censored_eff_ans, _ = figures["answered", "effective_words"]
        asked_n, answered_n = ({int(r): int(k) for r, k in frame.group_by("required").len().iter_rows()}
                               for frame in (asked, mine))
        out[model] = {
            "requests": asked.height,
            "answers": n,
            "failed": asked.height - n,
            "counts_by_length": {str(r): {"requests": asked_n[r], "answered": answered_n.get(r, 0),
                                          "failed": asked_n[r] - answered_n.get(r, 0)} for r in words},
            "max_output_length": best,
            "max_output_length_censored": censored,
            "max_output_length_effective": best_eff,
            "max_output_length_effective_censored": censored_eff,
            "max_output_length_answered": best_ans,
            "max_output_length_answered_censored": censored_ans,
            "max_output_length_effective_answered": best_eff_ans,
            "max_output_length_effective_answered_censored": censored_eff_ans,
            "capped_below_decision": int(below.sum()),
            "decision_uncertain": uncertain,
            "decision_uncertain_effective": uncertain_eff,
            "truncated_share": round(float((mine["finish_reason"] == "length").mean()), 4) if n else None,
            "degenerate_share": round(float(mine["degenerate"].mean()), 4) if n else None,
            "mean_words": {str(k): round(v, 1) for k, v in words.items()},
            "mean_effective_words": {str(k): round(v, 1) for k, v in effective.items()},
            "mean_words_answered": {str(k): round(v, 1) for k, v in words_ans.items()},
            "mean_effective_words_answered": {str(k): round(v, 1) for k, v in effective_ans.items()},
            "mean_words_by_lang": _by_lang(asked),
            "mean_words_by_lang_answered": _by_lang(mine),
        }
    return out


def shown_max(m: dict[str, Any], effective: bool = False, answered: bool = False) -> str:
    """A model's max output length as it may be shown: "≥ L" when censored (a lower bound, not its limit).
    ``answered``: the answered-only figure (failed requests left out) instead of the headline one."""
    suffix = ("_effective" if effective else "") + ("_answered" if answered else "")
    value = m.get(f"max_output_length{suffix}", 0)
    return f"≥ {value}" if m.get(f"max_output_length{suffix}_censored") else str(value)


def run_ruler(cfg: RulerConfig, eval_cfg: EvalConfig, settings: ClientSettings, output: str | Path,
              failures: str | Path, metrics: str | Path, plot_csv: str | Path, plot_png: str | Path,
              timings: str | Path | None = None) -> dict[str, Any]:
    """The whole stage: answers, failures, metrics and the required-vs-produced curve (CSV + PNG)."""
    in_file = read_benchmark(cfg.input)
    bench = select_requests(read_benchmark(cfg.input, list(cfg.lengths)), cfg.per_length)
    left_out = left_out_rows(in_file, bench, cfg, [m.name for m in eval_cfg.models])
    n = answers_per_length(bench)
    cap = decision_cap(cfg, eval_cfg, n)
    sampling = dataclasses.replace(eval_cfg.sampling, max_tokens=cfg.max_tokens)
    answers, failed, stats = generate_answers(bench, eval_cfg.models, sampling, settings, "ruler", cap=cap)
    write_checked(answers, Answers, output)
    write_failures(failed + left_out, failures)
    unanswered = failed_requests(bench, failed)
    result: dict[str, Any] = ruler_metrics(answers, cfg.lengths, cfg.reach, cap, unanswered)
    for model in eval_cfg.models:
        mine = result.setdefault(model.name, {"requests": 0, "answers": 0, "failed": 0, "max_output_length": 0,
                                              "max_output_length_censored": False, "capped_below_decision": 0})
        mine["llm"] = stats[model.name].as_metrics()
    # the curve is the headline's: a failed request counts 0 words
    curve = (asked_words(answers, unanswered).group_by("model", "required")
             .agg(pl.col("words").mean().round(1).alias("produced"),
                  pl.col("effective_words").mean().round(1).alias("effective"))
             .sort("model", "required"))
    write_csv(curve, plot_csv)
    maxima = {name: shown_max(m) for name, m in result.items() if m.get("requests")}
    length_png(curve, plot_png, "LongWrite-Ruler: mean words produced per length asked", lines=True,
               reach=cfg.reach, maxima=maxima)
    listed = in_file.filter(pl.col("required").is_in(list(cfg.lengths))).height
    metrics_out = {**result, "decision_cap": {"ratio": round(cap.ratio, 4), "answers_per_length": n,
                                              "max_tokens": cfg.max_tokens},
                   # not a model: what of the file was asked, so a sample is never read as the whole benchmark
                   "asked": {"in_file": in_file.height, "asked": bench.height,
                             "left_out_by_lengths": in_file.height - listed,
                             "left_out_by_per_length": listed - bench.height}}
    write_metrics(metrics_out, metrics, timings)
    return result
