"""Stage ``dpo_pairs``: preference pairs the paper's way.

For each long-writing instruction the SFT model writes ``samples`` answers; the judge scores each one with
LongBench-Write's scorer, S = (S_l + S_q) / 2 (length against the instruction's required words, else its
length target's range (``longwriter.length_target``), else the selector's estimate; quality from the six
ratings). The best answer is ``chosen``; ``rejected`` is, as in the paper, a random
one of the other answers (``rejected: random_other``, seeded per prompt), equal scores included: when the one
drawn scores the same as the best, the prompt gives no pair (failures: zero_margin). ``rejected: random_lower``
(ours, not the paper's) draws only among the answers scoring strictly lower than the best: a pair whenever one
answer scores lower, no pair only when all score the same. Answers that are not complete text
(``longwriter.completeness``: cut off at the token limit, empty, refused) and answers the judge could not rate
take no part; a prompt with fewer than two such answers gives no pair, nor does an instruction with no
required length, length target or estimate (nothing to score length against: failures no_required_length, not sampled).
Each of these is a failures row: every prompt of the input ends as a pair or at least one failures row.
Sampling sizes each prompt's ``max_tokens`` from its required words, as the evaluation does, so an answer
that may be complete is not cut by one small limit for all.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from longwriter.checks import positive_int
from longwriter.completeness import incomplete_reason
from longwriter.failures import Reason, failure_row, reason_counts, write_failures
from longwriter.files import read_table, write_metrics
from longwriter.generation import LOSSLESS_RATIO, EvalModel, LengthCap, generate_answers
from longwriter.judge import DIMENSIONS, JudgeConfig, judge_answers
from longwriter.length_target import read_targets
from longwriter.llm import CallStats, ClientSettings, ModelSpec, Sampling
from longwriter.schemas import Answers, Instructions, Pairs, empty, validate, write_checked
from longwriter.scoring import bucket_of, dimension_score, overall, quality_score, range_length_score

REJECTED_RULES = ("random_other", "random_lower")


@dataclass(frozen=True)
class PairsConfig:
    """The ``dpo_pairs`` section."""

    samples: int = 4
    # max_tokens is a ceiling: each prompt's limit is cap_ratio x its required words (in tokens, as the
    # evaluation sizes it), so a long prompt's answers are not all cut by one small limit; a cut answer is not
    # complete text and takes no part in a pair
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.8, top_p=0.95, max_tokens=1024))
    cap_ratio: float = LOSSLESS_RATIO
    seed: int = 0
    max_batch: int = 16
    # the rejected answer: random_other (the paper's) a random one of the other rated answers, equal scores
    # included (a draw that ties the best gives no pair: zero_margin); random_lower one of those scoring lower only
    rejected: Literal["random_other", "random_lower"] = "random_other"

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise ValueError("samples must be >= 2 (a pair needs two answers)")
        if self.rejected not in REJECTED_RULES:
            raise ValueError(f"rejected must be one of {', '.join(REJECTED_RULES)}, not {self.rejected!r}")
        if self.cap_ratio <= 0:
            raise ValueError("cap_ratio must be > 0")
        positive_int("max_batch", self.max_batch)


def build_pairs(candidates: list[dict[str, Any]], seed: int, dropped: list[dict[str, Any]] | None = None,
                rejected: str = "random_other", prompt_ids: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Pairs from scored answers (dicts: prompt_id, prompt, sample, text, score or None).

    Per prompt: chosen = the highest score (the lowest sample number on a tie), rejected = one of the other
    rated answers (``random_other``, the paper's: a draw that scores the same as the best gives no pair) or of
    those scoring lower (``random_lower``), drawn with ``random.Random(f"{seed}:{prompt_id}")`` among them in
    sample order, so a pair does not depend on which other prompts are in the run. Prompts without a pair are
    described in ``dropped`` (failures rows), ``prompt_ids`` without a candidate too (every sample unanswered).
    """
    if rejected not in REJECTED_RULES:
        raise ValueError(f"rejected must be one of {', '.join(REJECTED_RULES)}, not {rejected!r}")
    by_prompt: dict[str, list[dict[str, Any]]] = {p: [] for p in prompt_ids}
    for c in candidates:
        by_prompt.setdefault(c["prompt_id"], [])
        if c["score"] is not None:
            by_prompt[c["prompt_id"]].append(c)
    pairs = []
    for prompt_id in sorted(by_prompt):
        rated = sorted(by_prompt[prompt_id], key=lambda c: c["sample"])
        why = None
        if len(rated) < 2:
            why = (Reason.TOO_FEW_RATED, f"{len(rated)} rated, complete answer(s); a pair needs 2")
        else:
            best = max(rated, key=lambda c: (c["score"], -c["sample"]))
            others = ([c for c in rated if c is not best] if rejected == "random_other"
                      else [c for c in rated if c["score"] < best["score"]])
            if not others:  # random_lower only: random_other has the other rated answers (>= 1)
                why = (Reason.ZERO_MARGIN, f"all {len(rated)} rated answers score {best['score']:.2f}")
            else:
                other = random.Random(f"{seed}:{prompt_id}").choice(others)
                if other["score"] >= best["score"]:
                    why = (Reason.ZERO_MARGIN, f"sample {other['sample']}, drawn as rejected ({rejected}), scores "
                                               f"{other['score']:.2f}, the same as the best (sample {best['sample']})")
        if why is not None:
            if dropped is not None:
                dropped.append(failure_row("dpo_pairs", *why, instruction_id=prompt_id))
            continue
        pairs.append({"prompt_id": prompt_id, "prompt": best["prompt"], "chosen": best["text"],
                      "rejected": other["text"], "chosen_sample": best["sample"], "rejected_sample": other["sample"],
                      "chosen_score": best["score"], "rejected_score": other["score"],
                      "margin": best["score"] - other["score"]})
    return pairs


def length_requests(instructions: pl.DataFrame, targets: dict[str, tuple[int, int]] | None = None
                    ) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """Instructions as benchmark requests with the word range to score against (``required_min``..``required``):
    the stated length, else the prompt's length target (``longwriter.length_target``), else the selector's
    estimate. An instruction with none has no length to score an answer against: a failures row
    (no_required_length)."""
    rows, no_length = [], []
    for i, r in enumerate(instructions.sort("id").iter_rows(named=True)):
        stated = r["required_words"]
        low, high = ((stated, stated) if stated else (targets or {}).get(r["prompt"])
                     or (r["estimated_words"], r["estimated_words"]))
        if high:
            rows.append({"index": i, "id": r["id"], "prompt": r["prompt"], "type": None, "required": int(high),
                         "required_min": int(low), "lang": r["lang"], "bucket": bucket_of(int(high))})
        else:
            no_length.append(failure_row("dpo_pairs", Reason.NO_REQUIRED_LENGTH,
                                         f"neither a required length, a length target nor an estimate "
                                         f"(required_words {r['required_words']}, estimated_words "
                                         f"{r['estimated_words']}): nothing to score an answer's length against, "
                                         "not sampled", instruction_id=r["id"]))
    return pl.DataFrame(rows, schema={"index": pl.Int64, "id": pl.Utf8, "prompt": pl.Utf8, "type": pl.Utf8,
                                      "required": pl.Int64, "required_min": pl.Int64, "lang": pl.Utf8,
                                      "bucket": pl.Utf8}), no_length


def split_over_ceiling(requests: pl.DataFrame, ceiling: int) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """The requests whose answers can fit ``ceiling`` tokens, and a failure row for each other one: a prompt asking
    more words than the ceiling holds tokens (the project's models spend at least one token a word) gets only cut
    answers, which take no part in a pair, so sampling it would pay for nothing."""
    fits = requests["required"] <= ceiling
    rows = [failure_row("dpo_pairs", Reason.OVER_CEILING,
                        f"asks {r['required']} words; the ceiling (dpo_pairs.sampling.max_tokens) is {ceiling} tokens",
                        instruction_id=r["id"]) for r in requests.filter(~fits).iter_rows(named=True)]
    return requests.filter(fits), rows


def run_dpo_pairs(cfg: PairsConfig, judge: JudgeConfig, settings: ClientSettings, instructions_path: str | Path,
                  model_dir: str | Path, output: str | Path, failures: str | Path, metrics: str | Path,
                  timings: str | Path | None = None, targets: str | Path | None = None) -> dict[str, Any]:
    instructions = validate(read_table(instructions_path), Instructions, instructions_path)
    target_of = read_targets(targets)
    with_length, no_length = length_requests(instructions, target_of)
    targeted = sum(1 for r in instructions.iter_rows(named=True)
                   if not r["required_words"] and r["prompt"] in target_of)
    requests, over_ceiling = split_over_ceiling(with_length, cfg.sampling.max_tokens)
    policy = EvalModel("policy", ModelSpec(provider="local", path=str(model_dir), max_batch=cfg.max_batch))
    if requests.height:
        answers, unanswered, gen_stats = generate_answers(requests.drop("id", "required_min"), (policy,),
                                                          cfg.sampling, settings, "dpo_pairs", samples=cfg.samples,
                                                          cap=LengthCap(ratio=cfg.cap_ratio))
    else:  # nothing to sample: no model is loaded
        answers, unanswered, gen_stats = empty(Answers), [], {"policy": CallStats()}
    ids = dict(zip(requests["index"].to_list(), requests["id"].to_list(), strict=True))
    lows = dict(zip(requests["index"].to_list(), requests["required_min"].to_list(), strict=True))
    # an answer that is not complete text (cut off, empty, refused) is neither chosen nor rejected: DPO would
    # teach the model to stop in mid-sentence, or to prefer that over another answer
    why = [incomplete_reason(t, f) for t, f in zip(answers["text"].to_list(), answers["finish_reason"].to_list(),
                                                    strict=True)]
    incomplete = [failure_row("dpo_pairs", r, f"sample {a['sample']} {r} (finish_reason {a['finish_reason']}, "
                                              f"{a['words']} words)",
                              instruction_id=ids[a["index"]], section=a["sample"])
                  for a, r in zip(answers.iter_rows(named=True), why, strict=True) if r is not None]
    candidates = [{"prompt_id": ids[a["index"]], "prompt": a["prompt"], "sample": a["sample"], "text": a["text"],
                   "score": None} for a, r in zip(answers.iter_rows(named=True), why, strict=True) if r is not None]
    answers = answers.filter(pl.Series([r is None for r in why], dtype=pl.Boolean))
    outcomes, judge_stats = (judge_answers(answers, judge, settings, "dpo_pairs judge") if answers.height
                             else ([], CallStats().as_metrics()))
    unrated = []
    for a, o in zip(answers.iter_rows(named=True), outcomes, strict=True):
        score = None
        if o.rating is not None:
            s_q = quality_score({d: dimension_score([o.rating.scores[d]]) for d in DIMENSIONS})
            score = overall(range_length_score(lows[a["index"]], a["required"], a["words"]), s_q)
        else:
            unrated.append(failure_row("dpo_pairs", o.reason, o.error, instruction_id=ids[a["index"]],
                                       section=a["sample"], attempts=o.attempts))
        candidates.append({"prompt_id": ids[a["index"]], "prompt": a["prompt"], "sample": a["sample"],
                           "text": a["text"], "score": score})
    no_pair: list[dict[str, Any]] = []
    # every sampled prompt: one whose samples all went unanswered gets a too_few_rated row (its unanswered rows
    # are about single samples)
    pairs = pl.DataFrame(build_pairs(candidates, cfg.seed, no_pair, cfg.rejected, requests["id"].to_list()),
                         schema=empty(Pairs).schema)
    write_checked(pairs, Pairs, output)
    for f in unanswered:
        f["instruction_id"] = ids[int(f["instruction_id"].rsplit("/", 1)[1])]
    failure_rows = no_length + over_ceiling + unanswered + incomplete + unrated + no_pair
    write_failures(failure_rows, failures)
    scores = [c["score"] for c in candidates if c["score"] is not None]
    # prompts: every instruction of the input; no_required_length and over_ceiling ones are not sampled
    result = {"prompts": instructions.height, "no_required_length": len(no_length), "length_targets": targeted,
              "over_ceiling": len(over_ceiling),
              "samples": len(candidates), "unanswered": len(unanswered),
              "incomplete": len(incomplete), "unrated": len(unrated), "pairs": pairs.height,
              "failures": reason_counts(failure_rows),
              "max_tokens": {"min": int(answers["max_tokens"].min()), "max": int(answers["max_tokens"].max())}
              if answers.height else None,
              "score_mean": round(sum(scores) / len(scores), 2) if scores else None,
              "margin_mean": round(float(pairs["margin"].mean()), 2) if pairs.height else None,
              "margin_min": round(float(pairs["margin"].min()), 2) if pairs.height else None,
              "generation_llm": gen_stats["policy"].as_metrics(), "judge_llm": judge_stats}
    write_metrics(result, metrics, timings)
    return result
