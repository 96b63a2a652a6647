"""Stage ``grpo``: reinforcement learning for long writing with TRL's GRPOTrainer.

The open version of what LongWriter-Zero reports (GRPO with a length reward, a writing-quality reward and a
format/repetition reward): for each prompt the policy samples ``num_generations`` completions, each is rewarded
(``longwriter.train.rewards``: length on the paper's S_l curve, the judge's quality, minus repetition, and TRL's
soft overlong punishment near the completion cap), and the policy moves toward the completions that beat their
group's mean.

A completion whose quality judgement failed (the judge's call failed after its retries, or its reply was unusable:
``JudgeReward`` gives None and writes a failures row with that cause) is masked out of its group: every one of its
rewards is set to NaN once TRL has gathered the batch (``judge_masking_trainer``), which TRL 1.16 treats as an
unscorable completion. With r_i = sum_k w_k * reward_k(i) (``grpo.weights``) and J the judged completions of a
group, TRL's advantage (``scale_rewards="group"``) is

    A_i = (r_i - mean_{j in J} r_j) / (std_{j in J} r_j + 1e-4)   for i in J    (std: Bessel-corrected)
    A_i = 0                                                       for a masked completion

so the masked completion is neither in its group's baseline (mean and std) nor given an advantage: it moves the
policy only through the KL term (``beta``), like any completion with advantage 0, and its tokens still count in
the loss's token normaliser. A group with one judged completion has no std (TRL: NaN, then 0): every advantage
of it is 0. ``masked_completions`` in the metrics counts them (one per judge failures row).

Prompts: the selected instructions, each with the words it asks for (stated in the prompt, else its plan's total),
plus ``grpo.pool`` (a JSONL in LongBench-Write's format: ``prompt``, ``length``). A prompt whose required words
need more tokens than ``max_completion_length`` (by the evaluation's words-to-tokens bound,
``longwriter.generation.LengthCap``) is left out with a failures row: its length reward could only ever punish,
whatever the policy wrote. So is a selected instruction with no length stated and no plan.

The same code runs the CPU smoke run (the 135M model, a few prompts, short completions, a handful of steps) and a
GPU recipe (configs/params/grpo-gpu.yaml: vLLM colocated generation, completions in the thousands of tokens,
DeepSpeed through ``train.launch``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from longwriter.benchmark import read_benchmark
from longwriter.checks import non_negative, positive, positive_int, within
from longwriter.errors import ConfigError
from longwriter.failures import Reason, failure_row, reason_counts, write_failures
from longwriter.files import read_table, write_csv, write_metrics
from longwriter.generation import LengthCap
from longwriter.judge import JudgeConfig, read_prompt_template
from longwriter.length_target import read_targets
from longwriter.llm import ClientSettings, ResponseCache, open_endpoint
from longwriter.schemas import Instructions, Plans, RLPrompts, validate, write_checked
from longwriter.train.checkpoint import discard_checkpoints, resume_checkpoint, run_fingerprint
from longwriter.train.rewards import JudgeReward, gather_judge, length_reward, repetition_reward
from longwriter.train.trainer import TrainSettings, load_model, load_tokenizer, publish


@dataclass(frozen=True)
class RewardWeights:
    length: float = 1.0
    quality: float = 1.0
    repetition: float = 1.0
    overlong: float = 1.0      # TRL's soft overlong punishment (0 .. -1 in the last overlong_buffer tokens)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            non_negative(f.name, getattr(self, f.name))


@dataclass(frozen=True)
class GRPOSettings:
    """The ``grpo`` section."""

    train: TrainSettings = field(default_factory=lambda: TrainSettings(
        learning_rate=1e-6, max_steps=2, per_device_train_batch_size=2))
    start: Literal["sft", "dpo", "base"] = "sft"   # the checkpoint the policy starts from (models/<start>)
    pool: str | None = "data/rl/prompts.jsonl"  # more prompts: JSONL in LongBench-Write's format (prompt, length)
    use_selected: bool = True          # the selected instructions as prompts
    max_prompts: int | None = None     # at most this many prompts (seeded sample; None: all)
    num_generations: int = 2           # completions per prompt (the group)
    max_completion_length: int = 384   # tokens
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.04                 # KL penalty to the start model (0: no reference model, no KL)
    overlong_buffer: int = 64          # tokens before the cap where the soft overlong punishment ramps in
    repetition_n: int = 4              # n-gram length of the repetition penalty (postprocess's)
    weights: RewardWeights = field(default_factory=RewardWeights)
    use_vllm: bool = False             # GPU: vLLM generation (colocated)
    vllm_gpu_memory_utilization: float = 0.3   # the share of each GPU's memory vLLM takes beside training
    # the context vLLM is built for, in tokens: at least the longest prompt plus max_completion_length. None: TRL
    # takes the model config's (131,072 for Llama-3.1), whose KV cache does not fit beside training on 80 GB
    vllm_max_model_length: int | None = None
    vllm_tensor_parallel_size: int = 1  # GPUs each vLLM engine is split over (it must divide the number of processes)

    def __post_init__(self) -> None:
        # (TRL checks that a step's completions, over all processes, make whole groups)
        if self.num_generations < 2:
            raise ValueError("num_generations must be >= 2: a group of one has no mean to beat")
        if not 0 <= self.overlong_buffer < self.max_completion_length:
            raise ValueError("overlong_buffer must be within [0, max_completion_length)")
        if not 0 < self.vllm_gpu_memory_utilization <= 1:
            raise ValueError("vllm_gpu_memory_utilization must be within (0, 1]")
        if self.vllm_max_model_length is not None and self.vllm_max_model_length <= self.max_completion_length:
            raise ValueError(f"vllm_max_model_length ({self.vllm_max_model_length}) must exceed "
                             f"max_completion_length ({self.max_completion_length}): the prompt needs room too")
        if self.vllm_tensor_parallel_size < 1:
            raise ValueError("vllm_tensor_parallel_size must be >= 1")
        positive("temperature", self.temperature)  # TRL samples every completion: 0 would divide by zero
        within("top_p", self.top_p, 0, 1, low_open=True)
        non_negative("beta", self.beta)
        positive_int("repetition_n", self.repetition_n)

    def vllm_kwargs(self) -> dict[str, Any]:
        """TRL GRPOConfig's vLLM arguments: generation colocated on the training GPUs (TRL reads the others only
        with use_vllm)."""
        return {"use_vllm": self.use_vllm, "vllm_mode": "colocate",
                "vllm_gpu_memory_utilization": self.vllm_gpu_memory_utilization,
                "vllm_max_model_length": self.vllm_max_model_length,
                "vllm_tensor_parallel_size": self.vllm_tensor_parallel_size}


def rl_prompts(cfg: GRPOSettings, instructions_path: str | Path, plans_path: str | Path,
               seed: int = 0, targets: dict[str, tuple[int, int]] | None = None
               ) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """The prompts (id, prompt, lang, required, required_min) and the failures rows of those left out. The
    length rewarded: a stated one ([L, L]), else the prompt's length target (``targets``, the
    ``longwriter.length_target`` table: [min, max]), else, for a selected instruction, its plan's total."""
    targets = targets or {}
    rows: list[dict[str, Any]] = []

    def with_range(row: dict[str, Any], stated: int | None, fallback: int | None = None) -> dict[str, Any]:
        low, high = (stated, stated) if stated else targets.get(row["prompt"], (fallback, fallback))
        return {**row, "required": high, "required_min": low}

    if cfg.use_selected:
        instructions = validate(read_table(instructions_path), Instructions, instructions_path)
        plans = validate(read_table(plans_path), Plans, plans_path)
        planned = dict(plans.group_by("instruction_id").agg(pl.col("words").sum()).iter_rows())
        for r in instructions.iter_rows(named=True):
            rows.append(with_range({"id": r["id"], "prompt": r["prompt"], "lang": r["lang"]}, r["required_words"],
                                   planned.get(r["id"])))
    if cfg.pool is not None:
        for r in read_benchmark(cfg.pool, allow_unstated=True).iter_rows(named=True):
            rows.append(with_range({"id": f"pool:{r['index']}", "prompt": r["prompt"], "lang": r["lang"]},
                                   r["required"]))
    cap, failures, kept = LengthCap(), [], []
    for r in rows:
        if r["required"] is None:
            failures.append(failure_row("grpo", Reason.NO_REQUIRED_LENGTH, "no length stated in the prompt, no length "
                                        "target and no plan", instruction_id=r["id"]))
            continue
        # a range's bottom is enough for the full reward
        need = cap.tokens(r["required_min"], r["lang"], ratio=1.0)
        if need > cfg.max_completion_length:
            failures.append(failure_row("grpo", Reason.OVER_MAX_LENGTH,
                                        f"{r['required_min']} words need about {need} tokens > max_completion_length "
                                        f"{cfg.max_completion_length}: the length reward could only punish",
                                        instruction_id=r["id"]))
            continue
        kept.append(r)
    table = pl.DataFrame(kept, schema={"id": pl.Utf8, "prompt": pl.Utf8, "lang": pl.Utf8, "required": pl.Int64,
                                       "required_min": pl.Int64})
    if cfg.max_prompts is not None and table.height > cfg.max_prompts:
        sampled = table.sample(cfg.max_prompts, seed=seed).sort("id")
        failures += [failure_row("grpo", Reason.LEFT_OUT, f"not in the seeded sample of grpo.max_prompts "
                                 f"{cfg.max_prompts}", instruction_id=i)
                     for i in table.filter(~pl.col("id").is_in(sampled["id"].implode()))["id"]]
        table = sampled
    return table, failures


def _once(start: Callable[[], str]) -> Callable[[], str]:
    """``start`` called at most once, whichever thread asks first: each reward call opens its own client, and
    all of them must share one judge server. It is started on TRL's reward event loop thread, which lives as long
    as the process (the server is stopped with the thread that started it), and only when a judgement is not
    cached: a rerun whose judgements all are starts no server."""
    lock, url = threading.Lock(), []

    def started() -> str:
        with lock:
            if not url:
                url.append(start())
            return url[0]
    return started


@functools.cache
def judge_masking_trainer() -> type:
    """TRL's ``GRPOTrainer`` with one more argument, ``judge`` (the quality reward function, or None): a completion
    that ``judge`` rated None gets None from every reward function, so TRL masks it out of its group.

    Why here, and not by the reward functions: in TRL 1.16 ``GRPOTrainer._calculate_rewards`` turns a None reward
    into NaN, runs the sync functions (length, repetition, overlong) before the async ones (the judge), whatever
    their order in ``reward_funcs``, and gathers every process's rows (``gather``), groups contiguous: prompt p's
    ``num_generations`` completions are rows p*G .. p*G+G-1 (``RepeatSampler``). ``_generate_and_score_completions``
    then sums the weighted rewards with ``nansum`` (a NaN quality beside a scored length is 0 quality, inside the
    group's baseline), and only a row whose every reward is NaN (``unscorable_mask``) is set to NaN before the
    group's ``torch.nanmean`` and ``nanstd`` (left out of both), its advantage made 0 by ``torch.nan_to_num``.
    So this override of ``_calculate_rewards`` makes a failed judgement's whole row NaN after the gather (the same
    tensor on every process), and counts the rows in ``masked_completions``."""
    import torch
    from trl import GRPOTrainer

    class JudgeMaskingGRPOTrainer(GRPOTrainer):
        def __init__(self, *args: Any, judge: Callable[..., Any] | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.judge_column = (None if judge is None
                                 else next(i for i, f in enumerate(self.reward_funcs) if f is judge))
            self.masked_completions = 0

        def _calculate_rewards(self, inputs: Any, prompts: Any, completions: Any, completion_ids_list: Any) -> Any:
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            if self.judge_column is not None:
                failed = torch.isnan(rewards[:, self.judge_column])
                rewards[failed] = torch.nan
                self.masked_completions += int(failed.sum())
            return rewards

    return JudgeMaskingGRPOTrainer


def reward_curve(log_history: list[dict[str, Any]]) -> pl.DataFrame:
    """Per logging step: each reward's mean, the combined reward, completion length, clipped ratio and KL."""
    names = {"reward": "reward", "rewards/length_reward/mean": "length",
             "rewards/judge_quality/mean": "quality", "rewards/repetition_penalty/mean": "repetition",
             "rewards/soft_overlong_punishment_reward/mean": "overlong",
             "completions/mean_length": "completion_length", "completions/clipped_ratio": "clipped_ratio",
             "kl": "kl", "loss": "loss"}
    rows = [{"step": int(e["step"]), **{out: _float(e.get(key)) for key, out in names.items()}}
            for e in log_history if "step" in e and "reward" in e]
    return pl.DataFrame(rows, schema={"step": pl.Int64, **dict.fromkeys(names.values(), pl.Float64)})


def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def run_grpo(cfg: GRPOSettings, judge: JudgeConfig, settings: ClientSettings, model_dir: str | Path,
             instructions_path: str | Path, plans_path: str | Path, output_dir: str | Path, metrics: str | Path,
             plot_csv: str | Path, failures: str | Path, timings: str | Path | None = None,
             trust_remote_code: bool = False, prompts_output: str | Path | None = None,
             targets: str | Path | None = None) -> dict[str, Any]:
    """The whole stage; ``prompts_output`` (the stage always names it) gets the prompts trained on; ``targets``:
    the length targets table (prompts that state no length)."""
    import tempfile

    from accelerate.utils import gather_object
    from datasets import Dataset
    from trl import GRPOConfig
    from trl.rewards import get_soft_overlong_punishment

    t = cfg.train
    target_of = read_targets(targets)
    prompts, failure_rows = rl_prompts(cfg, instructions_path, plans_path, t.seed, target_of)
    if prompts.height == 0:
        raise ConfigError(f"grpo: no prompt left to train on ({len(failure_rows)} left out: "
                         f"{reason_counts(failure_rows)}); add a pool or raise max_completion_length")
    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}], "required": r["required"],
                                  "required_min": r["required_min"]} for r in prompts.iter_rows(named=True)])
    template = read_prompt_template(judge.prompt_file) if judge.prompt_file is not None else None
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        funcs: list[Any] = [length_reward, repetition_reward(cfg.repetition_n),
                            get_soft_overlong_punishment(cfg.max_completion_length, cfg.overlong_buffer)]
        weights = [cfg.weights.length, cfg.weights.repetition, cfg.weights.overlong]
        quality: JudgeReward | None = None
        if cfg.weights.quality > 0:
            endpoint = stack.enter_context(open_endpoint(judge.model, settings))
            if endpoint.start is not None:
                endpoint = dataclasses.replace(endpoint, start=_once(endpoint.start))
            cache = stack.enter_context(ResponseCache(settings.cache_path / "responses.sqlite"))
            quality = JudgeReward(endpoint, cache, settings, judge, template)
            funcs.append(quality)
            weights.append(cfg.weights.quality)
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix="grpo-"))
        kwargs = {k: v for k, v in t.trainer_kwargs(t.output_dir("grpo", scratch)).items() if k != "max_length"}
        # GRPOConfig turns gradient checkpointing on by default under its old name, beside transformers' new one:
        # both follow train.gradient_checkpointing (off by default: a small model needs no memory saved)
        kwargs["gradient_checkpointing"] = t.gradient_checkpointing
        kwargs["trust_remote_code"] = trust_remote_code  # TRL loads the reference model with it
        args = GRPOConfig(**kwargs, num_generations=cfg.num_generations,
                          max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                          top_p=cfg.top_p, beta=cfg.beta, reward_weights=weights, **cfg.vllm_kwargs(),
                          disable_tqdm=None)
        if quality is not None:
            quality.rank = args.process_index  # names its failures by their place in the whole batch
        # loaded once the config exists (ZeRO-3: partitioned as it loads)
        # a failed judgement masks its completion out of its group (judge_masking_trainer)
        trainer = judge_masking_trainer()(model=load_model(model_dir, trust_remote_code, t.attn_implementation),
                                          reward_funcs=funcs, args=args, judge=quality,
                                          train_dataset=dataset,
                                          processing_class=tokenizer, peft_config=t.peft_config())
        trainer.train(resume_from_checkpoint=resume_checkpoint(trainer, run_fingerprint(
            "grpo", cfg, [model_dir, instructions_path, plans_path, *([cfg.pool] if cfg.pool else []),
                     *([targets] if targets else [])], judge)))
        history = list(trainer.state.log_history)
        publish(trainer, tokenizer, output_dir, t.lora is not None, model_dir, trust_remote_code)
        discard_checkpoints(trainer)
    accelerator = trainer.accelerator
    # each process rewarded its own share of the completions: its judge failures and call stats are its own
    judge_failures, judge_stats = gather_judge(quality, gather_object)
    curve = reward_curve(history)
    first, last = (curve.row(0, named=True), curve.row(-1, named=True)) if curve.height else ({}, {})
    result = {
        "start": cfg.start, "prompts": prompts.height, "left_out": reason_counts(failure_rows),
        # prompts whose length reward is against a length target's range (they state no length)
        "length_targets": int(prompts["prompt"].is_in(list(target_of)).sum()),
        "steps": int(curve["step"].max()) if curve.height else 0,
        # per optimizer step: a batch per process per accumulation step (each completion is used once)
        "completions": trainer.state.global_step * t.per_device_train_batch_size * t.gradient_accumulation_steps
        * accelerator.num_processes,
        "first": first, "last": last,
        "judge_failed": len(judge_failures),
        # completions masked out of their group's advantages for a failed judgement (after the gather: all of them)
        "masked_completions": trainer.masked_completions,
        "judge_llm": judge_stats.as_metrics() if judge_stats else None,
        "runtime_s": round(time.perf_counter() - started, 1),
    }
    if accelerator.is_main_process:  # one write, of every process's rows
        if prompts_output is not None:
            write_checked(prompts, RLPrompts, prompts_output)
        write_failures(failure_rows + judge_failures, failures)
        write_csv(curve, plot_csv)
        write_metrics(result, metrics, timings)
    return result
