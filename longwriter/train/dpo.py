"""Stage ``dpo``: TRL's DPOTrainer on the preference pairs, starting from the SFT checkpoint."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.checks import positive
from longwriter.failures import write_failures
from longwriter.files import read_table, write_csv, write_metrics
from longwriter.schemas import Pairs, validate
from longwriter.train.checkpoint import discard_checkpoints, resume_checkpoint, run_fingerprint, save_checkpoint
from longwriter.train.trainer import (
    TrainSettings,
    launched_rank,
    load_model,
    load_tokenizer,
    over_max_length,
    publish,
)


@dataclass(frozen=True)
class DPOSettings:
    """The ``dpo`` section."""

    train: TrainSettings = field(default_factory=lambda: TrainSettings(learning_rate=1e-6, num_train_epochs=2.0,
                                                                       max_length=2048))
    beta: float = 0.1
    loss_type: str = "sigmoid"

    def __post_init__(self) -> None:
        positive("beta", self.beta)


def dpo_curve(log_history: list[dict[str, Any]]) -> pl.DataFrame:
    rows = [{"step": int(e["step"]), "loss": float(e["loss"]),
             "reward_accuracy": float(e.get("rewards/accuracies", float("nan"))),
             "reward_margin": float(e.get("rewards/margins", float("nan")))}
            for e in log_history if "loss" in e and "step" in e]
    return pl.DataFrame(rows, schema={"step": pl.Int64, "loss": pl.Float64, "reward_accuracy": pl.Float64,
                                      "reward_margin": pl.Float64})


def run_dpo(cfg: DPOSettings, model_dir: str | Path, pairs_path: str | Path, output_dir: str | Path,
            metrics: str | Path, plot_csv: str | Path, failures: str | Path | None = None,
            timings: str | Path | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    import tempfile

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    pairs = validate(read_table(pairs_path), Pairs, pairs_path)
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    t = cfg.train
    # under a launcher every process runs this; the first writes the stage's files
    main = launched_rank() == 0
    started = time.perf_counter()
    long_rows = over_max_length(tokenizer, {r["prompt_id"]: [
        [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r[side]}]
        for side in ("chosen", "rejected")] for r in pairs.iter_rows(named=True)}, t, "dpo")
    if failures is not None and main:
        write_failures(long_rows, failures)
    if t.over_max_length == "drop":
        pairs = pairs.filter(~pl.col("prompt_id").is_in([r["instruction_id"] for r in long_rows]))
    over = {"count": len(long_rows), "action": t.over_max_length}
    if pairs.height == 0:
        # nothing to learn from: the policy is the SFT model, said so in the metrics rather than failing. No trainer,
        # so no process group: the launcher's rank says which process saves (all of them into one directory would
        # race), the others are done
        result = {"pairs": 0, "steps": 0, "trained": False, "over_max_length": over}
        if main:
            save_checkpoint(load_model(model_dir, trust_remote_code), tokenizer, output_dir)
            write_csv(dpo_curve([]), plot_csv)
            write_metrics(result, metrics, timings)
        return result
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in pairs.iter_rows(named=True)])
    with tempfile.TemporaryDirectory(prefix="dpo-") as scratch:
        args = DPOConfig(**t.trainer_kwargs(t.output_dir("dpo", scratch)), beta=cfg.beta, loss_type=[cfg.loss_type],
                         disable_tqdm=None,
                         trust_remote_code=trust_remote_code)  # TRL loads the reference model with it
        # loaded once the config exists (ZeRO-3: partitioned as it loads)
        trainer = DPOTrainer(model=load_model(model_dir, trust_remote_code, t.attn_implementation), args=args,
                             train_dataset=dataset,
                             processing_class=tokenizer, peft_config=t.peft_config())
        trainer.train(resume_from_checkpoint=resume_checkpoint(trainer, run_fingerprint(
            "dpo", cfg, [model_dir, pairs_path])))
        history = list(trainer.state.log_history)
        publish(trainer, tokenizer, output_dir, t.lora is not None, model_dir, trust_remote_code)
        discard_checkpoints(trainer)
    curve = dpo_curve(history)
    result = {"pairs": pairs.height, "steps": int(curve["step"].max() or 0) if curve.height else 0, "trained": True,
              "over_max_length": over,
              "beta": cfg.beta,
              "loss_first": round(float(curve["loss"][0]), 4) if curve.height else None,
              "loss_last": round(float(curve["loss"][-1]), 4) if curve.height else None,
              "reward_accuracy_last": round(float(curve["reward_accuracy"][-1]), 4) if curve.height else None,
              "reward_accuracy_mean": round(float(curve["reward_accuracy"].fill_nan(None).mean() or 0), 4)
              if curve.height else None,
              "reward_margin_last": round(float(curve["reward_margin"][-1]), 4) if curve.height else None,
              "runtime_s": round(time.perf_counter() - started, 1)}
    if main:
        write_csv(curve, plot_csv)
        write_metrics(result, metrics, timings)
    return result
