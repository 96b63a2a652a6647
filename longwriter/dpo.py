"""Stages ``dpo_pairs`` and ``dpo``: preference pairs the paper's way, then TRL's DPOTrainer.

For each long-writing instruction the SFT model writes ``samples`` answers; the judge scores each one with
LongBench-Write's scorer, S = (S_l + S_q) / 2 (length against the instruction's required or estimated
words, quality from the six ratings). The best answer is ``chosen``, a random other one ``rejected``
(seeded per prompt). Answers the judge could not rate take no part; a prompt with fewer than two rated
answers gives no pair.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.answers import EvalModel, generate_answers
from longwriter.files import read_table, write_json
from longwriter.judge import DIMENSIONS, JudgeConfig
from longwriter.llm import ClientSettings, ModelSpec, Sampling
from longwriter.longbench import judge_answers
from longwriter.plots import write_csv
from longwriter.schemas import Instructions, Pairs, empty, validate, write_checked, write_failures
from longwriter.scoring import bucket_of, dimension_score, length_score, overall, quality_score
from longwriter.sft import TrainSettings, publish


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


@dataclass(frozen=True)
class DPOSettings:
    """The ``dpo`` section."""

    train: TrainSettings = field(default_factory=lambda: TrainSettings(learning_rate=5e-7))
    beta: float = 0.1
    loss_type: str = "sigmoid"


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


def dpo_curve(log_history: list[dict[str, Any]]) -> pl.DataFrame:
    rows = [{"step": int(e["step"]), "loss": float(e["loss"]),
             "reward_accuracy": float(e.get("rewards/accuracies", float("nan"))),
             "reward_margin": float(e.get("rewards/margins", float("nan")))}
            for e in log_history if "loss" in e and "step" in e]
    return pl.DataFrame(rows, schema={"step": pl.Int64, "loss": pl.Float64, "reward_accuracy": pl.Float64,
                                      "reward_margin": pl.Float64})


def run_dpo(cfg: DPOSettings, model_dir: str | Path, pairs_path: str | Path, output_dir: str | Path,
            metrics: str | Path, plot_csv: str | Path) -> dict[str, Any]:
    import tempfile

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    pairs = validate(read_table(pairs_path), Pairs, pairs_path)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    t = cfg.train
    started = time.perf_counter()
    if pairs.height == 0:
        # nothing to learn from: the policy is the SFT model, said so in the metrics rather than failing
        from longwriter.checkpoint import save_checkpoint

        save_checkpoint(model, tokenizer, output_dir)
        result = {"pairs": 0, "steps": 0, "trained": False}
        write_csv(dpo_curve([]), plot_csv)
        write_json(result, metrics)
        return result
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in pairs.iter_rows(named=True)])
    with tempfile.TemporaryDirectory(prefix="dpo-") as scratch:
        args = DPOConfig(**t.trainer_kwargs(scratch), beta=cfg.beta, loss_type=[cfg.loss_type], disable_tqdm=None)
        trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                             peft_config=t.peft_config())
        trainer.train()
        history = list(trainer.state.log_history)
        publish(trainer, tokenizer, output_dir, t.lora is not None)
    curve = dpo_curve(history)
    result = {"pairs": pairs.height, "steps": int(curve["step"].max() or 0) if curve.height else 0, "trained": True,
              "beta": cfg.beta,
              "loss_first": round(float(curve["loss"][0]), 4) if curve.height else None,
              "loss_last": round(float(curve["loss"][-1]), 4) if curve.height else None,
              "reward_accuracy_last": round(float(curve["reward_accuracy"][-1]), 4) if curve.height else None,
              "reward_accuracy_mean": round(float(curve["reward_accuracy"].fill_nan(None).mean() or 0), 4)
              if curve.height else None,
              "reward_margin_last": round(float(curve["reward_margin"][-1]), 4) if curve.height else None,
              "runtime_s": round(time.perf_counter() - started, 1)}
    write_csv(curve, plot_csv)
    write_json(result, metrics)
    return result
