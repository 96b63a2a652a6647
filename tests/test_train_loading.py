"""How the training stages load models and decide who writes, in one process on a tiny random Llama: every loader
honours base.trust_remote_code and loads after the trainer's config (so ZeRO-3 partitions at load), the trainable
parameters count ZeRO-3 shards whole, LoRA adapters merge from a whole load of the base, a diverged SFT run
publishes nothing, DPO without pairs writes from rank 0 only, and the judge's failures of several processes have
distinct ids. (The same on two real processes: test_multiprocess_training.py.)
"""

from __future__ import annotations

import asyncio
import shutil
import weakref
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import tiny_llama

from longwriter.judge import JudgeConfig
from longwriter.llm import CallStats, ClientSettings, Endpoint, ResponseCache
from longwriter.schemas import MESSAGES, Chat, Pairs, empty, write_checked
from longwriter.train.checkpoint import save_checkpoint
from longwriter.train.dpo import DPOSettings, run_dpo
from longwriter.train.grpo import GRPOSettings, RewardWeights, run_grpo
from longwriter.train.rewards import JudgeReward, gather_judge
from longwriter.train.sft import SFTSettings, run_sft
from longwriter.train.trainer import TrainSettings, merge_adapters, trainable_parameters

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

ROOT = Path(__file__).parent.parent
CONVERSATIONS = [[{"role": "user", "content": f"Write line {i}."},
                  {"role": "assistant", "content": f"Line {i} is short and plain " + "and calm " * i}]
                 for i in range(4)]


def _settings(**kw: Any) -> TrainSettings:
    return TrainSettings(**{"learning_rate": 1e-3, "max_steps": 1, "per_device_train_batch_size": 2,
                            "max_length": 128, "logging_steps": 1, **kw})


def _mix(directory: Path, validation: int) -> Path:
    frame = pl.DataFrame({"id": [f"c{i}" for i in range(4)], "source": ["long"] * 4, "messages": CONVERSATIONS},
                         schema_overrides={"messages": MESSAGES})
    write_checked(frame, Chat, directory / "train.parquet")
    write_checked(frame.head(validation), Chat, directory / "validation.parquet")
    return directory


def _pairs(path: Path, n: int) -> Path:
    write_checked(pl.DataFrame([{"prompt_id": f"p{i}", "prompt": f"Topic {i}?", "chosen": f"Topic {i} is fine.",
                                 "rejected": "No.", "chosen_sample": 0, "rejected_sample": 1, "chosen_score": 80.0,
                                 "rejected_score": 20.0, "margin": 60.0} for i in range(n)],
                               schema=empty(Pairs).schema), Pairs, path)
    return path


def _weights(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


# --------------------------------------------------------------------------------------- loading: trust_remote_code


class Stop(Exception):
    """Raised in place of training: the loads are done by then."""


def _record_loads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """Events in order: ("args", None) when a TrainingArguments (TRL's configs included) is created, and (kind,
    trust_remote_code) for each model or tokenizer load (outermost call only: an auto class calls the concrete
    one)."""
    from transformers import AutoTokenizer, PreTrainedModel, Trainer, TrainingArguments
    from transformers.models.auto.auto_factory import _BaseAutoModelClass

    events: list[tuple[str, Any]] = []
    depth = [0]

    def spy(kind: str, owner: type) -> None:
        original = owner.__dict__["from_pretrained"].__func__

        def from_pretrained(cls: type, *args: Any, **kwargs: Any) -> Any:
            if depth[0] == 0:
                events.append((kind, kwargs.get("trust_remote_code")))
            depth[0] += 1
            try:
                return original(cls, *args, **kwargs)
            finally:
                depth[0] -= 1
        monkeypatch.setattr(owner, "from_pretrained", classmethod(from_pretrained))

    spy("model", _BaseAutoModelClass)
    spy("model", PreTrainedModel)  # TRL loads reference models with the concrete class (LlamaForCausalLM)
    spy("tokenizer", AutoTokenizer)
    post_init = TrainingArguments.__post_init__

    def record_args(self: Any) -> None:
        events.append(("args", None))
        post_init(self)
    monkeypatch.setattr(TrainingArguments, "__post_init__", record_args)

    def stop(self: Any, *args: Any, **kwargs: Any) -> None:
        raise Stop
    monkeypatch.setattr(Trainer, "train", stop)
    return events


@pytest.mark.parametrize("stage", ["sft", "dpo", "grpo"])
def test_every_loader_gets_trust_remote_code_and_models_load_after_the_config(stage: str, base_dir: Path,
                                                                              tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    events = _record_loads(monkeypatch)
    import longwriter.train.dpo as dpo_module
    import longwriter.train.grpo as grpo_module
    import longwriter.train.sft as sft_module

    module = {"sft": sft_module, "dpo": dpo_module, "grpo": grpo_module}[stage]
    kernels: list[str | None] = []
    real_load = module.load_model

    def load(path: Any, trust: bool, attn: str | None = None) -> Any:
        kernels.append(attn)
        model = real_load(path, trust, attn)
        if attn:  # transformers moves the kwarg into the config
            assert model.config._attn_implementation == attn
        return model
    monkeypatch.setattr(module, "load_model", load)
    out = tmp_path / "out"
    with pytest.raises(Stop):
        if stage == "sft":
            # the kernel a GPU recipe names (flash_attention_2 there) reaches the policy's load
            run_sft(SFTSettings(train=_settings(attn_implementation="eager"), eval_steps=None), base_dir,
                    _mix(tmp_path / "mix", 0), out,
                    tmp_path / "m.json", tmp_path / "c.csv", trust_remote_code=True)
        elif stage == "dpo":
            run_dpo(DPOSettings(train=_settings()), base_dir, _pairs(tmp_path / "pairs.parquet", 2), out,
                    tmp_path / "m.json", tmp_path / "c.csv", trust_remote_code=True)
        else:
            cfg = GRPOSettings(pool=str(ROOT / "tests" / "fixtures" / "tiny_rl.jsonl"), use_selected=False,
                               num_generations=2, max_completion_length=96, overlong_buffer=16,
                               weights=RewardWeights(quality=0.0), train=_settings(learning_rate=1e-5))
            run_grpo(cfg, JudgeConfig(), ClientSettings(cache_dir=str(tmp_path / "cache")), base_dir,
                     tmp_path / "none", tmp_path / "none", out, tmp_path / "m.json", tmp_path / "c.csv",
                     tmp_path / "f.parquet", trust_remote_code=True)
    loads = [e for e in events if e[0] != "args"]
    # the policy, and for DPO and GRPO (beta > 0) TRL's reference model, plus the tokenizer
    assert sorted(kind for kind, _ in loads) == ["model"] * (1 if stage == "sft" else 2) + ["tokenizer"], events
    assert all(trust is True for _, trust in loads), events
    assert kernels == (["eager"] if stage == "sft" else [None]), kernels
    # every model loads after the trainer's config exists: under a ZeRO-3 launch it is partitioned as it loads
    first_args = events.index(("args", None))
    assert all(i > first_args for i, e in enumerate(events) if e[0] == "model"), events


def test_mix_loads_the_base_tokenizer_with_trust_remote_code(base_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from longwriter.schemas import LongSamples
    from longwriter.train.mix import MixConfig, run_mix

    write_checked(pl.DataFrame({"id": ["l0"], "lang": ["en"], "source": ["agentwrite"], "messages": [CONVERSATIONS[1]],
                                "words": [9], "planned_words": [9], "sections": [1], "lines_removed": [0]},
                               schema_overrides={"messages": MESSAGES}), LongSamples, tmp_path / "long.parquet")
    write_checked(pl.DataFrame({"id": ["g0"], "source": ["chat"], "messages": [CONVERSATIONS[2]]},
                               schema_overrides={"messages": MESSAGES}), Chat, tmp_path / "general.parquet")
    events = _record_loads(monkeypatch)
    run_mix(MixConfig(long=str(tmp_path / "long.parquet"), general=str(tmp_path / "general.parquet"),
                      validation_fraction=0.0), base_dir, tmp_path / "mix", tmp_path / "m.json", tmp_path / "f.parquet",
            trust_remote_code=True)
    assert events == [("tokenizer", True)]


@pytest.mark.parametrize("stage", ["mix", "sft", "dpo", "grpo"])
def test_the_stages_pass_base_trust_remote_code(stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    import yaml

    module = importlib.import_module(f"stages.{stage}")
    seen: dict[str, Any] = {}

    def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        seen.update(kwargs)
        raise Stop
    monkeypatch.setattr(module, f"run_{stage}", run)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"base": {"model": "some/model", "trust_remote_code": True}}))
    paths = {"mix": ["--tokenizer", "b"], "sft": ["--base", "b", "--data", "d"],
             "dpo": ["--model", "m", "--pairs", "p"],
             "grpo": ["--instructions", "i", "--plans", "p", "--prompts-output", "q"]}[stage]
    plot = [] if stage == "mix" else ["--plot-csv", "c"]
    result = CliRunner().invoke(module.main, ["--params", str(params), *paths, "--output", "o", "--metrics", "m",
                                              "--timings", "t", *plot, "--failures", "f"])
    assert isinstance(result.exception, Stop), result.output
    assert seen["trust_remote_code"] is True


# --------------------------------------------------------------------------------------- ZeRO-3 and LoRA


def test_trainable_parameters_count_zero3_partitioned_parameters_whole() -> None:
    trained, frozen = torch.nn.Linear(4, 3), torch.nn.Linear(2, 2)
    frozen.requires_grad_(False)
    model = torch.nn.Sequential(trained, frozen)
    assert trainable_parameters(model) == 15
    # ZeRO-3: a partitioned parameter holds this process's shard (here none of it); its whole size is ds_numel
    trained.weight.data = torch.empty(0)
    trained.weight.ds_numel = 12
    assert trainable_parameters(model) == 15


def test_lora_adapters_merge_into_a_whole_load_of_the_base_even_under_zero3(base_dir: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.integrations import deepspeed

    # trained adapters, saved as the Trainer saves them (random B: not the no-op initial adapter)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)),
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "adapters"))

    class Zero3:  # what a DeepSpeed ZeRO-3 launch registers once the trainer's arguments exist
        def is_zero3(self) -> bool:
            return True
    registered = Zero3()
    monkeypatch.setattr(deepspeed, "_hf_deepspeed_config_weak_ref", weakref.ref(registered))
    partitioned: list[bool] = []
    load = AutoModelForCausalLM.from_pretrained

    def spy(*args: Any, **kwargs: Any) -> Any:
        partitioned.append(deepspeed.is_deepspeed_zero3_enabled())
        return load(*args, **kwargs)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    merge_adapters(tmp_path / "adapters", base_dir, tmp_path / "merged", trust_remote_code=False)
    # the main process loads the base whole (no zero.Init, which the other processes would have to join)
    assert partitioned == [False] and deepspeed.is_deepspeed_zero3_enabled()
    monkeypatch.undo()

    merged, base = _weights(tmp_path / "merged"), _weights(base_dir)
    assert set(merged) == set(base)  # a plain checkpoint: no lora_A/lora_B or base_layer keys
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    assert not torch.equal(merged[q], base[q]) and torch.equal(merged[k], base[k])
    assert type(AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"))).__name__ == "LlamaForCausalLM"


# --------------------------------------------------------------------------------------- NaN and ranks


def test_a_nan_loss_fails_sft_before_it_replaces_the_previous_checkpoint(tokenizer: Any, base_dir: Path,
                                                                         tmp_path: Path) -> None:
    diverged = tiny_llama(tokenizer)
    with torch.no_grad():
        diverged.model.norm.weight.fill_(float("nan"))  # every logit, so every loss, is NaN
    save_checkpoint(diverged, tokenizer, tmp_path / "diverged")
    out = tmp_path / "sft"
    shutil.copytree(base_dir, out)  # the previous run's models/sft
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # no validation split: the training loss alone must show it (logged as NaN, not filtered out)
    with pytest.raises(RuntimeError, match="NaN"):
        run_sft(SFTSettings(train=_settings(), eval_steps=None), tmp_path / "diverged", _mix(tmp_path / "mix", 0),
                out, tmp_path / "m.json", tmp_path / "c.csv", tmp_path / "f.parquet")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "c.csv").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging directory left


def test_dpo_without_pairs_writes_from_rank_0_only(base_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pairs = _pairs(tmp_path / "pairs.parquet", 0)
    outputs = ("out", "m.json", "c.csv", "f.parquet")

    def run() -> dict[str, Any]:
        return run_dpo(DPOSettings(train=_settings()), base_dir, pairs, *(tmp_path / name for name in outputs[:3]),
                       tmp_path / outputs[3], timings=tmp_path / "t.json")
    monkeypatch.setenv("RANK", "1")  # what torchrun and accelerate launch set for the second process
    assert run()["trained"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.parquet"]
    monkeypatch.setenv("RANK", "0")
    assert run()["trained"] is False
    assert {p.name for p in tmp_path.iterdir()} == {"pairs.parquet", "t.json", *outputs}
    assert all(torch.equal(v, _weights(base_dir)[k]) for k, v in _weights(tmp_path / "out").items())


def test_judge_failures_of_several_processes_have_distinct_ids_and_their_stats_add_up(fake_server: Any,
                                                                                      tmp_path: Path) -> None:
    prompts = [[{"role": "user", "content": f"Write story {i}."}] for i in range(2)]
    completions = [[{"role": "assistant", "content": f"Story {i}."}] for i in range(2)]
    with fake_server(faults={"500": 1.0}) as srv:
        endpoint = Endpoint(srv.base_url, "judge", "openai:judge", "json_schema")
        with ResponseCache(tmp_path / "r.sqlite") as cache:
            ranks = [JudgeReward(endpoint, cache, ClientSettings(cache_dir=str(tmp_path), max_retries=0),
                                 JudgeConfig(max_attempts=1), rank=rank) for rank in (0, 1)]
            for reward in ranks:  # each process rates its own slice of the step's 4 completions
                assert asyncio.run(reward(prompts, completions)) == [None, None]

    def gather_object(local: list[Any]) -> list[Any]:  # accelerate's, over the two processes
        return [r.stats for r in ranks] if isinstance(local[0], CallStats) else [f for r in ranks for f in r.failures]
    failures, stats = gather_judge(ranks[0], gather_object)
    # named by their place in the step's whole batch: rank 1's are 2 and 3, as in a one-process run of 4
    assert sorted(f["instruction_id"] for f in failures) == [f"step1:completion{k}" for k in range(4)]
    assert stats is not None and stats.failed_calls == 4 == srv.requests_count()
