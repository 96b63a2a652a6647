"""One GPU, at most 8 minutes: do the training stages run at the paper's sequence length, and how fast?

    python bench/gpu_check.py              # one H100 (or any CUDA GPU): writes bench/results/gpu_check.json
    python bench/gpu_check.py --dry-run    # CPU, seconds: the model config and every trainer's arguments, printed
    python bench/gpu_check.py --smoke      # CPU or GPU, a minute: the same three phases on a tiny model and short
                                           # sequences; writes /tmp/gpu_check.smoke.json (never bench/results)
    python bench/gpu_check.py --trl-only   # TRL directly, as where longwriter's training modules do not import

Not run yet: no GPU was available to the project, so bench/results/gpu_check.json does not exist (bench/README.md).

What it runs, with nothing downloaded (torch, transformers, accelerate, peft, TRL and datasets; the project's
training code when it imports, else TRL configured the same way):

- the model: a randomly initialised Llama of Llama-3.2-1B's shape (16 layers, hidden 2,048, MLP 8,192, 32 query
  and 8 key/value heads, tied embeddings) with a 49,152-token vocabulary (SmolLM2's size): ~1.07B parameters,
  bf16, saved to a scratch directory and loaded from there by each phase, as the stages load a checkpoint. The
  tokenizer is a word-level one built in place (one token per 4-letter word), so any text is token ids and back.
- sft: ``--sft-steps`` optimizer steps of one packed row of 32,768 tokens (conversations of random words, one
  token each: a 256-token user turn and an answer, 2,048 to 16,384 tokens in all, packed best-fit-decreasing into
  full rows; loss on the answers), padding-free, bf16, gradient checkpointing, with the paper's settings as
  configs/params/paper-train.yaml sets them (its sft section), through ``longwriter.train.sft.sft_trainer``
  (TRL's SFTTrainer; the conversations tokenized under the chat template as the stage does);
- dpo: ``--dpo-steps`` steps of one pair of 16,384-token sequences (32,768 tokens a step) against a reference
  model loaded from the same checkpoint, TRL's DPOTrainer with the arguments ``longwriter.train.dpo.run_dpo``
  passes (paper-train.yaml's dpo section);
- grpo: ``--grpo-steps`` steps of one group of 4 completions of up to ``--grpo-completion-tokens`` tokens generated
  by transformers, rewarded by the grpo stage's length and repetition rewards and TRL's soft overlong punishment
  (no judge), TRL's GRPOTrainer with the arguments ``longwriter.train.grpo.run_grpo`` passes (KL beta 0.04: a
  reference model in memory).

Figures per phase (bench/results/gpu_check.json): tokens/s over the steps after the first (the first step's
warm-up is reported apart), model FLOPs utilisation = 6 x N x tokens/s / the GPU's peak dense bf16 FLOP/s (N: the
model's parameters, the tied embedding counted once, as the LM head's matmul; attention's own FLOPs, gradient
checkpointing's recomputation and DPO's reference forward are not counted, so it understates the hardware's work),
the peak used (``PEAK_BF16_TFLOPS`` by device name: H100 SXM 989.4 TFLOP/s, H100 PCIe 756, H200 989.4;
``--peak-tflops`` overrides) and peak memory (torch.cuda.max_memory_allocated, per phase and overall). A phase that
fails is recorded with its error and the next one still runs; the command then exits 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import importlib.util
import itertools
import json
import platform
import random
import string
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import click
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # longwriter from this checkout, installed or not
RESULT = ROOT / "bench" / "results" / "gpu_check.json"
SMOKE_RESULT = Path(tempfile.gettempdir()) / "gpu_check.smoke.json"
PAPER_TRAIN = ROOT / "configs" / "params" / "paper-train.yaml"

# Peak dense (not sparse) bf16 tensor-core FLOP/s by device name, first match wins (NVIDIA's data sheets).
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("H200", 989.4), ("H800", 989.4),
                    ("A100", 312.0), ("L40S", 362.1), ("A10G", 70.0))
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<system>", "<user>", "<assistant>")
# each turn: its role token, its words, <eos>; the generation prompt: <assistant>
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eos> {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


@dataclasses.dataclass(frozen=True)
class Scale:
    """Model and sequence sizes of a run: ``FULL`` on a GPU, ``SMOKE`` anywhere in a minute."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    kv_heads: int
    seq_len: int              # tokens per packed SFT row, and per DPO pair (chosen + rejected)
    prompt_tokens: int        # SFT and DPO prompt tokens per sequence
    grpo_prompt_tokens: int
    grpo_required_words: int  # the words the GRPO prompts ask for (the length reward's target)


FULL = Scale(vocab_size=49152, hidden_size=2048, intermediate_size=8192, layers=16, heads=32, kv_heads=8,
             seq_len=32768, prompt_tokens=256, grpo_prompt_tokens=64, grpo_required_words=700)
SMOKE = Scale(vocab_size=1024, hidden_size=64, intermediate_size=128, layers=2, heads=4, kv_heads=2,
              seq_len=1024, prompt_tokens=16, grpo_prompt_tokens=8, grpo_required_words=20)


# --- the model and its tokenizer ------------------------------------------------------------------------------

def model_config(scale: Scale) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=scale.vocab_size, hidden_size=scale.hidden_size,
                       intermediate_size=scale.intermediate_size, num_hidden_layers=scale.layers,
                       num_attention_heads=scale.heads, num_key_value_heads=scale.kv_heads,
                       max_position_embeddings=scale.seq_len, tie_word_embeddings=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
                       pad_token_id=SPECIALS.index("<pad>"), eos_token_id=SPECIALS.index("<eos>"),
                       bos_token_id=SPECIALS.index("<bos>"))


def parameter_count(config: Any) -> int:
    """The model's parameters, counted on the meta device (no memory, no initialisation)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def word_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer of ``vocab_size`` tokens: the specials, then 4-letter words (aaaa, aaab, ...), split
    on whitespace; decoding joins the words with spaces, so every token is one word to the word counter. Its chat
    template renders a turn as its role token, its words and <eos>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ("".join(w) for w in itertools.product(string.ascii_lowercase, repeat=4))
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    vocab.update({w: i for i, w in zip(range(len(SPECIALS), vocab_size), words, strict=False)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(list(SPECIALS))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_random_model(scale: Scale, directory: Path, device: str, attn: str) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(model_config(scale), dtype=torch.bfloat16, attn_implementation=attn)
    model.save_pretrained(directory)
    word_tokenizer(scale.vocab_size).save_pretrained(directory)
    n = sum(p.numel() for p in model.parameters())
    del model
    return n


def load_model(directory: Path, attn: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory), dtype="auto", attn_implementation=attn)


# --- data: random token ids and words -------------------------------------------------------------------------

def row_lengths(seq_len: int, rng: random.Random) -> list[int]:
    """Sequence lengths filling one row of ``seq_len`` exactly: powers of two from seq_len/16 to seq_len/2, so
    best-fit-decreasing packing puts them back into full rows (each size divides every larger one)."""
    sizes = [seq_len >> k for k in range(1, 5)]
    out, left = [], seq_len
    while left:
        out.append(rng.choice([s for s in sizes if s <= left]))
        left -= out[-1]
    return out


def vocab_words(tokenizer: Any) -> list[str]:
    return [w for w, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]) if w not in SPECIALS]


def words(vocab: list[str], n: int, rng: random.Random) -> str:
    return " ".join(rng.choice(vocab) for _ in range(n))


def sft_dataset(scale: Scale, tokenizer: Any, rows: int, seed: int) -> Any:
    """Conversational prompt-completion examples (the sft stage's form) filling ``rows`` packed rows exactly: a
    sequence of n tokens is a user turn of prompt_tokens tokens and an answer of the rest (each turn's role token
    and <eos> included)."""
    from datasets import Dataset

    rng, vocab = random.Random(seed), vocab_words(tokenizer)
    examples = []
    for _ in range(rows):
        for n in row_lengths(scale.seq_len, rng):
            examples.append({"prompt": [{"role": "user", "content": words(vocab, scale.prompt_tokens - 2, rng)}],
                             "completion": [{"role": "assistant",
                                             "content": words(vocab, n - scale.prompt_tokens - 2, rng)}]})
    rng.shuffle(examples)
    return Dataset.from_list(examples)


def dpo_dataset(scale: Scale, tokenizer: Any, pairs: int, seed: int) -> Any:
    """Text pairs whose prompt + answer is seq_len/2 tokens on either side (TRL appends one EOS token). An answer
    starts with a space: TRL joins prompt and answer as they are, and two words run together are one <unk>."""
    from datasets import Dataset

    rng, vocab = random.Random(seed), vocab_words(tokenizer)
    answer = scale.seq_len // 2 - scale.prompt_tokens - 1
    return Dataset.from_list([{"prompt": words(vocab, scale.prompt_tokens, rng),
                               "chosen": " " + words(vocab, answer, rng), "rejected": " " + words(vocab, answer, rng)}
                              for _ in range(pairs)])


def grpo_dataset(scale: Scale, tokenizer: Any, prompts: int, seed: int) -> Any:
    from datasets import Dataset

    rng, vocab = random.Random(seed), vocab_words(tokenizer)
    return Dataset.from_list([{"prompt": words(vocab, scale.grpo_prompt_tokens, rng),
                               "required": scale.grpo_required_words} for _ in range(prompts)])


# --- the trainers' arguments, as the stages build them --------------------------------------------------------

def paper_section(name: str) -> dict[str, Any]:
    """A training section (sft, dpo) of configs/params/paper-train.yaml."""
    data = yaml.safe_load(PAPER_TRAIN.read_text(encoding="utf-8")) or {}
    return dict(data.get(name) or {})


def _checkpointing_key() -> str:
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


# longwriter.train.trainer.TrainSettings' defaults and trainer_kwargs, for a machine where the project's training
# modules do not import (they need polars and pandera); --dry-run says whether the two agree
_TRAIN_DEFAULTS = {"learning_rate": 2e-5, "num_train_epochs": 1.0, "max_steps": -1, "per_device_train_batch_size": 1,
                   "gradient_accumulation_steps": 1, "max_length": 4096, "gradient_checkpointing": False,
                   "warmup_steps": 0.0, "lr_scheduler_type": "linear", "weight_decay": 0.0, "adam_beta2": 0.999,
                   "logging_steps": 1, "seed": 0, "bf16": False, "dataloader_num_workers": 0, "save_steps": None}


def local_trainer_kwargs(settings: dict[str, Any], output_dir: str) -> dict[str, Any]:
    s = {**_TRAIN_DEFAULTS, **{k: v for k, v in settings.items() if k in _TRAIN_DEFAULTS}}
    return {"output_dir": output_dir, "learning_rate": s["learning_rate"], "num_train_epochs": s["num_train_epochs"],
            "max_steps": s["max_steps"], "per_device_train_batch_size": s["per_device_train_batch_size"],
            "per_device_eval_batch_size": s["per_device_train_batch_size"],
            "gradient_accumulation_steps": s["gradient_accumulation_steps"],
            _checkpointing_key(): s["gradient_checkpointing"], "warmup_steps": s["warmup_steps"],
            "lr_scheduler_type": s["lr_scheduler_type"], "weight_decay": s["weight_decay"],
            "adam_beta2": s["adam_beta2"], "logging_steps": s["logging_steps"], "seed": s["seed"],
            "data_seed": s["seed"], "bf16": s["bf16"], "save_strategy": "steps" if s["save_steps"] else "no",
            "save_steps": s["save_steps"] or 500, "save_total_limit": 1 if s["save_steps"] else None, "report_to": [],
            "dataloader_num_workers": s["dataloader_num_workers"], "max_length": s["max_length"]}


def project_modules() -> tuple[dict[str, Any] | None, str]:
    """The project's training code, or None and why not."""
    try:
        from longwriter.config import build
        from longwriter.train.dpo import DPOSettings
        from longwriter.train.grpo import GRPOSettings
        from longwriter.train.rewards import length_reward, repetition_reward
        from longwriter.train.sft import SFTSettings, sft_trainer
    except ImportError as e:
        return None, f"TRL directly, configured as the stages do (longwriter's training modules: {e})"
    return ({"build": build, "SFTSettings": SFTSettings, "DPOSettings": DPOSettings, "GRPOSettings": GRPOSettings,
             "sft_trainer": sft_trainer, "length_reward": length_reward, "repetition_reward": repetition_reward},
            "longwriter.train (sft_trainer, TrainSettings.trainer_kwargs, the grpo rewards)")


@dataclasses.dataclass
class Phase:
    """One phase: its params section (paper-train.yaml's, resized; the stage's dataclass when the project imports),
    the TRL arguments the stage would pass, and TRL's config built from them."""

    name: str
    section: Any
    kwargs: dict[str, Any]
    config: Any = None
    local_copy_differs: list[str] = dataclasses.field(default_factory=list)


def field_of(section: Any, key: str, default: Any = None) -> Any:
    return getattr(section, key, default) if dataclasses.is_dataclass(section) else section.get(key, default)


def phase_settings(scale: Scale, steps: dict[str, int], completion_tokens: int, scratch: str,
                   project: dict[str, Any] | None, cuda: bool, train_cpu: bool = False) -> dict[str, Phase]:
    """The sft, dpo and grpo settings: paper-train.yaml's sections with each phase's steps and sizes, built into
    the stages' dataclasses (strictly) when the project imports, then into TRL's config classes. Without ``cuda``
    TRL's configs are built with use_cpu (transformers refuses bf16 without a GPU otherwise); ``train_cpu``: the
    smoke run trains on the CPU, in fp32."""
    from trl import DPOConfig, GRPOConfig, SFTConfig

    sections = {"sft": paper_section("sft"), "dpo": paper_section("dpo")}
    for name in ("sft", "dpo"):
        # max_steps governs (epochs stated, so the copy below needs no stage's own defaults); no checkpoints
        train = {"num_train_epochs": 1, **sections[name].get("train", {})}
        sections[name]["train"] = {**train, "max_steps": steps[name], "logging_steps": 1, "save_steps": None,
                                   "max_length": scale.seq_len, **({"bf16": False} if train_cpu else {})}
    sections["sft"]["eval_steps"] = None
    # grpo: not in the paper; the sft optimiser settings at the grpo stage's learning rate, one group of 4 a step
    sections["grpo"] = {
        "num_generations": 4, "max_completion_length": completion_tokens, "temperature": 1.0, "top_p": 1.0,
        "beta": 0.04, "overlong_buffer": min(256, completion_tokens // 4), "repetition_n": 4,
        "weights": {"length": 1.0, "quality": 0.0, "repetition": 1.0, "overlong": 1.0},
        "train": {**sections["sft"]["train"], "learning_rate": 1e-6, "max_steps": steps["grpo"],
                  "per_device_train_batch_size": 4, "num_train_epochs": 1, "warmup_steps": 0.0,
                  "lr_scheduler_type": "constant"}}
    phases: dict[str, Phase] = {}
    for name, section in sections.items():
        local = local_trainer_kwargs(section["train"], scratch)
        differs: list[str] = []
        if project is not None:
            cls = project[{"sft": "SFTSettings", "dpo": "DPOSettings", "grpo": "GRPOSettings"}[name]]
            section = project["build"](cls, section, f"gpu_check:{name}")
            kwargs = section.train.trainer_kwargs(scratch)
            differs = sorted(k for k in set(kwargs) | set(local) if kwargs.get(k) != local.get(k))
        else:
            kwargs = local
        phases[name] = Phase(name, section, kwargs, local_copy_differs=differs)
    sft, dpo, grpo = phases["sft"], phases["dpo"], phases["grpo"]
    # as longwriter.train.sft.sft_trainer, longwriter.train.dpo.run_dpo and longwriter.train.grpo.run_grpo pass them
    sft.kwargs.update(packing=bool(field_of(sft.section, "packing")),
                      padding_free=bool(field_of(sft.section, "padding_free")), packing_strategy="bfd",
                      completion_only_loss=True, eval_strategy="no", eval_steps=None, disable_tqdm=None,
                      average_tokens_across_devices=True, logging_nan_inf_filter=False)
    dpo.kwargs.update(beta=field_of(dpo.section, "beta", 0.1),
                      loss_type=[field_of(dpo.section, "loss_type", "sigmoid")], disable_tqdm=None,
                      trust_remote_code=False)
    w = field_of(grpo.section, "weights")
    weights = [field_of(w, "length"), field_of(w, "repetition"), field_of(w, "overlong")]
    grpo.kwargs.pop("max_length")
    grpo.kwargs.update(gradient_checkpointing=field_of(field_of(grpo.section, "train"), "gradient_checkpointing"),
                       num_generations=field_of(grpo.section, "num_generations"),
                       max_completion_length=completion_tokens, temperature=field_of(grpo.section, "temperature"),
                       top_p=field_of(grpo.section, "top_p"), beta=field_of(grpo.section, "beta"),
                       reward_weights=weights, trust_remote_code=False, disable_tqdm=None,
                       **(grpo.section.vllm_kwargs() if hasattr(grpo.section, "vllm_kwargs") else {"use_vllm": False}))
    for phase, cls in ((sft, SFTConfig), (dpo, DPOConfig), (grpo, GRPOConfig)):
        if not cuda:
            phase.kwargs["use_cpu"] = True
        phase.config = cls(**phase.kwargs)
    return phases


def shown(phase: Phase) -> dict[str, Any]:
    """The arguments a phase passes, as its TRL config holds them (after TRL's own defaults and checks)."""
    skip = {"output_dir", "report_to", "disable_tqdm"}
    return {k: getattr(phase.config, k) for k in phase.kwargs if k not in skip}


# --- running and measuring ------------------------------------------------------------------------------------

def step_timer() -> Any:
    """A TrainerCallback timing each optimizer step (CUDA synchronised at both ends)."""
    from transformers import TrainerCallback

    def sync() -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            sync()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN003
            sync()
            self.seconds.append(time.perf_counter() - self._start)

    return StepTimer()


def step_tokens(log_history: list[dict[str, Any]]) -> list[int]:
    """Tokens per step from TRL's cumulative num_tokens (logged every step)."""
    seen = [int(e["num_tokens"]) for e in log_history if "num_tokens" in e and "step" in e and "loss" in e]
    return [b - a for a, b in zip([0, *seen], seen, strict=False)]


def throughput(seconds: list[float], tokens: list[int], n_params: int, peak: float | None) -> dict[str, Any]:
    steady = len(seconds) > 1 and len(tokens) == len(seconds)
    s, t = (seconds[1:], tokens[1:]) if steady else (seconds, tokens)
    rate = sum(t) / sum(s) if s and sum(s) > 0 and t else None
    return {"steps": len(seconds), "step_seconds": [round(x, 3) for x in seconds], "tokens_per_step": tokens,
            "first_step_excluded": steady, "tokens_per_s": round(rate, 1) if rate else None,
            "model_tflops_per_s": round(6 * n_params * rate / 1e12, 2) if rate else None,
            "mfu": round(6 * n_params * rate / (peak * 1e12), 4) if rate and peak else None}


def peak_tflops(device_name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value, f"dense bf16 of '{key}' (PEAK_BF16_TFLOPS)"
    return None, f"unknown device '{device_name}': pass --peak-tflops for MFU"


def grpo_rewards(project: dict[str, Any] | None, completion_tokens: int, buffer: int) -> list[Any]:
    from trl.rewards import get_soft_overlong_punishment

    if project is not None:
        length_reward, repetition = project["length_reward"], project["repetition_reward"](4)
    else:  # the grpo stage's two rewards (longwriter.train.rewards), from the modules they rest on
        from longwriter.repetition import degeneration
        from longwriter.repetition import repetition as repeated
        from longwriter.scoring import length_score

        def length_reward(completions: list[str], required: list[int], **_: Any) -> list[float]:
            return [length_score(int(r), degeneration(c)[0]) / 100.0 for c, r in zip(completions, required,
                                                                                      strict=True)]

        def repetition(completions: list[str], **_: Any) -> list[float]:
            return [-repeated(c, 4) for c in completions]
    return [length_reward, repetition, get_soft_overlong_punishment(completion_tokens, buffer)]


def run_phase(phase: Phase, model_dir: Path, tokenizer: Any, scale: Scale, attn: str, project: dict[str, Any] | None,
              n_params: int, peak: float | None, seed: int) -> dict[str, Any]:
    import torch
    from trl import DPOTrainer, GRPOTrainer, SFTTrainer

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model = load_model(model_dir, attn)
    timer = step_timer()
    args = phase.config
    if phase.name == "sft":
        data = sft_dataset(scale, tokenizer, args.max_steps, seed)
        if project is not None:
            from datasets import Dataset

            trainer = project["sft_trainer"](phase.section, model, tokenizer, data, Dataset.from_list([]),
                                             args.output_dir)
        else:
            trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    elif phase.name == "dpo":
        trainer = DPOTrainer(model=model, args=args, train_dataset=dpo_dataset(scale, tokenizer, args.max_steps, seed),
                             processing_class=tokenizer)
    else:
        trainer = GRPOTrainer(model=model, args=args, processing_class=tokenizer,
                              reward_funcs=grpo_rewards(project, args.max_completion_length,
                                                        field_of(phase.section, "overlong_buffer")),
                              train_dataset=grpo_dataset(scale, tokenizer, args.max_steps * 2, seed))
    trainer.add_callback(timer)
    trainer.train()
    history = list(trainer.state.log_history)
    result = throughput(timer.seconds, step_tokens(history), n_params, peak)
    losses = [e["loss"] for e in history if "loss" in e]
    result.update({"loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
                   "seconds": round(time.perf_counter() - started, 1),
                   "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None})
    if phase.name == "grpo":
        result["completion_mean_tokens"] = [e["completions/mean_length"] for e in history
                                            if "completions/mean_length" in e]
        result["note"] = ("tokens: a step's prompt and completion tokens; its time includes generating the "
                          "completions, so tokens/s and MFU are far below training's")
    del trainer, model
    gc.collect()
    return result


def attention(choice: str, cuda: bool) -> str:
    if choice != "auto":
        return choice
    return "flash_attention_2" if cuda and importlib.util.find_spec("flash_attn") else "sdpa"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "accelerate", "peft", "datasets"):
        with contextlib.suppress(Exception):
            out[name] = __import__(name).__version__
    return out


@click.command(help=__doc__)
@click.option("--dry-run", is_flag=True, help="CPU, seconds: print the model config and every phase's arguments; "
              "write nothing.")
@click.option("--smoke", is_flag=True, help="Run the three phases on a tiny model and short sequences (CPU or GPU); "
              f"writes {SMOKE_RESULT}, never bench/results.")
@click.option("--sft-steps", default=6, show_default=True, type=click.IntRange(1))
@click.option("--dpo-steps", default=3, show_default=True, type=click.IntRange(1))
@click.option("--grpo-steps", default=2, show_default=True, type=click.IntRange(1))
@click.option("--grpo-completion-tokens", default=1024, show_default=True, type=click.IntRange(16),
              help="Tokens per GRPO completion (a random model rarely stops before its cap).")
@click.option("--attn-implementation", "attn_choice", default="auto", show_default=True,
              type=click.Choice(["auto", "sdpa", "flash_attention_2", "eager"]),
              help="auto: flash_attention_2 when flash-attn is installed on a GPU, else sdpa (packed rows get a "
              "block-diagonal mask).")
@click.option("--peak-tflops", type=float, default=None, help="The GPU's peak dense bf16 TFLOP/s for MFU "
              "(default: by device name).")
@click.option("--budget-s", default=480.0, show_default=True, help="A phase that would start after this many "
              "seconds is skipped (recorded as such).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"Result file (default {RESULT.relative_to(ROOT)}; with --smoke {SMOKE_RESULT}).")
@click.option("--seed", default=0, show_default=True)
@click.option("--trl-only", is_flag=True, help="TRL directly, as on a machine where longwriter's training modules "
              "do not import (they need polars and pandera), even where they do.")
def main(dry_run: bool, smoke: bool, sft_steps: int, dpo_steps: int, grpo_steps: int, grpo_completion_tokens: int,
         attn_choice: str, peak_tflops: float | None, budget_s: float, output: Path | None, seed: int,
         trl_only: bool) -> None:
    import torch

    started = time.perf_counter()
    scale = SMOKE if smoke else FULL
    if smoke:
        grpo_completion_tokens = min(grpo_completion_tokens, 32)
    cuda = torch.cuda.is_available()
    if not (dry_run or smoke or cuda):
        raise click.ClickException("no CUDA GPU: run with --dry-run or --smoke on a CPU")
    attn = attention(attn_choice, cuda)
    project, code_path = (None, "TRL directly (--trl-only)") if trl_only else project_modules()
    config = model_config(scale)
    n_params = parameter_count(config)
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak, peak_source = peak_tflops(device_name, peak_tflops) if cuda else (None, "no GPU: no MFU")
    steps = {"sft": sft_steps, "dpo": dpo_steps, "grpo": grpo_steps}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        phases = phase_settings(scale, steps, grpo_completion_tokens, str(Path(scratch) / "trainer"), project, cuda,
                                train_cpu=smoke and not cuda)
        report: dict[str, Any] = {
            "dry_run": dry_run, "smoke": smoke, "device": device_name, "versions": versions(),
            "code_path": code_path, "attn_implementation": attn,
            "model": {"architecture": "LlamaForCausalLM (random init)", "parameters": n_params,
                      **{k: getattr(config, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                         "num_hidden_layers", "num_attention_heads",
                                                         "num_key_value_heads", "tie_word_embeddings")}},
            "tokens_per_sft_row": scale.seq_len, "tokens_per_dpo_pair": scale.seq_len,
            "peak_bf16_tflops": peak, "peak_source": peak_source,
            "mfu_formula": "6 x parameters x tokens/s / peak (attention FLOPs, recomputation and DPO's reference "
                           "forward not counted)",
            "settings": {name: shown(p) for name, p in phases.items()},
        }
        report["local_copy_differs"] = {n: p.local_copy_differs for n, p in phases.items() if p.local_copy_differs}
        if dry_run:
            click.echo(json.dumps(report, indent=1, default=str))
            click.echo(f"dry run: {n_params / 1e9:.3f}B parameters, SFT rows of {scale.seq_len} tokens packed, "
                       f"bf16 {phases['sft'].config.bf16}, {code_path}; nothing written")
            return
        model_dir = Path(scratch) / "model"
        report["model"]["parameters"] = save_random_model(scale, model_dir, "cuda" if cuda else "cpu", attn)
        tokenizer = word_tokenizer(scale.vocab_size)
        report["phases"], failed = {}, False
        for name, phase in phases.items():
            if time.perf_counter() - started > budget_s:
                report["phases"][name] = {"status": f"skipped: over the {budget_s:.0f} s budget"}
                continue
            try:
                result = run_phase(phase, model_dir, tokenizer, scale, attn, project, n_params, peak, seed)
                report["phases"][name] = {"status": "ok", **result}
            except Exception as e:  # noqa: BLE001 - recorded, the next phase still runs
                failed = True
                report["phases"][name] = {"status": f"failed: {type(e).__name__}: {e}"[:2000],
                                          "traceback": traceback.format_exc()[-4000:]}
            click.echo(f"{name}: {report['phases'][name]}", err=True)
        peaks = [p["peak_memory_gib"] for p in report["phases"].values() if p.get("peak_memory_gib") is not None]
        report["peak_memory_gib"] = max(peaks, default=None)  # each phase resets the peak at its start
        report["seconds"] = round(time.perf_counter() - started, 1)
    path = output or (SMOKE_RESULT if smoke else RESULT)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    rows = [(n, p.get("status", "")[:40], p.get("tokens_per_s"), p.get("mfu"), p.get("peak_memory_gib"))
            for n, p in report["phases"].items()]
    click.echo("\n".join(f"{n:5} {s:40} tokens/s {t}  MFU {m}  peak {g} GiB" for n, s, t, m, g in rows))
    click.echo(f"wrote {path} ({report['seconds']} s)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
