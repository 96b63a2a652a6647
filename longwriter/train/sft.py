"""Stage ``sft``: supervised fine-tuning on the mixed dataset with TRL's SFTTrainer (accelerate underneath).

Loss is on the assistant's final turn only (prompt-completion format). ``loss_averaging: token`` (the
paper's choice, and TRL's default) divides the summed token losses of a whole batch, across gradient
accumulation and devices, by its number of target tokens, so every target token weighs the same and a
10,000-token answer counts 100 times a 100-token one. ``sequence`` averages each sequence's tokens first and
then the sequences, which the paper found under-weights long answers (a long answer's tokens each count
less). The same code runs on a laptop CPU (the default: the 135M model, minutes) and on a multi-GPU node
(``accelerate launch`` with a DeepSpeed ZeRO-3 config: docs/scale.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from longwriter.errors import LongwriterError
from longwriter.failures import write_failures
from longwriter.files import read_table, write_csv, write_metrics
from longwriter.schemas import Chat, validate
from longwriter.train.trainer import TrainSettings, over_max_length, publish


@dataclass(frozen=True)
class SFTSettings:
    """The ``sft`` section."""

    train: TrainSettings = field(default_factory=lambda: TrainSettings(
        learning_rate=5e-5, num_train_epochs=1.0, gradient_accumulation_steps=2, max_length=6144))
    loss_averaging: Literal["token", "sequence"] = "token"
    packing: bool = False          # pack several examples per sequence (BFD); needs padding_free attention
    padding_free: bool = False     # no pad tokens in a batch (flash-attention kernels on GPU)
    eval_steps: int | None = 2     # evaluate every N steps; null: once per epoch

    def __post_init__(self) -> None:
        # both put several examples in one row, and the per-sequence mean would average them as one
        if self.loss_averaging == "sequence" and self.packing:
            raise ValueError("loss_averaging 'sequence' needs packing off (packed rows mix sequences)")
        if self.loss_averaging == "sequence" and self.padding_free:
            raise ValueError("loss_averaging 'sequence' needs padding_free off (a padding-free batch is one row "
                             "holding every sequence)")


def prompt_completion(messages: list[dict[str, str]]) -> dict[str, Any]:
    """A chat example in TRL's conversational prompt-completion form: loss on the final assistant turn."""
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("a training conversation must end with an assistant turn")
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def load_split(path: str | Path, exclude: frozenset[str] = frozenset()) -> Any:
    """A mix split as a ``datasets.Dataset`` of prompt-completion examples (less the ids in ``exclude``)."""
    return chat_dataset(validate(read_table(path), Chat, path), exclude)


def chat_dataset(table: pl.DataFrame, exclude: frozenset[str] = frozenset()) -> Any:
    """A ``Chat`` table as a ``datasets.Dataset`` of prompt-completion examples (less the ids in ``exclude``)."""
    from datasets import Dataset

    return Dataset.from_list([prompt_completion(m) for i, m in zip(table["id"].to_list(), table["messages"].to_list(),
                                                                   strict=True) if i not in exclude])


def sequence_mean_loss(gradient_accumulation_steps: int):
    """A ``compute_loss_func``: per-sequence mean token loss, averaged over the sequences of the batch.

    Each process averages its own sequences and DDP/DeepSpeed average the gradients over processes, so the
    trainer must not also multiply the loss by the number of processes, as transformers does for a custom loss
    when ``average_tokens_across_devices`` is on (right for a token sum over a global token count, wrong here):
    ``sft_trainer`` turns it off in this mode."""
    import torch
    import torch.nn.functional as F

    def loss_fn(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs.logits[:, :-1, :].float()
        targets = labels[:, 1:]
        per_token = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        mask = (targets != -100).float()
        counts = mask.sum(dim=1)
        per_sequence = (per_token * mask).sum(dim=1) / counts.clamp(min=1)
        has_targets = (counts > 0).float()
        loss = (per_sequence * has_targets).sum() / has_targets.sum().clamp(min=1)
        # The Trainer leaves gradient-accumulation scaling of a training step to a custom loss function; an
        # evaluation step (run without gradients) is one batch, not a share of an accumulated one.
        return loss / gradient_accumulation_steps if torch.is_grad_enabled() else loss

    return loss_fn


def loss_curve(log_history: list[dict[str, Any]]) -> pl.DataFrame:
    """step, loss, split rows from a Trainer's log history (train and validation losses)."""
    rows = [{"step": int(e["step"]), "loss": float(e["loss"]), "split": "train"}
            for e in log_history if "loss" in e and "step" in e]
    rows += [{"step": int(e["step"]), "loss": float(e["eval_loss"]), "split": "validation"}
             for e in log_history if "eval_loss" in e and "step" in e]
    return pl.DataFrame(rows, schema={"step": pl.Int64, "loss": pl.Float64, "split": pl.Utf8})


def summarize(log_history: list[dict[str, Any]], started: float) -> dict[str, Any]:
    curve = loss_curve(log_history)
    # TRL counts the tokens it trained on in every training log entry (cumulative)
    train_tokens = int(max((e["num_tokens"] for e in log_history if "num_tokens" in e and "loss" in e), default=0))
    train = curve.filter(pl.col("split") == "train")["loss"].to_list()
    evals = curve.filter(pl.col("split") == "validation")["loss"].to_list()
    runtime = time.perf_counter() - started
    final = next((e for e in reversed(log_history) if "train_runtime" in e), {})
    return {"steps": int(max(curve["step"].to_list(), default=0)),
            "train_loss_first": round(train[0], 4) if train else None,
            "train_loss_last": round(train[-1], 4) if train else None,
            "validation_loss_first": round(evals[0], 4) if evals else None,
            "validation_loss_last": round(evals[-1], 4) if evals else None,
            "train_tokens": train_tokens,
            "tokens_per_s": round(train_tokens / final.get("train_runtime", runtime), 1) if train_tokens else None,
            "runtime_s": round(runtime, 1)}


def sft_trainer(cfg: SFTSettings, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, scratch: str) -> Any:
    """TRL's SFTTrainer configured by ``cfg``: loss on the answer only, averaged per token or per sequence."""
    from trl import SFTConfig, SFTTrainer

    t, sequence = cfg.train, cfg.loss_averaging == "sequence"
    args = SFTConfig(**t.trainer_kwargs(scratch), packing=cfg.packing, padding_free=cfg.padding_free,
                     completion_only_loss=True, eval_strategy="no" if len(eval_ds) == 0 else
                     ("steps" if cfg.eval_steps else "epoch"), eval_steps=cfg.eval_steps, disable_tqdm=None,
                     average_tokens_across_devices=not sequence)
    return SFTTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds if len(eval_ds) else None,
        processing_class=tokenizer, peft_config=t.peft_config(),
        compute_loss_func=sequence_mean_loss(t.gradient_accumulation_steps) if sequence else None)


def run_sft(cfg: SFTSettings, base_dir: str | Path, data_dir: str | Path, output_dir: str | Path,
            metrics: str | Path, plot_csv: str | Path, failures: str | Path | None = None,
            timings: str | Path | None = None) -> dict[str, Any]:
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = cfg.train
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    splits = {name: Path(data_dir) / f"{name}.parquet" for name in ("train", "validation")}
    tables = {name: validate(read_table(path), Chat, path) for name, path in splits.items()}
    long_rows = [row for name, table in tables.items() for row in over_max_length(tokenizer, dict(zip(
        table["id"].to_list(), ([m] for m in table["messages"].to_list()), strict=True)), t, f"sft:{name}")]
    exclude = frozenset(r["instruction_id"] for r in long_rows) if t.over_max_length == "drop" else frozenset()
    train_ds, eval_ds = chat_dataset(tables["train"], exclude), chat_dataset(tables["validation"], exclude)
    if len(train_ds) == 0:
        raise LongwriterError(f"{splits['train']}: no training example within max_length {t.max_length} tokens "
                              f"({len(long_rows)} longer): raise sft.train.max_length or set over_max_length: "
                              "truncate")
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    with tempfile.TemporaryDirectory(prefix="sft-") as scratch:
        trainer = sft_trainer(cfg, model, tokenizer, train_ds, eval_ds, scratch)
        started = time.perf_counter()
        # the curve starts at the model before any update (train() resets the log, so it is kept aside)
        before = [{"step": 0, "eval_loss": trainer.evaluate()["eval_loss"]}] if len(eval_ds) else []
        trainer.train()
        if len(eval_ds) and not any("eval_loss" in e and e.get("step") == trainer.state.global_step
                                    for e in trainer.state.log_history):
            last = trainer.evaluate()
            trainer.state.log_history.append({"step": trainer.state.global_step, "eval_loss": last["eval_loss"]})
        history = before + list(trainer.state.log_history)
        publish(trainer, tokenizer, output_dir, t.lora is not None)
    result = summarize(history, started)
    result.update({"examples": {"train": len(train_ds), "validation": len(eval_ds)},
                   "over_max_length": {"count": len(long_rows), "action": t.over_max_length},
                   "loss_averaging": cfg.loss_averaging, "lora": t.lora is not None,
                   "trainable_parameters": int(sum(p.numel() for p in trainer.model.parameters() if p.requires_grad))})
    if any(isinstance(v, float) and math.isnan(v) for v in result.values()):
        raise RuntimeError("training diverged: a loss is NaN")
    write_csv(loss_curve(history), plot_csv)
    if failures is not None:
        write_failures(long_rows, failures)
    write_metrics(result, metrics, timings)
    return result
