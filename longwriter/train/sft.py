"""Stage ``sft``: supervised fine-tuning on the mixed dataset with TRL's SFTTrainer (accelerate underneath).

Targets (``assistant_turns``): every assistant turn of a conversation (``all``, as THUDM trained), or its last
one only (``last``); each turn's tokens run from the end of the chat template's generation prompt through its
end-of-turn tokens. A single-turn conversation gets the same tokens and targets either way, the ones TRL's
prompt-completion tokenization gives. Call ``ℓ_t`` the cross-entropy of target token ``t`` and take one
optimizer step: its batch is every micro-batch of the gradient accumulation on every process.

- ``loss_averaging: token`` (the paper's choice, and TRL's default): ``L = Σ_t ℓ_t / N``, ``N`` the target
  tokens of the whole batch, so every target token weighs the same and a 10,000-token answer counts 100 times
  a 100-token one.
- ``sequence`` (THUDM's ``--pack_loss``, LongAlign's loss weighting): ``L = (1/S) Σ_s (1/n_s) Σ_{t∈s} ℓ_t``,
  ``n_s`` the target tokens of sequence ``s`` (a conversation: all its target turns), ``S`` the sequences with
  a target in the whole batch. Each token weighs ``1/(n_s·S)``, every sequence the same, which the paper found
  under-weights long answers. A sequence is a row, or with packing a run of ``position_ids`` from 0 to the next
  0. An evaluation batch is averaged alone (``S``: its sequences), the Trainer averages the batches.

``packing`` (TRL's best-fit-decreasing packing) puts several conversations in a row of up to ``max_length``
tokens, padding-free: the batch is one row whose ``position_ids`` restart at 0 at each conversation, so no
token attends across a boundary. On a GPU the model must be loaded with a flash-attention implementation
(``attn_implementation="flash_attention_2"``) to get the variable-length kernels TRL's ``cu_seq_lens`` feed; on
the CPU (sdpa or eager) transformers builds a block-diagonal causal mask from the ``position_ids`` instead:
the same attention, but a dense ``length²`` mask, fine for tests and short rows, not for 32k-token ones. It does
so only in a forward without a KV cache (``use_cache=False``, which TRL's training and evaluation forwards set):
a packed row run with the cache on (a plain ``model(...)`` call) attends across its sequences.
The same code runs on a laptop CPU (the default: the 135M model, minutes) and on a multi-GPU node
(``accelerate launch`` with a DeepSpeed ZeRO-3 config: docs/scale.md).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from longwriter.checks import positive_int
from longwriter.errors import LongwriterError
from longwriter.failures import write_failures
from longwriter.files import read_table, write_csv, write_metrics
from longwriter.schemas import Chat, validate
from longwriter.train.checkpoint import checkpoint_step, discard_checkpoints, resume_checkpoint, run_fingerprint
from longwriter.train.trainer import (
    TrainSettings,
    load_model,
    load_tokenizer,
    over_max_length,
    publish,
    trainable_parameters,
)


@dataclass(frozen=True)
class SFTSettings:
    """The ``sft`` section."""

    train: TrainSettings = field(default_factory=lambda: TrainSettings(
        learning_rate=5e-5, num_train_epochs=1.0, gradient_accumulation_steps=2, max_length=6144))
    loss_averaging: Literal["token", "sequence"] = "token"
    packing: bool = False          # pack several examples per row (BFD, padding-free, boundaries kept)
    padding_free: bool = False     # no pad tokens in a batch (flash-attention kernels on GPU)
    eval_steps: int | None = 2     # evaluate every N steps; null: once per epoch
    assistant_turns: Literal["all", "last"] = "all"  # the targets: every assistant turn, or the last one

    def __post_init__(self) -> None:
        positive_int("eval_steps", self.eval_steps, optional=True)


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


def conversation_tokens(tokenizer: Any, messages: list[dict[str, str]],
                        turns: Literal["all", "last"] = "all") -> dict[str, list[int]]:
    """``input_ids`` of a conversation under the chat template, and ``completion_mask`` (1: a target token) over
    every assistant turn (``all``) or the last (``last``): TRL's pre-tokenized form, which it turns into labels,
    truncates and packs.

    A turn starts where the conversation before it, rendered with the generation prompt, stops agreeing with
    the whole one (TRL's rule for a prompt-completion example) and ends where the conversation through it
    does; the last turn runs to the end. SmolLM2's template has no ``{% generation %}`` markers, so TRL's own
    ``assistant_only_loss`` cannot find the turns; this works for any template that renders a conversation's
    start the same with or without what follows."""
    def ids(conversation: list[dict[str, str]], generation_prompt: bool = False) -> list[int]:
        return list(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                                  add_generation_prompt=generation_prompt)["input_ids"])

    def agreeing(a: list[int], b: list[int]) -> int:
        return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))

    full = ids(messages)
    mask = [0] * len(full)
    last = len(messages) - 1
    for k, message in enumerate(messages):
        if message["role"] != "assistant" or (turns == "last" and k != last):
            continue
        start = agreeing(ids(messages[:k], generation_prompt=True), full)
        end = len(full) if k == last else agreeing(ids(messages[:k + 1]), full)
        mask[start:end] = [1] * max(0, end - start)
    return {"input_ids": full, "completion_mask": mask}


def tokenized_dataset(dataset: Any, tokenizer: Any, turns: Literal["all", "last"] = "all") -> Any:
    """A prompt-completion dataset (``chat_dataset``) as TRL's pre-tokenized form (``conversation_tokens``)."""
    return dataset.map(lambda ex: conversation_tokens(tokenizer, ex["prompt"] + ex["completion"], turns),
                       remove_columns=dataset.column_names)


def sequence_ids(labels: Any, position_ids: Any = None) -> Any:
    """For each next-token target (``labels[:, 1:]``), a number naming its sequence, unique in the batch: its row,
    or with ``position_ids`` (packed, padding-free rows) its run of positions starting at 0 within the row."""
    import torch

    rows, length = labels.shape
    row = torch.arange(rows, device=labels.device)[:, None]
    if position_ids is None:
        return row.expand(rows, length - 1)
    starts = (position_ids.to(labels.device) == 0).long().cumsum(dim=1)[:, 1:]  # token t+1's sequence in its row
    return starts + row * (length + 1)


def target_weights(labels: Any, position_ids: Any = None,
                   averaging: Literal["token", "sequence"] = "sequence") -> tuple[Any, Any]:
    """``(mask, weights)`` over the targets ``labels[:, 1:]``: ``token``: ``1/N`` (``N`` the batch's target tokens);
    ``sequence``: ``1/(n_s·S)`` (``n_s`` the target tokens of the token's sequence, ``S`` the batch's sequences
    with a target). Either way the weights of a batch sum to 1 (0 with no target)."""
    import torch

    mask = labels[:, 1:] != -100
    weights = torch.zeros(mask.shape, dtype=torch.float32, device=labels.device)
    if not mask.any():
        return mask, weights
    if averaging == "token":
        weights[mask] = 1.0 / mask.sum()
        return mask, weights
    _, inverse, counts = torch.unique(sequence_ids(labels, position_ids)[mask], return_inverse=True,
                                      return_counts=True)
    weights[mask] = 1.0 / (counts[inverse].float() * counts.numel())
    return mask, weights


def count_sequences(labels: Any, position_ids: Any = None) -> int:
    """The sequences with at least one target in a batch (``S`` of ``loss_averaging: sequence``)."""
    import torch

    mask = labels[:, 1:] != -100
    return int(torch.unique(sequence_ids(labels, position_ids)[mask]).numel())


def sequence_loss(per_token: Any, labels: Any, position_ids: Any = None, num_items_in_batch: Any = None) -> Any:
    """``loss_averaging: sequence`` from the per-token losses ``ℓ_t`` (aligned with ``labels[:, 1:]``, any value off
    target): ``Σ_s (1/n_s) Σ_{t∈s} ℓ_t`` over this micro-batch's sequences, divided by ``num_items_in_batch``,
    which the SFT trainer sets to ``S``, the sequences of the whole optimizer step (every accumulated micro-batch,
    every process). SFTTrainer multiplies the loss by the number of processes and DDP/DeepSpeed average the
    gradients over them, so the step optimises exactly the mean over the step's sequences of each one's mean
    token loss. Without ``num_items_in_batch`` (an evaluation batch): the mean over the batch's own sequences.

    ``position_ids`` (packed rows) mark the sequences; without them each row is one."""
    _, weights = target_weights(labels, position_ids, "sequence")
    total = (per_token * weights.to(per_token.dtype)).sum()  # weights 1/(n_s·S_batch): the batch's sequence mean
    if num_items_in_batch is None:
        return total
    return total * count_sequences(labels, position_ids) / num_items_in_batch


def sequence_mean_loss(gradient_accumulation_steps: int = 1):
    """``sequence_loss`` as a transformers ``compute_loss_func`` (from the full logits): what the SFT trainer
    computes from TRL's fused per-token log-probabilities instead, which never build the (tokens × vocabulary)
    logits. A training call without ``num_items_in_batch`` is divided by ``gradient_accumulation_steps``."""
    import torch
    import torch.nn.functional as F

    def loss_fn(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        logits = outputs.logits[:, :-1, :].float()
        labels = labels.to(logits.device)
        per_token = F.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
        loss = sequence_loss(per_token, labels, position_ids, num_items_in_batch)
        if num_items_in_batch is None and torch.is_grad_enabled():
            return loss / gradient_accumulation_steps
        return loss

    return loss_fn


def loss_curve(log_history: list[dict[str, Any]]) -> pl.DataFrame:
    """step, loss, split rows from a Trainer's log history (train and validation losses)."""
    rows = [{"step": int(e["step"]), "loss": float(e["loss"]), "split": "train"}
            for e in log_history if "loss" in e and "step" in e]
    rows += [{"step": int(e["step"]), "loss": float(e["eval_loss"]), "split": "validation"}
             for e in log_history if "eval_loss" in e and "step" in e]
    return pl.DataFrame(rows, schema={"step": pl.Int64, "loss": pl.Float64, "split": pl.Utf8})


def summarize(log_history: list[dict[str, Any]], started: float, tokens_before: int = 0) -> dict[str, Any]:
    """The run's metrics; ``tokens_before``: tokens trained before a resumed run started (not in its runtime)."""
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
            "tokens_per_s": round((train_tokens - tokens_before) / final.get("train_runtime", runtime), 1)
            if train_tokens else None,
            "runtime_s": round(runtime, 1)}


@functools.cache
def _trainer_class() -> type:
    """SFTTrainer for ``loss_averaging: sequence`` (``sequence_loss``): it counts the sequences of each optimizer
    step (``S``) where transformers counts target tokens (``num_items_in_batch``), and reweights the per-token
    log-probabilities of TRL's fused LM head, from which TRL's own loss (their sum over ``num_items_in_batch``, or
    over the batch's target tokens in evaluation) is then the per-sequence one."""
    import torch
    from trl import SFTTrainer

    class SequenceSFTTrainer(SFTTrainer):
        loss_is_scaled_for_ga = True  # divided by the count of the whole accumulated step

        def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
            batches, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
            count = torch.tensor(sum(count_sequences(b["labels"], b.get("position_ids")) for b in batches),
                                 device=device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                count = self.accelerator.gather(count).sum()
            return batches, count

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            def weighted(**kwargs: Any) -> Any:
                outputs = model(**kwargs)
                if not kwargs.get("fused_lm_head"):
                    return outputs
                labels, position_ids = kwargs["labels"], kwargs.get("position_ids")
                mask, weights = target_weights(labels, position_ids, "sequence")
                # TRL divides the sum by num_items_in_batch, or in evaluation by the batch's target tokens
                factor = count_sequences(labels, position_ids) if num_items_in_batch is not None else mask.sum()
                outputs.log_probs = outputs.log_probs * (weights * factor).to(outputs.log_probs.device)
                return outputs

            return super().compute_loss(weighted, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return SequenceSFTTrainer


def sft_trainer(cfg: SFTSettings, model: Any, tokenizer: Any, train_ds: Any, eval_ds: Any, scratch: str,
                trust_remote_code: bool = False) -> Any:
    """TRL's SFTTrainer configured by ``cfg``: loss on the assistant turns only, averaged per token or per
    sequence; ``train_ds``/``eval_ds`` are prompt-completion datasets (``chat_dataset``), tokenized here.
    ``model``: a model, or a checkpoint directory, loaded once the config exists (``trainer.load_model``)."""
    from trl import SFTConfig, SFTTrainer

    t, sequence = cfg.train, cfg.loss_averaging == "sequence"
    args = SFTConfig(**t.trainer_kwargs(scratch), packing=cfg.packing, padding_free=cfg.padding_free,
                     packing_strategy="bfd", completion_only_loss=True, eval_strategy="no" if len(eval_ds) == 0
                     else ("steps" if cfg.eval_steps else "epoch"), eval_steps=cfg.eval_steps, disable_tqdm=None,
                     average_tokens_across_devices=True, trust_remote_code=trust_remote_code,
                     # a NaN loss is logged as NaN for run_sft's divergence check (the default logs the finite
                     # mean of the logging window instead, 0.0 when every step is NaN)
                     logging_nan_inf_filter=False)
    if isinstance(model, (str, Path)):  # a checkpoint: loaded now that the config exists (ZeRO-3: partitioned)
        model = load_model(model, trust_remote_code, t.attn_implementation)
    trainer_class = _trainer_class() if sequence else SFTTrainer
    return trainer_class(
        model=model, args=args, train_dataset=tokenized_dataset(train_ds, tokenizer, cfg.assistant_turns),
        eval_dataset=tokenized_dataset(eval_ds, tokenizer, cfg.assistant_turns) if len(eval_ds) else None,
        processing_class=tokenizer, peft_config=t.peft_config())


def run_sft(cfg: SFTSettings, base_dir: str | Path, data_dir: str | Path, output_dir: str | Path,
            metrics: str | Path, plot_csv: str | Path, failures: str | Path | None = None,
            timings: str | Path | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    import tempfile

    t = cfg.train
    tokenizer = load_tokenizer(base_dir, trust_remote_code)
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
    with tempfile.TemporaryDirectory(prefix="sft-") as scratch:
        trainer = sft_trainer(cfg, base_dir, tokenizer, train_ds, eval_ds, t.output_dir("sft", scratch),
                              trust_remote_code)
        started = time.perf_counter()
        # the curve starts at the model before any update (train() resets the log, so it is kept aside)
        before = [{"step": 0, "eval_loss": trainer.evaluate()["eval_loss"]}] if len(eval_ds) else []
        resume = resume_checkpoint(trainer, run_fingerprint("sft", cfg, [base_dir, data_dir]))
        tokens_before = getattr(trainer, "_total_train_tokens", 0) if resume else 0
        trainer.train(resume_from_checkpoint=resume)
        if len(eval_ds) and not any("eval_loss" in e and e.get("step") == trainer.state.global_step
                                    for e in trainer.state.log_history):
            last = trainer.evaluate()
            trainer.state.log_history.append({"step": trainer.state.global_step, "eval_loss": last["eval_loss"]})
        history = before + list(trainer.state.log_history)
        # checked before publishing: diverged weights must not replace the checkpoint the next stages read
        if any(isinstance(v, float) and math.isnan(v) for v in summarize(history, started).values()):
            raise RuntimeError("training diverged: a loss is NaN")
        publish(trainer, tokenizer, output_dir, t.lora is not None, base_dir, trust_remote_code)
        discard_checkpoints(trainer)
    result = summarize(history, started, tokens_before)
    if resume:
        result["resumed_from_step"] = checkpoint_step(resume)
    result.update({"examples": {"train": len(train_ds), "validation": len(eval_ds)},
                   "over_max_length": {"count": len(long_rows), "action": t.over_max_length},
                   "loss_averaging": cfg.loss_averaging, "lora": t.lora is not None,
                   "trainable_parameters": trainable_parameters(trainer.model)})
    if trainer.accelerator.is_main_process:  # every process has the same figures: one writes them
        write_csv(loss_curve(history), plot_csv)
        if failures is not None:
            write_failures(long_rows, failures)
        write_metrics(result, metrics, timings)
    return result
