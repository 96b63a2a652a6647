"""What the sft, dpo and grpo stages share: the optimiser, batch and precision settings of a TRL/transformers
run (``TrainSettings``, with LoRA), the check for examples over ``max_length`` and publishing the trained model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from longwriter.failures import Reason, failure_row
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
    """What SFT, DPO and GRPO share: the optimiser, batch and precision settings of a TRL/transformers run."""

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
            rows.append(failure_row(stage, Reason.OVER_MAX_LENGTH, f"{longest} tokens > max_length {t.max_length}: "
                                    f"{action}", instruction_id=example_id))
    return rows


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
