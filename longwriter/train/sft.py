"""Stage ``sft``: supervised fine-tuning on the mixed dataset with TRL's SFTTrainer (accelerate underneath).

Loss is on the assistant's final turn only (prompt-completion format). ``loss_averaging: token`` (the
paper's choice, and TRL's default) divides the summed token losses of a whole batch, across gradient
accumulation and devices, by its number of target tokens, so every target token weighs the same and a
10,000-token answer counts 100 times a 100-token one. ``sequence`` averages each sequence's tokens first and
then the sequences, which the paper found under-weights long answers (a long answer's tokens each count
less). The same code runs on a laptop CPU (the default: the 135M model, minutes) and on a multi-GPU node
(``accelerate launch`` with a DeepSpeed ZeRO-3 config: see README).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from longwriter.errors import LongwriterError
from longwriter.files import read_table, write_csv, write_json
from longwriter.schemas import Chat, validate, write_failures
from longwriter.train.checkpoint import save_checkpoint, staging_dir, swap_into


def _checkpointing_key() -> str:
    # transformers 5 renamed gradient_checkpointing; params keep the name TRL users know
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"


@dataclass(frozen=True)
class TrainSettings:
    """What SFT and DPO share: the optimiser, batch and precision settings of a TRL/transformers run."""

    learning_rate: float = 2e-5
    num_train_epochs: float = 1.0
    max_steps: int = -1                    # > 0 overrides epochs
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_length: int = 4096                 # tokens per example (prompt + answer under the chat template)
    # an example over max_length: "drop" it (the default: a training target is never cut) or "truncate" it
    # (TRL cuts its end); counted in the metrics and listed in the stage's failures table either way
    over_max_length: Literal["drop", "truncate"] = "drop"
    gradient_checkpointing: bool = False   # trades compute for memory: on for 8B+ models
    warmup_steps: float = 0.0             # an int: steps; a float in [0, 1): a fraction of all steps
    lr_scheduler_type: str = "linear"
    weight_decay: float = 0.0
    adam_beta2: float = 0.999              # the paper's recipe: 0.95
    logging_steps: int = 1
    seed: int = 0
    bf16: bool = False                     # true on GPUs that support it
    lora: LoraSettings | None = None       # null: full fine-tuning
    dataloader_num_workers: int = 0

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("learning_rate must be > 0, batch size and accumulation steps >= 1")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set num_train_epochs > 0 or max_steps > 0")

    def trainer_kwargs(self, output_dir: str) -> dict[str, Any]:
        """The transformers ``TrainingArguments`` fields these settings map to."""
        return {"output_dir": output_dir, "learning_rate": self.learning_rate,
                "num_train_epochs": self.num_train_epochs, "max_steps": self.max_steps,
                "per_device_train_batch_size": self.per_device_train_batch_size,
                "per_device_eval_batch_size": self.per_device_train_batch_size,
                "gradient_accumulation_steps": self.gradient_accumulation_steps,
                _checkpointing_key(): self.gradient_checkpointing, "warmup_steps": self.warmup_steps,
                "lr_scheduler_type": self.lr_scheduler_type, "weight_decay": self.weight_decay,
                "adam_beta2": self.adam_beta2,
                "logging_steps": self.logging_steps, "seed": self.seed, "data_seed": self.seed, "bf16": self.bf16,
                "save_strategy": "no", "report_to": [], "dataloader_num_workers": self.dataloader_num_workers,
                "max_length": self.max_length}

    def peft_config(self) -> Any:
        if self.lora is None:
            return None
        from peft import LoraConfig

        targets = self.lora.target_modules
        return LoraConfig(r=self.lora.r, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                          target_modules=targets if isinstance(targets, str) else list(targets), task_type="CAUSAL_LM")


@dataclass(frozen=True)
class SFTSettings:
    """The ``sft`` section."""

    train: TrainSettings = field(default_factory=TrainSettings)
    loss_averaging: Literal["token", "sequence"] = "token"
    packing: bool = False          # pack several examples per sequence (BFD); needs padding_free attention
    padding_free: bool = False     # no pad tokens in a batch (flash-attention kernels on GPU)
    eval_steps: int | None = None  # evaluate every N steps; null: once per epoch

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


def over_max_length(tokenizer: Any, examples: dict[str, list[list[dict[str, str]]]], t: TrainSettings,
                    stage: str) -> list[dict[str, Any]]:
    """Failures rows for the examples (id -> its conversations: one for SFT, chosen and rejected for DPO) with a
    conversation longer than ``t.max_length`` tokens under the chat template."""
    from longwriter.train.mix import token_lengths

    rows = []
    for example_id, conversations in examples.items():
        longest = max(token_lengths(tokenizer, conversations))
        if longest > t.max_length:
            action = "dropped" if t.over_max_length == "drop" else "truncated by the trainer"
            rows.append({"stage": stage, "instruction_id": example_id, "section": None, "attempts": 0,
                         "reason": "over_max_length",
                         "error": f"{longest} tokens > max_length {t.max_length}: {action}"})
    return rows


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


def publish(trainer: Any, tokenizer: Any, output_dir: str | Path, lora: bool) -> None:
    """Save the trained model as a plain checkpoint (LoRA adapters merged in); every process must call this."""
    import shutil

    if lora:
        merged = trainer.model.merge_and_unload()
        if trainer.accelerator.is_main_process:
            save_checkpoint(merged, tokenizer, output_dir)
        return
    main = trainer.accelerator.is_main_process
    staged = staging_dir(output_dir) if main else None
    # save_model gathers ZeRO-3 / FSDP shards on every process and writes from the main one
    target = trainer.accelerator.gather_object([str(staged)])[0] if trainer.accelerator.num_processes > 1 \
        else str(staged)
    trainer.save_model(target)
    if main:
        assert staged is not None
        try:
            tokenizer.save_pretrained(staged)
            # the Trainer's pickled arguments name its temporary output directory: kept, they would make two
            # trainings to the same weights two checkpoints, for DVC and for the response cache alike
            (staged / "training_args.bin").unlink(missing_ok=True)
            swap_into(staged, output_dir)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


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
            metrics: str | Path, plot_csv: str | Path, failures: str | Path | None = None) -> dict[str, Any]:
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
    write_json(result, metrics)
    return result
