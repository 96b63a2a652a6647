"""What the sft, dpo and grpo stages share: the optimiser, batch and precision settings of a TRL/transformers
run (``TrainSettings``, with LoRA), the check for examples over ``max_length`` and publishing the trained model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from longwriter.checks import positive, positive_int
from longwriter.errors import ConfigError
from longwriter.failures import Reason, failure_row
from longwriter.train.checkpoint import staging_dir, swap_into


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
    # save a resumable checkpoint (weights, optimizer, scheduler, RNG) every N optimizer steps into
    # <checkpoint_dir>/<stage>/; a rerun of the same run (settings and inputs) resumes from the last one, a
    # successful run deletes them. null: no intermediate checkpoints (a failed run starts over). THUDM: 400.
    save_steps: int | None = None
    # outside every DVC out (DVC deletes a stage's outs before running it) and gitignored
    checkpoint_dir: str = ".train-checkpoints"
    # the attention kernel the trained model loads with (transformers' attn_implementation): "flash_attention_2"
    # on a GPU node keeps packed sequences apart with the variable-length kernels (THUDM's patch does the same);
    # null: transformers' default (sdpa), which on the CPU keeps them apart only through position ids
    attn_implementation: str | None = None

    def __post_init__(self) -> None:
        positive("learning_rate", self.learning_rate)
        positive_int("per_device_train_batch_size", self.per_device_train_batch_size)
        positive_int("gradient_accumulation_steps", self.gradient_accumulation_steps)
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set num_train_epochs > 0 or max_steps > 0")
        if self.save_steps is not None and self.save_steps < 1:
            raise ValueError("save_steps must be >= 1 (or null: no intermediate checkpoints)")
        positive_int("max_length", self.max_length)

    def output_dir(self, stage: str, scratch: str) -> str:
        """The Trainer's output directory: ``<checkpoint_dir>/<stage>`` when checkpoints are saved, else ``scratch``
        (a temporary directory nothing is written to)."""
        return str(Path(self.checkpoint_dir) / stage) if self.save_steps else scratch

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
                # one checkpoint kept: it exists to resume from (a new one is written before the old goes)
                "save_strategy": "steps" if self.save_steps else "no", "save_steps": self.save_steps or 500,
                "save_total_limit": 1 if self.save_steps else None, "report_to": [],
                "dataloader_num_workers": self.dataloader_num_workers,
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


def launched_rank() -> int:
    """This process's rank in a launch (``accelerate launch``, torchrun, deepspeed, mpirun); 0 without a launcher.

    Read from the environment the launcher sets, so it needs no process group: a stage that trains nothing (DPO
    without pairs) never creates one, yet must write its outputs from one process only."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(["RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"], 0)


def base_trust_remote_code(base: dict[str, Any], where: str) -> bool:
    """``base.trust_remote_code`` (``base_model.BaseModelConfig``'s field, read here without that module's
    imports, which would make the training stages' code deps), honoured by every training stage's loaders."""
    value = base.get("trust_remote_code", False)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: trust_remote_code must be true or false, got {value!r}")
    return value


def load_tokenizer(path: str | Path, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)


def load_model(path: str | Path, trust_remote_code: bool, attn_implementation: str | None = None) -> Any:
    """The checkpoint at ``path`` to train, in its saved dtype.

    Call it only once the trainer's config (``TrainingArguments``, TRL's ``SFTConfig`` ...) exists: under a
    DeepSpeed ZeRO-3 launch creating that object registers the DeepSpeed config with transformers, and
    ``from_pretrained`` then partitions the weights across the processes as it reads them (``zero.Init``). Loaded
    before it, every process would hold the whole model at once, which is what ZeRO-3 is there to avoid."""
    from transformers import AutoModelForCausalLM

    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    return AutoModelForCausalLM.from_pretrained(str(path), dtype="auto", trust_remote_code=trust_remote_code, **extra)


def trainable_parameters(model: Any) -> int:
    """The number of trainable parameters of ``model``, whole under DeepSpeed ZeRO-3: there each parameter holds
    only this process's shard (``numel()`` is 0 once partitioned) and its full size is ``ds_numel``."""
    return int(sum(getattr(p, "ds_numel", None) or p.numel() for p in model.parameters() if p.requires_grad))


@contextlib.contextmanager
def _whole_loads() -> Iterator[None]:
    """``from_pretrained`` inside loads the whole model on this process alone, even under a ZeRO-3 launch (whose
    registered DeepSpeed config would make it partition the weights: a collective the other processes are not
    in)."""
    from transformers.integrations import deepspeed

    registered = deepspeed._hf_deepspeed_config_weak_ref
    deepspeed._hf_deepspeed_config_weak_ref = None
    try:
        yield
    finally:
        deepspeed._hf_deepspeed_config_weak_ref = registered


def merge_adapters(adapters: str | Path, base: str | Path, output_dir: str | Path, trust_remote_code: bool) -> None:
    """Write the base checkpoint ``base`` with the LoRA adapters saved in ``adapters`` merged in, as a plain
    checkpoint (no adapter keys) in ``output_dir``; loaded whole on this process, on the CPU (PEFT's merge and
    transformers' save too see no ZeRO-3: nothing here is partitioned, nothing to gather)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    with _whole_loads():
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto", trust_remote_code=trust_remote_code)
        merged = PeftModel.from_pretrained(model, str(adapters)).merge_and_unload()
        merged.save_pretrained(str(output_dir), safe_serialization=True)


def publish(trainer: Any, tokenizer: Any, output_dir: str | Path, lora: bool, base: str | Path | None = None,
            trust_remote_code: bool = False) -> None:
    """Save the trained model as a plain checkpoint, written by the main process; every process must call this.

    LoRA (``lora``: ``base`` is the checkpoint training started from): the Trainer saves the adapters (under
    ZeRO-3 it gathers them from every process's shards, ``Trainer.save_model``), then the main process loads
    ``base`` whole on the CPU and merges them in (``merge_adapters``). Merging in the trained model instead would
    read ZeRO-3-partitioned base weights (empty on each process) unless every one of them were gathered first
    (``deepspeed.zero.GatheredParameters``), which puts the whole model on every GPU at once; a CPU load of the
    base is the one path that is the same on a laptop and on a sharded node."""
    import shutil

    from accelerate.utils import gather_object  # (the Accelerator has no method of that name)

    if lora and base is None:
        raise ValueError("publish: a LoRA model needs the base checkpoint its adapters merge into")
    main = trainer.accelerator.is_main_process
    staged = staging_dir(output_dir) if main else None
    # every process names the main one's directory: save_model gathers ZeRO-3 / FSDP shards on all of them
    target = gather_object([str(staged)])[0]
    trainer.save_model(str(Path(target) / "adapters") if lora else target)
    if main:
        assert staged is not None
        try:
            if lora:
                assert base is not None
                merge_adapters(staged / "adapters", base, staged, trust_remote_code)
                shutil.rmtree(staged / "adapters")
            tokenizer.save_pretrained(staged)
            # the Trainer's pickled arguments name its temporary output directory: kept, they would make two
            # trainings to the same weights two checkpoints, for DVC and for the response cache alike
            (staged / "training_args.bin").unlink(missing_ok=True)
            swap_into(staged, output_dir)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
