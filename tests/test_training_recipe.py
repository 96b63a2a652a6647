"""THUDM's SFT recipe on the tiny model: packing that keeps sequence boundaries, the two loss weightings (token
and THUDM's per-sequence pack loss) checked by hand, every assistant turn a target, resumable checkpoints, and
the launcher configs as training deps.

No downloads: the tokenizer is the embedded SmolLM2 GGUF's, the model a 2-layer Llama built from a config.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest
import yaml
from conftest import tiny_llama
from tiny_repo import chat_frame

from longwriter.schemas import Chat, write_checked
from longwriter.train import sft as sft_module
from longwriter.train.checkpoint import run_fingerprint
from longwriter.train.sft import (
    SFTSettings,
    chat_dataset,
    conversation_tokens,
    count_sequences,
    load_split,
    run_sft,
    sequence_loss,
    sequence_mean_loss,
    sft_trainer,
    target_weights,
)
from longwriter.train.trainer import TrainSettings

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

ROOT = Path(__file__).parent.parent

SINGLE = [
    [{"role": "user", "content": "Write one line about the sea."},
     {"role": "assistant", "content": "The sea is wide and blue and it sings to the shore every night."}],
    [{"role": "user", "content": "Write one line about a cat."},
     {"role": "assistant", "content": "The cat is soft."}],
    [{"role": "user", "content": "Write one line about the rain."},
     {"role": "assistant", "content": "The rain is cool and grey and it taps on the roof every night, all night."}],
    [{"role": "user", "content": "Write one line about the moon."},
     {"role": "assistant", "content": "The moon is pale."}],
]
TWO_TURNS = [{"role": "user", "content": "Name a colour."},
             {"role": "assistant", "content": "Blue."},
             {"role": "user", "content": "Now write a line about it."},
             {"role": "assistant", "content": "Blue is the colour of the deep and quiet sea."}]


@pytest.fixture(scope="module")
def mix_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mix")
    write_checked(chat_frame(SINGLE * 2 + [TWO_TURNS], "train"), Chat, out / "train.parquet")
    write_checked(chat_frame(SINGLE[:2], "val"), Chat, out / "validation.parquet")
    return out


# ----------------------------------------------------------------------------------------------- 1. the loss


def _logits_for(losses: dict[int, float], length: int) -> Any:
    """Logits over a 2-token vocabulary whose cross-entropy for target 0 at position p is ``losses[p]`` (a fixed
    2.0 elsewhere): logits (0, x) give CE = log(1 + e^x), so x = log(e^loss - 1)."""
    logits = torch.zeros(1, length, 2, dtype=torch.float64)
    for p in range(length):
        logits[0, p, 1] = math.log(math.expm1(losses.get(p, 2.0)))
    return logits


def test_the_two_weightings_by_hand() -> None:
    # one packed row: sequence A (positions 0-4) with targets at tokens 2, 3, 4, B (0-2) with one at token 7, and
    # C (0-1) with none. Token t is predicted at position t - 1: A's losses 1, 2, 3; B's 6.
    position_ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 0, 1]])
    labels = torch.tensor([[-100, -100, 0, 0, 0, -100, -100, 0, -100, -100]])
    logits = _logits_for({1: 1.0, 2: 2.0, 3: 3.0, 6: 6.0}, 10)
    outputs = SimpleNamespace(logits=logits)

    # token: every target weighs 1/4; sequence: A's targets 1/(3·2), B's 1/(1·2)
    mask, weights = target_weights(labels, position_ids, "token")
    assert weights[mask].tolist() == [0.25] * 4
    mask, weights = target_weights(labels, position_ids, "sequence")
    assert weights[mask].tolist() == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])
    assert count_sequences(labels, position_ids) == 2  # C has no target: it takes no part
    token_mean = (1 + 2 + 3 + 6) / 4                 # 3
    sequence_mean = ((1 + 2 + 3) / 3 + 6 / 1) / 2    # 4
    per_token = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100,
                                                  reduction="none")
    assert float(per_token @ target_weights(labels, position_ids, "token")[1][0].double()) == pytest.approx(3.0)

    # from the per-token losses (what the trainer reweights), and from the logits (a compute_loss_func)
    losses = torch.zeros(1, 9)
    losses[0, [1, 2, 3, 6]] = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert sequence_loss(losses, labels, position_ids).item() == pytest.approx(sequence_mean)
    assert sequence_loss(losses, labels, position_ids, torch.tensor(8)).item() == pytest.approx((2 + 6) / 8)
    loss = sequence_mean_loss(1)
    assert loss(outputs, labels, position_ids=position_ids).item() == pytest.approx(sequence_mean, rel=1e-5)
    # without the boundaries the row is one sequence: the token mean
    assert loss(outputs, labels).item() == pytest.approx(token_mean, rel=1e-5)
    # in training the SFT trainer passes S, the sequences of the whole step (here 2 of 8: 4 micro-batches)
    assert loss(outputs, labels, num_items_in_batch=torch.tensor(8), position_ids=position_ids).item() == \
        pytest.approx((2 + 6) / 8, rel=1e-5)
    # the same two sequences as two padded rows (no position_ids): the same numbers
    rows = torch.tensor([[-100, -100, 0, 0, 0], [-100, -100, 0, -100, -100]])
    row_logits = torch.cat([_logits_for({1: 1.0, 2: 2.0, 3: 3.0}, 5), _logits_for({1: 6.0}, 5)])
    assert loss(SimpleNamespace(logits=row_logits), rows).item() == pytest.approx(sequence_mean, rel=1e-5)
    assert count_sequences(rows) == 2


def test_packed_rows_attend_within_their_sequence(tokenizer: Any) -> None:
    """On the CPU (sdpa), a padding-free row of several sequences gives each the logits it gets alone: transformers
    builds a block-diagonal causal mask from the position_ids that restart at 0, when the forward has no KV cache
    (TRL's training and evaluation forwards set use_cache=False; with a cache the row is one causal sequence)."""
    model = tiny_llama(tokenizer).eval()
    torch.manual_seed(1)
    lengths = [7, 4, 9]
    seqs = [torch.randint(0, len(tokenizer), (n,)) for n in lengths]
    row, positions = torch.cat(seqs)[None], torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = model(input_ids=row, position_ids=positions, use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=s[None]).logits[0] for s in seqs])
        cached = model(input_ids=row, position_ids=positions, use_cache=True).logits[0]  # attends across
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(cached[lengths[0]:], alone[lengths[0]:], atol=1e-3)


def _hand_packed(model: Any, batch: dict[str, Any]) -> tuple[float, float, int, int]:
    """Token mean, sequence mean, target tokens and sequences of a padding-free batch, from the model's logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits[0].double()
    labels, positions = batch["labels"][0].tolist(), batch["position_ids"][0].tolist()
    per_sequence: dict[int, list[float]] = {}
    sequence = -1
    for t in range(len(labels)):
        sequence += positions[t] == 0
        if t > 0 and labels[t] != -100:
            per_sequence.setdefault(sequence, []).append(
                float(torch.logsumexp(logits[t - 1], 0) - logits[t - 1, labels[t]]))
    losses = [x for xs in per_sequence.values() for x in xs]
    return (sum(losses) / len(losses), sum(sum(xs) / len(xs) for xs in per_sequence.values()) / len(per_sequence),
            len(losses), len(per_sequence))


def _recipe(averaging: str = "token", **train: Any) -> SFTSettings:
    kw = {"learning_rate": 5e-3, "max_steps": 6, "per_device_train_batch_size": 2, "max_length": 256,
          "logging_steps": 1, "seed": 0, **train}
    return SFTSettings(train=TrainSettings(**kw), loss_averaging=averaging, packing=True, padding_free=True,
                       eval_steps=None)


@pytest.mark.parametrize("averaging", ["token", "sequence"])
def test_the_packed_trainer_loss_is_the_hand_computed_one(averaging: str, base_dir: Path, mix_dir: Path,
                                                          tmp_path: Path) -> None:
    """Packed rows through the SFT trainer as the stage configures it: the step's count (target tokens, or
    sequences) and the training and evaluation losses against the ones computed by hand from the logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(base_dir))
    with torch.no_grad():  # sharper logits than a fresh init's, so the two weightings differ clearly
        model.get_input_embeddings().weight.mul_(40)
    trainer = sft_trainer(_recipe(averaging, max_length=128), model, AutoTokenizer.from_pretrained(str(base_dir)),
                          load_split(mix_dir / "train.parquet"), load_split(mix_dir / "validation.parquet"),
                          str(tmp_path))
    rows = [trainer.train_dataset[i] for i in range(2)]
    assert sum(len(r["seq_lengths"]) for r in rows) >= 4  # packed: several conversations a row
    batch = trainer.data_collator(rows)
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # padding-free
    token_mean, sequence_mean, tokens, sequences = _hand_packed(model, batch)
    assert abs(token_mean - sequence_mean) > 1e-3
    # two accumulated micro-batches (the same one twice): the count the trainer passes compute_loss
    _, count = trainer.get_batch_samples(iter([batch, batch]), 2, torch.device("cpu"))
    assert int(count) == 2 * (tokens if averaging == "token" else sequences)
    model.train()
    train_loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=count).item()
    model.eval()
    with torch.no_grad():
        eval_loss = trainer.compute_loss(model, dict(batch)).item()
    want = token_mean if averaging == "token" else sequence_mean
    assert train_loss == pytest.approx(want / 2, rel=1e-4)  # half of the step's batch
    assert eval_loss == pytest.approx(want, rel=1e-4)


# ----------------------------------------------------------------------------------------------- 2. targets


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_every_assistant_turn_is_a_target(tokenizer: Any, base_dir: Path, tmp_path: Path) -> None:
    out = conversation_tokens(tokenizer, TWO_TURNS)
    ids, mask = out["input_ids"], out["completion_mask"]
    assert ids == list(tokenizer.apply_chat_template(TWO_TURNS, tokenize=True, return_dict=True)["input_ids"])
    runs = _runs(mask)
    # each assistant turn's tokens, from after the generation prompt through the end-of-turn token, and no other
    assert [tokenizer.decode(ids[a:b]) for a, b in runs] == [
        f"{TWO_TURNS[1]['content']}<|im_end|>\n", f"{TWO_TURNS[3]['content']}<|im_end|>\n"]
    untrained = tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert TWO_TURNS[0]["content"] in untrained and TWO_TURNS[2]["content"] in untrained
    assert untrained.endswith("<|im_start|>assistant\n")  # the generation prompt before the last answer
    last = conversation_tokens(tokenizer, TWO_TURNS, "last")
    assert last["input_ids"] == ids and _runs(last["completion_mask"]) == runs[1:]

    # through the trainer: the labels are the input ids on those tokens, -100 elsewhere
    cfg = dataclasses.replace(_recipe(), packing=False, padding_free=False)
    trainer = sft_trainer(cfg, tiny_llama(tokenizer), tokenizer, chat_dataset(chat_frame([TWO_TURNS], "t")),
                          chat_dataset(chat_frame([], "v")), str(tmp_path))
    labels = trainer.train_dataset[0]["labels"]
    assert labels == [i if m else -100 for i, m in zip(ids, mask, strict=True)]


def test_single_turn_tokens_and_targets_are_trls(tokenizer: Any, mix_dir: Path, tmp_path: Path) -> None:
    """A single-turn conversation: the same input ids and labels as TRL's own prompt-completion tokenization
    (what sft trained on before), so the loss and the token counts are unchanged."""
    from trl import SFTConfig, SFTTrainer

    data = chat_dataset(chat_frame(SINGLE, "s"))
    args = SFTConfig(output_dir=str(tmp_path / "trl"), completion_only_loss=True, max_length=256, report_to=[],
                     save_strategy="no", use_cpu=True)
    theirs = SFTTrainer(model=tiny_llama(tokenizer), args=args, train_dataset=data, processing_class=tokenizer)
    cfg = dataclasses.replace(_recipe(), packing=False, padding_free=False)
    for turns in ("all", "last"):
        ours = sft_trainer(dataclasses.replace(cfg, assistant_turns=turns), tiny_llama(tokenizer), tokenizer, data,
                           chat_dataset(chat_frame([], "v")), str(tmp_path / turns))
        assert len(ours.train_dataset) == len(theirs.train_dataset) == len(SINGLE)
        for a, b in zip(ours.train_dataset, theirs.train_dataset, strict=True):
            assert a["input_ids"] == b["input_ids"] and a["labels"] == b["labels"]


# ----------------------------------------------------------------------------------------------- 3. resuming


class _Crash(RuntimeError):
    pass


def _with_callback(monkeypatch: pytest.MonkeyPatch, callback: Any) -> None:
    real = sft_module.sft_trainer

    def patched(*args: Any, **kwargs: Any) -> Any:
        trainer = real(*args, **kwargs)
        trainer.add_callback(callback)
        return trainer

    monkeypatch.setattr(sft_module, "sft_trainer", patched)


def test_a_killed_training_resumes_from_its_last_checkpoint(base_dir: Path, mix_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import TrainerCallback

    class CrashAfterSave(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 4:
                raise _Crash("killed after the step-4 checkpoint")

    class FirstStep(TrainerCallback):
        step: int | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            FirstStep.step = state.global_step

    def run(name: str, checkpoints: Path) -> dict[str, Any]:
        cfg = _recipe("sequence", save_steps=2, checkpoint_dir=str(checkpoints))
        return run_sft(cfg, base_dir, mix_dir, tmp_path / name / "out", tmp_path / name / "m.json",
                       tmp_path / name / "curve.csv")

    reference = run("reference", tmp_path / "ckpt-reference")  # the same run, never interrupted
    # (a packed, sequence-weighted run: it trains)
    assert reference["steps"] == 6 and reference["loss_averaging"] == "sequence"
    assert reference["train_loss_last"] < reference["train_loss_first"] and "resumed_from_step" not in reference
    assert not (tmp_path / "ckpt-reference").exists()  # deleted once the model is published

    checkpoints = tmp_path / "ckpt"
    with monkeypatch.context() as patch:
        _with_callback(patch, CrashAfterSave())
        with pytest.raises(_Crash):
            run("resumed", checkpoints)
    assert sorted(p.name for p in (checkpoints / "sft").iterdir() if p.is_dir()) == ["checkpoint-4"]
    assert not (tmp_path / "resumed" / "out").exists()
    (checkpoints / "sft" / "checkpoint-6").mkdir()  # a save the crash cut short: no trainer_state.json

    with monkeypatch.context() as patch:
        _with_callback(patch, FirstStep())
        resumed = run("resumed", checkpoints)
    assert FirstStep.step == 4  # the rerun started at the saved step
    assert resumed["resumed_from_step"] == 4 and resumed["steps"] == 6
    assert not checkpoints.exists()
    # and continued the same run: the same losses at every step, the same weights at the end
    curves = [pl.read_csv(tmp_path / name / "curve.csv").filter(pl.col("split") == "train")
              for name in ("reference", "resumed")]
    assert curves[1]["step"].to_list() == list(range(1, 7))
    assert curves[1]["loss"].to_list() == pytest.approx(curves[0]["loss"].to_list(), rel=1e-4)
    assert resumed["train_tokens"] == reference["train_tokens"]
    from safetensors.torch import load_file
    a, b = (load_file(str(tmp_path / name / "out" / "model.safetensors")) for name in ("reference", "resumed"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_only_the_same_run_resumes(tmp_path: Path) -> None:
    data = tmp_path / "data.parquet"
    data.write_bytes(b"x")
    cfg = _recipe()
    same = run_fingerprint("sft", cfg, [data])
    # where and how often it checkpoints is not the run; its settings, its inputs and its stage are
    assert run_fingerprint("sft", dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, save_steps=7, checkpoint_dir="elsewhere")), [data]) == same
    assert run_fingerprint("sft", dataclasses.replace(cfg, loss_averaging="sequence"), [data]) != same
    assert run_fingerprint("dpo", cfg, [data]) != same
    data.write_bytes(b"yy")
    assert run_fingerprint("sft", cfg, [data]) != same


def test_checkpoint_settings() -> None:
    t = TrainSettings()
    assert t.save_steps is None and t.trainer_kwargs("scratch")["save_strategy"] == "no"
    assert t.output_dir("sft", "scratch") == "scratch"
    t = TrainSettings(save_steps=400)
    kwargs = t.trainer_kwargs(t.output_dir("sft", "scratch"))
    assert (kwargs["output_dir"], kwargs["save_strategy"], kwargs["save_steps"], kwargs["save_total_limit"]) == \
        (".train-checkpoints/sft", "steps", 400, 1)
    with pytest.raises(ValueError, match="save_steps"):
        TrainSettings(save_steps=0)
    assert "/.train-checkpoints/" in (ROOT / ".gitignore").read_text().splitlines()


# ----------------------------------------------------------------------------------------------- 4. deps


def test_training_stages_depend_on_the_launcher_configs() -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    launched = sorted(name for name, stage in stages.items() if stage["cmd"].startswith("${train.launch}"))
    assert launched == ["dpo", "grpo", "sft"]
    for name in launched:
        assert {"configs/accelerate", "configs/deepspeed"} <= set(stages[name]["deps"]), name
    # and every config a launcher names is under them
    accelerate = yaml.safe_load((ROOT / "configs/accelerate/deepspeed_zero3.yaml").read_text())
    assert accelerate["deepspeed_config"]["deepspeed_config_file"].startswith("configs/deepspeed/")
