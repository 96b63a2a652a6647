"""Stage ``dpo_pairs``: preference pairs the paper's way.

For each long-writing instruction the SFT model writes ``samples`` answers; the judge scores each one with
LongBench-Write's scorer, S = (S_l + S_q) / 2 (length against the instruction's required or estimated
words, quality from the six ratings). The best answer is ``chosen``, a random other one ``rejected``
(seeded per prompt). Answers the judge could not rate take no part; a prompt with fewer than two rated
answers gives no pair.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.eval.answers import EvalModel, generate_answers
from longwriter.eval.judge import DIMENSIONS, JudgeConfig, judge_answers
from longwriter.eval.scoring import bucket_of, dimension_score, length_score, overall, quality_score
from longwriter.files import read_table, write_json
from longwriter.llm import ClientSettings, ModelSpec, Sampling
from longwriter.schemas import Instructions, Pairs, empty, validate, write_checked, write_failures


@dataclass(frozen=True)
class PairsConfig:
    """The ``dpo_pairs`` section."""

    samples: int = 4
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.8, top_p=0.95, max_tokens=1024))
    seed: int = 0
    max_batch: int = 16

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise ValueError("samples must be >= 2 (a pair needs two answers)")


def build_pairs(candidates: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Pairs from scored answers (dicts: prompt_id, prompt, sample, text, score or None).

    Per prompt: chosen = the highest score (the lowest sample number on a tie), rejected = one of the other
    rated answers drawn with ``random.Random(f"{seed}:{prompt_id}")``, so a pair does not depend on which other
    prompts are in the run.
    """
    by_prompt: dict[str, list[dict[str, Any]]] = {}
    for c in candidates:
        if c["score"] is not None:
            by_prompt.setdefault(c["prompt_id"], []).append(c)
    pairs = []
    for prompt_id in sorted(by_prompt):
        rated = sorted(by_prompt[prompt_id], key=lambda c: c["sample"])
        if len(rated) < 2:
            continue
        best = max(rated, key=lambda c: (c["score"], -c["sample"]))
        others = [c for c in rated if c is not best]
        other = random.Random(f"{seed}:{prompt_id}").choice(others)
        pairs.append({"prompt_id": prompt_id, "prompt": best["prompt"], "chosen": best["text"],
                      "rejected": other["text"], "chosen_sample": best["sample"], "rejected_sample": other["sample"],
                      "chosen_score": best["score"], "rejected_score": other["score"],
                      "margin": best["score"] - other["score"]})
    return pairs


def _requests(instructions: pl.DataFrame) -> pl.DataFrame:
    """Instructions as benchmark requests: the length to score against is the required, else estimated one."""
    rows = []
    for i, r in enumerate(instructions.sort("id").iter_rows(named=True)):
        required = r["required_words"] or r["estimated_words"]
        if required:
            rows.append({"index": i, "id": r["id"], "prompt": r["prompt"], "type": None, "required": int(required),
                         "lang": r["lang"], "bucket": bucket_of(int(required))})
    return pl.DataFrame(rows, schema={"index": pl.Int64, "id": pl.Utf8, "prompt": pl.Utf8, "type": pl.Utf8,
                                      "required": pl.Int64, "lang": pl.Utf8, "bucket": pl.Utf8})


def run_dpo_pairs(cfg: PairsConfig, judge: JudgeConfig, settings: ClientSettings, instructions_path: str | Path,
                  model_dir: str | Path, output: str | Path, failures: str | Path, metrics: str | Path
                  ) -> dict[str, Any]:
    instructions = validate(read_table(instructions_path), Instructions, instructions_path)
    requests = _requests(instructions)
    policy = EvalModel("policy", ModelSpec(provider="local", path=str(model_dir), max_batch=cfg.max_batch))
    answers, unanswered, gen_stats = generate_answers(requests.drop("id"), (policy,), cfg.sampling, settings,
                                                      "dpo_pairs", samples=cfg.samples)
    outcomes, judge_stats = judge_answers(answers, judge, settings, "dpo_pairs judge")
    ids = dict(zip(requests["index"].to_list(), requests["id"].to_list(), strict=True))
    candidates, unrated = [], []
    for a, o in zip(answers.iter_rows(named=True), outcomes, strict=True):
        score = None
        if o.rating is not None:
            s_q = quality_score({d: dimension_score([o.rating.scores[d]]) for d in DIMENSIONS})
            score = overall(length_score(a["required"], a["words"]), s_q)
        else:
            unrated.append({"stage": "dpo_pairs", "instruction_id": ids[a["index"]], "section": a["sample"],
                            "attempts": o.attempts, "error": o.error})
        candidates.append({"prompt_id": ids[a["index"]], "prompt": a["prompt"], "sample": a["sample"],
                           "text": a["text"], "score": score})
    pairs = pl.DataFrame(build_pairs(candidates, cfg.seed), schema=empty(Pairs).schema)
    write_checked(pairs, Pairs, output)
    for f in unanswered:
        f["instruction_id"] = ids[int(f["instruction_id"].rsplit("/", 1)[1])]
    write_failures(unanswered + unrated, failures)
    scores = [c["score"] for c in candidates if c["score"] is not None]
    result = {"prompts": requests.height, "samples": answers.height, "unanswered": len(unanswered),
              "unrated": len(unrated), "pairs": pairs.height,
              "score_mean": round(sum(scores) / len(scores), 2) if scores else None,
              "margin_mean": round(float(pairs["margin"].mean()), 2) if pairs.height else None,
              "margin_min": round(float(pairs["margin"].min()), 2) if pairs.height else None,
              "generation_llm": gen_stats["policy"].as_metrics(), "judge_llm": judge_stats}
    write_json(result, metrics)
    return result
