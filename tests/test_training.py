"""The training stages on a tiny random Llama: mix, SFT data and loss, SFT/LoRA/DPO runs, DPO pairs.

No downloads: the tokenizer is the embedded SmolLM2 GGUF's, the model is a 2-layer Llama built from a config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest
from conftest import tiny_llama
from tiny_repo import chat_frame

from longwriter.files import split_metrics
from longwriter.schemas import MESSAGES, Chat, LongSamples, Pairs, empty, validate, write_checked
from longwriter.train.dpo import DPOSettings, run_dpo
from longwriter.train.mix import MixConfig, mix_frames
from longwriter.train.pairs import build_pairs
from longwriter.train.sft import (
    SFTSettings,
    load_split,
    prompt_completion,
    run_sft,
    sequence_mean_loss,
    sft_trainer,
)
from longwriter.train.trainer import LoraSettings, TrainSettings

torch = pytest.importorskip("torch")
pytest.importorskip("trl")


# ----------------------------------------------------------------------------------------------- helpers


def _conversation(i: int, prefix: str = "q") -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{prefix} question number {i}?"},
            {"role": "assistant", "content": f"answer {i}: " + "word " * (i % 5 + 1)}]


def _long_frame(n: int) -> pl.DataFrame:
    df = pl.DataFrame({
        "id": [f"long-{i:03d}" for i in range(n)],
        "lang": ["en"] * n,
        "source": ["agentwrite"] * n,
        "messages": [_conversation(i, "long") for i in range(n)],
        "words": [100 + i for i in range(n)],
        "planned_words": [120] * n,
        "sections": [3] * n,
        "lines_removed": [0] * n,
    }, schema_overrides={"messages": MESSAGES})
    return validate(df, LongSamples, "long.parquet")


def _general_frame(n: int) -> pl.DataFrame:
    df = pl.DataFrame({
        "id": [f"gen-{i:03d}" for i in range(n)],
        "source": ["sharegpt"] * n,
        "messages": [_conversation(i, "general") for i in range(n)],
    }, schema_overrides={"messages": MESSAGES})
    return validate(df, Chat, "general.parquet")


def _count(df: pl.DataFrame, source: str) -> int:
    return df.filter(pl.col("source") == source).height


SFT_CONVERSATIONS = [
    [{"role": "user", "content": "Write one line about the sea."},
     {"role": "assistant", "content": "The sea is wide and blue and it sings to the shore every night."}],
    [{"role": "user", "content": "Write one line about the moon."},
     {"role": "assistant", "content": "The moon is pale and calm and it walks across the sky every night."}],
    [{"role": "user", "content": "Write one line about a cat."},
     {"role": "assistant", "content": "The cat is soft and quick and it sleeps in the sun every day."}],
    [{"role": "user", "content": "Write one line about the rain."},
     {"role": "assistant", "content": "The rain is cool and grey and it taps on the roof every night."}],
]


def _weights(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def _load(directory: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(directory))


# ----------------------------------------------------------------------------------------------- fixtures




@pytest.fixture(scope="module")
def mix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mix")
    write_checked(chat_frame(SFT_CONVERSATIONS * 2, "train"), Chat, out / "train.parquet")
    write_checked(chat_frame(SFT_CONVERSATIONS[:2], "val"), Chat, out / "validation.parquet")
    return out


# ----------------------------------------------------------------------------------------------- 1. mix


def test_mix_general_per_long_ratio() -> None:
    long, general = _long_frame(10), _general_frame(100)
    for ratio, n_general in ((3.0, 30), (None, 100), (0.0, 0)):
        train, val = mix_frames(long, general, MixConfig(general_per_long=ratio, validation_fraction=0.1))
        both = pl.concat([train, val])
        assert _count(both, "long") == 10, ratio
        assert _count(both, "general") == n_general, ratio
        assert both.columns == ["id", "source", "messages"]
        assert both["id"].n_unique() == both.height
        assert set(both.filter(pl.col("source") == "long")["id"]) == set(long["id"])
        assert set(both.filter(pl.col("source") == "general")["id"]) <= set(general["id"])
        validate(train, Chat, "train")
        validate(val, Chat, "validation")


def test_mix_is_deterministic_per_seed() -> None:
    long, general = _long_frame(10), _general_frame(100)
    a = mix_frames(long, general, MixConfig(seed=1))
    b = mix_frames(long, general, MixConfig(seed=1))
    assert a[0].equals(b[0]) and a[1].equals(b[1])
    # the input order does not matter either (both sources are sorted by id first)
    c = mix_frames(long.reverse(), general.sample(fraction=1.0, shuffle=True, seed=5), MixConfig(seed=1))
    assert a[0].equals(c[0]) and a[1].equals(c[1])
    d = mix_frames(long, general, MixConfig(seed=2))
    assert a[0]["id"].to_list() != d[0]["id"].to_list()


def test_mix_validation_split_per_source() -> None:
    long, general = _long_frame(10), _general_frame(100)
    train, val = mix_frames(long, general, MixConfig(general_per_long=3.0, validation_fraction=0.2))
    assert _count(val, "long") == round(0.2 * 10) == 2
    assert _count(val, "general") == round(0.2 * 30) == 6
    assert _count(train, "long") == 8 and _count(train, "general") == 24
    assert not set(train["id"]) & set(val["id"])


@pytest.mark.parametrize("ratio", [None, 3.0])
def test_mix_tiny_input_keeps_one_validation_row(ratio: float | None) -> None:
    train, val = mix_frames(_long_frame(1), _general_frame(3), MixConfig(general_per_long=ratio,
                                                                         validation_fraction=0.1))
    assert val.height == 1
    assert train.height == 3
    assert not set(train["id"]) & set(val["id"])


def test_mix_no_validation() -> None:
    train, val = mix_frames(_long_frame(1), _general_frame(3), MixConfig(general_per_long=4.0, validation_fraction=0.0))
    assert val.height == 0 and train.height == 4
    validate(val, Chat, "validation")


# ----------------------------------------------------------------------------------------------- 2. dataset


def test_mix_split_loads_with_datasets(tmp_path: Path) -> None:
    from datasets import load_dataset

    path = tmp_path / "train.parquet"
    write_checked(chat_frame(SFT_CONVERSATIONS, "t"), Chat, path)
    ds = load_dataset("parquet", data_files=str(path), cache_dir=str(tmp_path / "hf-cache"))["train"]
    assert len(ds) == len(SFT_CONVERSATIONS)
    assert "messages" in ds.column_names
    assert ds[0]["messages"] == SFT_CONVERSATIONS[0]
    assert all(set(m) == {"role", "content"} for row in ds["messages"] for m in row)

    split = load_split(path)
    assert set(split.column_names) == {"prompt", "completion"}
    assert split[2]["prompt"] == SFT_CONVERSATIONS[2][:1]
    assert split[2]["completion"] == SFT_CONVERSATIONS[2][1:]


def test_prompt_completion_takes_the_last_assistant_turn() -> None:
    turns = [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
             {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"},
             {"role": "assistant", "content": "a2"}]
    ex = prompt_completion(turns)
    assert ex["prompt"] == turns[:-1] and ex["completion"] == turns[-1:]
    for bad in ([], turns[:-1], [{"role": "assistant", "content": "a"}, {"role": "user", "content": "u"}]):
        with pytest.raises(ValueError, match="assistant"):
            prompt_completion(bad)


def test_load_split_rejects_conversation_without_final_answer(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    write_checked(chat_frame([SFT_CONVERSATIONS[0], SFT_CONVERSATIONS[1][:1]], "b"), Chat, path)
    with pytest.raises(ValueError, match="assistant"):
        load_split(path)


def test_sft_tokenization_trains_on_the_answer_only(tokenizer: Any, mix_dir: Path, tmp_path: Path) -> None:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, max_length=512, report_to=[],
                     save_strategy="no", bf16=False, use_cpu=True)
    trainer = SFTTrainer(model=tiny_llama(tokenizer), args=args, train_dataset=load_split(mix_dir / "train.parquet"),
                         processing_class=tokenizer)
    ex = trainer.train_dataset[0]
    ids = ex["input_ids"]
    if "completion_mask" in ex:  # older TRL: a mask the collator turns into labels
        mask = [bool(m) for m in ex["completion_mask"]]
    else:  # newer TRL: labels with -100 outside the completion
        mask = [label != -100 for label in ex["labels"]]
        assert all(label == i for label, i in zip(ex["labels"], ids, strict=True) if label != -100)
    user, answer = SFT_CONVERSATIONS[0][0]["content"], SFT_CONVERSATIONS[0][1]["content"]
    trained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m])
    masked = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert answer in trained
    assert user not in trained
    assert user in masked
    assert answer not in masked
    # the chat template wraps the answer: the trained part ends with the end-of-turn token
    assert trained.rstrip().endswith("<|im_end|>")
    assert mask.index(True) > 0 and all(mask[mask.index(True):])


# ----------------------------------------------------------------------------------------------- 3. loss averaging


def _ce(logits: Any, target: int) -> float:
    row = [float(x) for x in logits]
    return math.log(sum(math.exp(x) for x in row)) - row[target]


def test_sequence_mean_loss_by_hand() -> None:
    torch.manual_seed(3)
    logits = torch.randn(3, 5, 7)
    labels = torch.tensor([[-100, -100, -100, -100, 3],   # one target token (predicted at position 3)
                           [-100, 1, 2, 6, -100],         # three target tokens (positions 0, 1, 2)
                           [-100, -100, -100, -100, -100]])  # none: takes no part
    a = _ce(logits[0, 3], 3)
    b = [_ce(logits[1, 0], 1), _ce(logits[1, 1], 2), _ce(logits[1, 2], 6)]
    token_mean = (a + sum(b)) / 4
    sequence_mean = (a + sum(b) / 3) / 2
    assert abs(token_mean - sequence_mean) > 1e-3

    outputs = SimpleNamespace(logits=logits)
    loss = sequence_mean_loss(1)(outputs, labels)
    assert loss.item() == pytest.approx(sequence_mean, rel=1e-5)
    assert loss.item() != pytest.approx(token_mean, rel=1e-3)
    # the transformers default (shifted, token-level mean) agrees with the hand-computed token mean
    default = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1),
                                                ignore_index=-100)
    assert default.item() == pytest.approx(token_mean, rel=1e-5)

    halved = sequence_mean_loss(2)(outputs, labels, num_items_in_batch=torch.tensor(4))
    assert halved.item() == pytest.approx(sequence_mean / 2, rel=1e-5)
    # the loss is differentiable in the logits
    leaf = logits.clone().requires_grad_(True)
    sequence_mean_loss(1)(SimpleNamespace(logits=leaf), labels).backward()
    assert leaf.grad is not None and leaf.grad[2].abs().sum() == 0 and leaf.grad[0].abs().sum() > 0


def _hand_losses(model: Any, batch: dict[str, Any]) -> tuple[float, float, int]:
    """Token mean and sequence mean of the answer tokens' cross-entropy, and their count, computed directly."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    per_sequence, total, count = [], 0.0, 0
    for row in range(logits.shape[0]):
        losses = [_ce(logits[row, i], int(batch["labels"][row, i + 1]))
                  for i in range(logits.shape[1] - 1) if int(batch["labels"][row, i + 1]) != -100]
        if losses:
            per_sequence.append(sum(losses) / len(losses))
        total, count = total + sum(losses), count + len(losses)
    return total / count, sum(per_sequence) / len(per_sequence), count


@pytest.mark.parametrize("averaging", ["token", "sequence"])
def test_the_trainer_loss_is_the_hand_computed_one(averaging: str, base_dir: Path, mix_dir: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A training micro-batch of 2 accumulated steps on 8 processes, and an evaluation batch, through the SFT
    trainer as the stage configures it, against the loss computed by hand from the model's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = _sft_settings(loss_averaging=averaging)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, gradient_accumulation_steps=2))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    with torch.no_grad():  # sharper logits than a fresh init's, so token losses, and the two modes, differ
        model.get_input_embeddings().weight.mul_(40)
    trainer = sft_trainer(cfg, model, AutoTokenizer.from_pretrained(str(base_dir)), load_split(
        mix_dir / "train.parquet"), load_split(mix_dir / "validation.parquet"), str(tmp_path))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    token_mean, sequence_mean, count = _hand_losses(model, batch)
    assert abs(token_mean - sequence_mean) > 1e-3  # the answers differ in length: the modes differ
    processes = 8
    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda self: processes))
    # in training, transformers passes the target-token count of the whole accumulated batch on every process
    # (token); the SFT trainer passes its sequence count (sequence: 3 a micro-batch here)
    model.train()
    global_count = torch.tensor((count if averaging == "token" else 3) * 2 * processes)
    train_loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=global_count).item()
    model.eval()
    with torch.no_grad():
        eval_loss = trainer.compute_loss(model, dict(batch)).item()
    if averaging == "token":
        # this micro-batch's token sum over the global count, times the processes whose gradients DDP averages
        assert train_loss == pytest.approx(token_mean * count / (count * 2 * processes) * processes, rel=1e-4)
        assert eval_loss == pytest.approx(token_mean, rel=1e-4)
    else:
        # the per-sequence means summed over the global sequence count, times the processes: the micro-batch's
        # per-sequence mean, halved for the 2 accumulated micro-batches
        assert train_loss == pytest.approx(sequence_mean / 2, rel=1e-4)
        assert eval_loss == pytest.approx(sequence_mean, rel=1e-4)  # an evaluation batch is not accumulated


def test_sequence_averaging_accepts_packed_rows() -> None:
    # the position_ids of packed rows mark the sequences (tests/test_training_recipe.py checks the weights)
    assert SFTSettings(loss_averaging="sequence", packing=True, padding_free=True).packing


# ----------------------------------------------------------------------------------------------- 4. SFT runs


def _sft_settings(**kw: Any) -> SFTSettings:
    lora = kw.pop("lora", None)
    max_steps = kw.pop("max_steps", 12)
    train = TrainSettings(learning_rate=5e-3, max_steps=max_steps, per_device_train_batch_size=2, max_length=256,
                          logging_steps=1, seed=0, lora=lora)
    return SFTSettings(train=train, eval_steps=None, **kw)


def _check_sft_run(result: dict[str, Any], tmp_path: Path, steps: int) -> pl.DataFrame:
    assert json.loads((tmp_path / "metrics.json").read_text()) == split_metrics(result)[0]
    assert result["steps"] == steps
    assert result["examples"] == {"train": 8, "validation": 2}
    curve = pl.read_csv(tmp_path / "curve.csv")
    assert curve.columns == ["step", "loss", "split"]
    train = curve.filter(pl.col("split") == "train")
    assert train["step"].to_list() == list(range(1, steps + 1))
    assert curve.filter(pl.col("split") == "validation").height >= 1
    out = tmp_path / "out"
    assert (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    model = _load(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    return curve


@pytest.mark.parametrize("averaging", ["token", "sequence"])
def test_sft_lowers_the_training_loss(averaging: str, base_dir: Path, mix_dir: Path, tmp_path: Path) -> None:
    result = run_sft(_sft_settings(loss_averaging=averaging), base_dir, mix_dir, tmp_path / "out",
                     tmp_path / "metrics.json", tmp_path / "curve.csv")
    curve = _check_sft_run(result, tmp_path, 12)
    assert result["loss_averaging"] == averaging and result["lora"] is False
    first, last = result["train_loss_first"], result["train_loss_last"]
    assert math.isfinite(first) and math.isfinite(last)
    assert last < first - 1.0, (first, last)
    validation = curve.filter(pl.col("split") == "validation").sort("step")
    assert validation["step"][-1] == 12  # evaluated once per epoch (4 steps) and at the end
    assert validation["loss"][-1] < validation["loss"][0]
    assert result["validation_loss_first"] == pytest.approx(validation["loss"][0], abs=1e-3)
    assert result["train_tokens"] > 0 and result["tokens_per_s"] > 0
    # the output is the trained model, not the base one
    trained, base = _weights(tmp_path / "out"), _weights(base_dir)
    assert not torch.equal(trained["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_the_same_training_twice_is_the_same_checkpoint(base_dir: Path, mix_dir: Path, tmp_path: Path) -> None:
    """A rerun that trains to the same weights must not look like a new model: DVC would rerun what follows it and
    the response cache would pay again for every answer of the "new" checkpoint."""
    from longwriter.llm.local import checkpoint_identity

    outs = []
    for run in ("a", "b"):
        run_sft(_sft_settings(max_steps=2), base_dir, mix_dir, tmp_path / run / "out", tmp_path / run / "m.json",
                tmp_path / run / "c.csv")
        outs.append(tmp_path / run / "out")
    files = [sorted(p.name for p in out.iterdir()) for out in outs]
    assert files[0] == files[1] and "training_args.bin" not in files[0]
    assert checkpoint_identity(str(outs[0])) == checkpoint_identity(str(outs[1]))


def test_sft_validation_curve_starts_at_step_0(base_dir: Path, mix_dir: Path, tmp_path: Path) -> None:
    result = run_sft(_sft_settings(max_steps=2), base_dir, mix_dir, tmp_path / "out", tmp_path / "metrics.json",
                     tmp_path / "curve.csv")
    validation = pl.read_csv(tmp_path / "curve.csv").filter(pl.col("split") == "validation").sort("step")
    assert validation["step"].to_list() == [0, 2]
    assert result["validation_loss_first"] == pytest.approx(validation["loss"][0], abs=1e-3)


def test_sft_lora_saves_a_merged_plain_checkpoint(base_dir: Path, mix_dir: Path, tmp_path: Path) -> None:
    lora = LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj"))
    result = run_sft(_sft_settings(lora=lora, max_steps=3), base_dir, mix_dir, tmp_path / "out",
                     tmp_path / "metrics.json", tmp_path / "curve.csv")
    _check_sft_run(result, tmp_path, 3)
    assert result["lora"] is True
    merged, base = _weights(tmp_path / "out"), _weights(base_dir)
    assert set(merged) == set(base)  # no lora_A/lora_B or base_layer keys
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])  # the adapter is merged into the targeted weights
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.embed_tokens.weight",
                 "model.layers.1.mlp.up_proj.weight"):
        assert torch.equal(merged[name], base[name]), name  # untargeted weights are frozen


# ----------------------------------------------------------------------------------------------- 5. DPO pairs


def _candidates(prompt_id: str, scores: list[float | None], order: list[int] | None = None) -> list[dict[str, Any]]:
    rows = [{"prompt_id": prompt_id, "prompt": f"prompt {prompt_id}", "sample": s, "text": f"{prompt_id}/{s}",
             "score": score} for s, score in enumerate(scores)]
    return [rows[i] for i in order] if order else rows


def test_build_pairs_chosen_and_rejected() -> None:
    # random_lower (the option): a tie for the best still gives a pair, against an answer scoring lower
    cands = (_candidates("a", [40.0, 90.0, 70.0, 10.0], order=[3, 1, 0, 2])
             + _candidates("tie", [80.0, 95.0, 95.0, 20.0], order=[2, 3, 1, 0])
             + _candidates("unrated", [None, 60.0, None, 50.0])
             + _candidates("one", [None, 99.0, None])
             + _candidates("none", [None, None]))
    pairs = {p["prompt_id"]: p for p in build_pairs(cands, seed=0, rejected="random_lower")}
    assert set(pairs) == {"a", "tie", "unrated"}
    assert pairs["a"]["chosen_sample"] == 1 and pairs["a"]["chosen"] == "a/1" and pairs["a"]["chosen_score"] == 90
    assert pairs["tie"]["chosen_sample"] == 1
    assert pairs["unrated"]["chosen_sample"] == 1 and pairs["unrated"]["rejected_sample"] == 3
    for pid, p in pairs.items():
        assert p["rejected_sample"] != p["chosen_sample"]
        scores = {c["sample"]: c["score"] for c in cands if c["prompt_id"] == pid}
        assert scores[p["rejected_sample"]] is not None
        assert p["rejected_score"] == scores[p["rejected_sample"]]
        assert p["rejected"] == f"{pid}/{p['rejected_sample']}"
        assert p["prompt"] == f"prompt {pid}"
        assert p["margin"] == p["chosen_score"] - p["rejected_score"] > 0
    # a table the Pairs schema accepts
    validate(pl.DataFrame(list(pairs.values()), schema=empty(Pairs).schema), Pairs, "pairs")


@pytest.mark.parametrize("rule", ["random_other", "random_lower"])
def test_build_pairs_is_seeded_and_independent_of_other_prompts(rule: str) -> None:
    rng = random.Random(7)
    cands = [c for i in range(60) for c in _candidates(f"p{i:02d}", [rng.uniform(0, 100) for _ in range(4)])]
    first = build_pairs(cands, seed=0, rejected=rule)
    assert len(first) == 60
    assert build_pairs(cands, seed=0, rejected=rule) == first
    assert build_pairs(list(reversed(cands)), seed=0, rejected=rule) == first
    assert build_pairs(cands, seed=1, rejected=rule) != first
    # a prompt's pair does not depend on which other prompts are in the run
    alone = build_pairs([c for c in cands if c["prompt_id"] == "p07"], seed=0, rejected=rule)
    assert alone == [p for p in first if p["prompt_id"] == "p07"]
    subset = build_pairs([c for c in cands if c["prompt_id"] < "p30"], seed=0, rejected=rule)
    assert subset == [p for p in first if p["prompt_id"] < "p30"]


@pytest.mark.parametrize("rule", ["random_other", "random_lower"])
def test_build_pairs_rejected_is_random_among_the_others(rule: str) -> None:
    # sample 0 is always the best: every other sample should be drawn as rejected for some prompt
    cands = [c for i in range(60) for c in _candidates(f"p{i}", [90.0, 50.0, 40.0, 30.0])]
    pairs = build_pairs(cands, seed=0, rejected=rule)
    assert {p["chosen_sample"] for p in pairs} == {0}
    counts = {s: sum(p["rejected_sample"] == s for p in pairs) for s in (1, 2, 3)}
    assert all(n >= 5 for n in counts.values()), counts


def test_build_pairs_default_draws_any_other_answer_ties_included() -> None:
    """The paper's rule (the default): rejected is a random one of the other three, equal scores included; a draw
    that scores the same as the best gives no pair but a zero_margin row. Over seeds each other sample is drawn."""
    assert build_pairs(_candidates("x", [90.0, 50.0]), seed=0) == build_pairs(
        _candidates("x", [90.0, 50.0]), seed=0, rejected="random_other")
    cands = _candidates("p", [90.0, 90.0, 50.0, 40.0])  # samples 0 and 1 tie for the best: 0 is chosen
    drawn: dict[int, int] = {}
    for seed in range(60):
        dropped: list[dict] = []
        pairs = build_pairs(cands, seed=seed, dropped=dropped)
        assert len(pairs) + len(dropped) == 1
        if pairs:
            assert pairs[0]["chosen_sample"] == 0 and pairs[0]["rejected_sample"] in (2, 3)
            assert pairs[0]["margin"] > 0
            drawn[pairs[0]["rejected_sample"]] = drawn.get(pairs[0]["rejected_sample"], 0) + 1
        else:
            (row,) = dropped
            assert (row["instruction_id"], row["reason"]) == ("p", "zero_margin")
            assert "sample 1" in row["error"] and "sample 0" in row["error"]
            drawn[1] = drawn.get(1, 0) + 1
    assert set(drawn) == {1, 2, 3} and all(n >= 8 for n in drawn.values()), drawn
    # the option keeps the rule before: only answers scoring lower, so the tie never costs the pair
    lower = [build_pairs(cands, seed=seed, rejected="random_lower") for seed in range(60)]
    assert all(len(p) == 1 and p[0]["rejected_sample"] in (2, 3) for p in lower)
    assert {p[0]["rejected_sample"] for p in lower} == {2, 3}


def test_the_rejected_rule_is_checked() -> None:
    from longwriter.config import ConfigError, build
    from longwriter.train.pairs import PairsConfig

    assert PairsConfig().rejected == "random_other"
    assert build(PairsConfig, {"rejected": "random_lower"}, "p:dpo_pairs").rejected == "random_lower"
    with pytest.raises(ValueError, match="rejected"):
        PairsConfig(rejected="worst")
    with pytest.raises(ConfigError, match=r"dpo_pairs\.rejected"):
        build(PairsConfig, {"rejected": "worst"}, "p:dpo_pairs")
    with pytest.raises(ValueError, match="rejected"):
        build_pairs(_candidates("x", [90.0, 50.0]), seed=0, rejected="worst")


# ----------------------------------------------------------------------------------------------- 6. DPO runs


def _pairs_frame(n: int) -> pl.DataFrame:
    rows = []
    for i in range(n):
        rows.append({"prompt_id": f"p{i}", "prompt": f"Write about topic {i}.",
                     "chosen": f"Topic {i} is interesting because it has many long and careful parts.",
                     "rejected": "No.", "chosen_sample": 0, "rejected_sample": 1,
                     "chosen_score": 80.0, "rejected_score": 20.0, "margin": 60.0})
    return pl.DataFrame(rows, schema=empty(Pairs).schema)


def _dpo_settings() -> DPOSettings:
    return DPOSettings(train=TrainSettings(learning_rate=1e-3, max_steps=4, per_device_train_batch_size=2,
                                           max_length=256, logging_steps=1))


def test_dpo_trains_on_pairs(base_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.parquet"
    write_checked(_pairs_frame(4), Pairs, pairs)
    result = run_dpo(_dpo_settings(), base_dir, pairs, tmp_path / "out", tmp_path / "metrics.json",
                     tmp_path / "curve.csv")
    assert json.loads((tmp_path / "metrics.json").read_text()) == split_metrics(result)[0]
    assert result["trained"] is True and result["pairs"] == 4 and result["steps"] == 4
    for key in ("loss_first", "loss_last"):
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert result["loss_first"] == pytest.approx(math.log(2), abs=0.05)  # policy == reference at the start
    assert 0 <= result["reward_accuracy_last"] <= 1
    curve = pl.read_csv(tmp_path / "curve.csv")
    assert {"step", "loss", "reward_accuracy", "reward_margin"} <= set(curve.columns)
    assert curve["step"].to_list() == [1, 2, 3, 4]
    assert curve["reward_accuracy"].is_not_null().all()
    assert (tmp_path / "out" / "model.safetensors").is_file()
    _load(tmp_path / "out")
    trained, base = _weights(tmp_path / "out"), _weights(base_dir)
    assert any(not torch.equal(trained[k], base[k]) for k in base)


def test_dpo_without_pairs_publishes_the_input_model(base_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.parquet"
    write_checked(empty(Pairs), Pairs, pairs)
    result = run_dpo(_dpo_settings(), base_dir, pairs, tmp_path / "out", tmp_path / "metrics.json",
                     tmp_path / "curve.csv")
    assert result["trained"] is False and result["steps"] == 0 and result["pairs"] == 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == split_metrics(result)[0]
    trained, base = _weights(tmp_path / "out"), _weights(base_dir)
    assert set(trained) == set(base)
    assert all(torch.equal(trained[k], base[k]) for k in base)
    _load(tmp_path / "out")
    assert pl.read_csv(tmp_path / "curve.csv").height == 0


@pytest.mark.parametrize("rule", ["random_other", "random_lower"])
def test_build_pairs_records_prompts_without_a_pair(rule: str) -> None:
    cands = (_candidates("flat", [70.0, 70.0, 70.0]) + _candidates("one", [None, 99.0])
             + _candidates("ok", [70.0, 70.0, 10.0]))
    dropped: list[dict] = []
    pairs = build_pairs(cands, seed=0, dropped=dropped, rejected=rule)
    rows = {(d["instruction_id"], d["reason"]) for d in dropped}
    assert {("flat", "zero_margin"), ("one", "too_few_rated")} <= rows
    # each prompt once: a pair or a row ("ok": random_lower always pairs sample 0 with sample 2; random_other may
    # draw the tied sample 1, a zero_margin row)
    assert sorted([p["prompt_id"] for p in pairs] + [d["instruction_id"] for d in dropped]) == ["flat", "ok", "one"]
    if rule == "random_lower":
        assert [p["prompt_id"] for p in pairs] == ["ok"] and pairs[0]["margin"] == 60.0
    # a sampled prompt with no candidate at all (every sample unanswered: only per-sample rows) gets a row too
    dropped = []
    assert build_pairs(cands, seed=0, dropped=dropped, rejected=rule, prompt_ids=["silent", "one"]) == pairs
    assert ("silent", "too_few_rated") in {(d["instruction_id"], d["reason"]) for d in dropped}
    assert sum(d["instruction_id"] == "one" for d in dropped) == 1



@pytest.mark.parametrize("action", ["drop", "truncate"])
def test_sft_examples_over_max_length_are_dropped_or_truncated_and_counted(action: str, base_dir: Path,
                                                                           tmp_path: Path) -> None:
    long = [{"role": "user", "content": "Write a long line."},
            {"role": "assistant", "content": "wave after wave " * 200 + "the end."}]
    mix = tmp_path / "mix"
    write_checked(chat_frame([*SFT_CONVERSATIONS, long], "train"), Chat, mix / "train.parquet")
    write_checked(chat_frame(SFT_CONVERSATIONS[:1], "val"), Chat, mix / "validation.parquet")
    cfg = _sft_settings(max_steps=1)
    cfg = SFTSettings(train=dataclasses.replace(cfg.train, over_max_length=action), eval_steps=None)
    result = run_sft(cfg, base_dir, mix, tmp_path / "out", tmp_path / "m.json", tmp_path / "c.csv",
                     tmp_path / "f.parquet")
    failures = pl.read_parquet(tmp_path / "f.parquet")
    assert result["over_max_length"] == {"count": 1, "action": action}
    assert failures["instruction_id"].to_list() == ["train-4"] and failures["reason"].to_list() == ["over_max_length"]
    assert result["examples"]["train"] == (4 if action == "drop" else 5)


def test_dpo_pairs_over_max_length_are_dropped_and_recorded(base_dir: Path, tmp_path: Path) -> None:
    frame = _pairs_frame(3).with_columns(
        pl.when(pl.col("prompt_id") == "p1").then(pl.lit("long " * 400)).otherwise(pl.col("rejected"))
        .alias("rejected"))
    pairs = tmp_path / "pairs.parquet"
    write_checked(frame, Pairs, pairs)
    result = run_dpo(_dpo_settings(), base_dir, pairs, tmp_path / "out", tmp_path / "metrics.json",
                     tmp_path / "curve.csv", tmp_path / "f.parquet")
    assert result["pairs"] == 2 and result["over_max_length"] == {"count": 1, "action": "drop"}
    assert pl.read_parquet(tmp_path / "f.parquet")["instruction_id"].to_list() == ["p1"]


def test_dpo_pairs_samples_no_prompt_whose_ask_exceeds_the_token_ceiling(tmp_path: Path) -> None:
    """Every answer to such a prompt would be cut and take no part in a pair: it gets a row, no model call."""
    from longwriter.judge import JudgeConfig
    from longwriter.llm import ClientSettings
    from longwriter.train.pairs import PairsConfig, run_dpo_pairs, split_over_ceiling

    requests = pl.DataFrame({"index": [0, 1], "id": ["a", "b"], "prompt": ["x", "y"], "required": [300, 1500],
                             "lang": ["en", "zh"]})
    kept, rows = split_over_ceiling(requests, 1024)
    assert kept["id"].to_list() == ["a"]
    assert [(r["instruction_id"], r["reason"]) for r in rows] == [("b", "over_ceiling")]
    pl.DataFrame({"id": ["b"], "prompt": ["写一篇1500字的文章"], "lang": ["zh"], "source": ["t"],
                  "required_words": [1500], "estimated_words": [None]},
                 schema_overrides={"estimated_words": pl.Int64}).write_parquet(tmp_path / "in.parquet")
    m = run_dpo_pairs(PairsConfig(), JudgeConfig(), ClientSettings(cache_dir=str(tmp_path / "c")),
                      tmp_path / "in.parquet", tmp_path / "no-model", tmp_path / "p.parquet", tmp_path / "f.parquet",
                      tmp_path / "m.json")
    assert m["pairs"] == 0 and m["over_ceiling"] == 1 and m["generation_llm"]["calls"] == 0
    assert pl.read_parquet(tmp_path / "f.parquet")["reason"].to_list() == ["over_ceiling"]


def test_dpo_pairs_records_an_instruction_without_a_length(tmp_path: Path) -> None:
    """Neither a required nor an estimated length: nothing to score an answer's length against. The prompt is not
    sampled and gets a no_required_length row, so every prompt of the input ends as a pair or a failures row."""
    from longwriter.judge import JudgeConfig
    from longwriter.llm import ClientSettings
    from longwriter.train.pairs import PairsConfig, length_requests, run_dpo_pairs

    pl.DataFrame({"id": ["none", "zero", "big"], "prompt": ["Write a story.", "Write a poem.", "写一篇1500字的文章"],
                  "lang": ["en", "en", "zh"], "source": ["t"] * 3, "required_words": [None, None, 1500],
                  "estimated_words": [None, 0, None]},
                 schema_overrides={"required_words": pl.Int64, "estimated_words": pl.Int64},
                 ).write_parquet(tmp_path / "in.parquet")
    kept, rows = length_requests(pl.read_parquet(tmp_path / "in.parquet"))
    assert kept["id"].to_list() == ["big"] and kept["required"].to_list() == [1500]
    assert [(r["instruction_id"], r["reason"]) for r in rows] == [("none", "no_required_length"),
                                                                   ("zero", "no_required_length")]
    m = run_dpo_pairs(PairsConfig(), JudgeConfig(), ClientSettings(cache_dir=str(tmp_path / "c")),
                      tmp_path / "in.parquet", tmp_path / "no-model", tmp_path / "p.parquet", tmp_path / "f.parquet",
                      tmp_path / "m.json")
    assert m["prompts"] == 3 and m["no_required_length"] == 2 and m["over_ceiling"] == 1
    assert m["samples"] == 0 and m["generation_llm"]["calls"] == 0
    assert m["failures"] == {"no_required_length": 2, "over_ceiling": 1}
    failures = pl.read_parquet(tmp_path / "f.parquet")
    assert sorted(zip(failures["instruction_id"], failures["reason"], strict=True)) == [
        ("big", "over_ceiling"), ("none", "no_required_length"), ("zero", "no_required_length")]
