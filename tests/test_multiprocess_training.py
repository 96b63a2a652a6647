"""The training stages on two processes, run the way dvc.yaml runs them (``${train.launch} -m stages.<name>``)
with ``train.launch`` an ``accelerate launch`` of 2 CPU processes (gloo), on a tiny model: sft, dpo (LoRA) and
grpo each write one checkpoint transformers loads, and their metrics, plots and failures once, from rank 0,
with every rank's rows under distinct ids; the token-averaged SFT loss of 2 processes x batch 1 is the loss of
1 process x batch 2 on the same two examples.

``accelerate launch --cpu --num_processes 2`` starts one process (its CPU launcher starts several only through
mpirun), so the launch is accelerate's torchrun one (a MULTI_GPU config, as configs/accelerate/multi_gpu.yaml)
with ``ACCELERATE_USE_CPU`` set, which makes transformers and accelerate train on the CPU over gloo. What each
process writes is logged by a ``sitecustomize`` the launched interpreters import (``WRITES``): a file written
twice, or by rank 1, fails.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from conftest import tiny_llama

from longwriter.failures import Failures
from longwriter.schemas import MESSAGES, Chat, Pairs, empty, validate, write_checked

torch = pytest.importorskip("torch")
pytest.importorskip("trl")

ROOT = Path(__file__).parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

# imported by every launched interpreter (PYTHONPATH): logs "<rank>\t<path>" for each file or checkpoint written
WRITES = '''
import contextlib, os
if os.environ.get("LW_WRITE_LOG") and "RANK" in os.environ:  # the training processes, not the launcher
    import longwriter.files as files
    import longwriter.train.checkpoint as checkpoint

    def _record(path):
        with open(os.environ["LW_WRITE_LOG"], "a") as log:
            log.write(f"{os.environ['RANK']}\\t{os.path.abspath(path)}\\n")

    _atomic_path, _swap_into = files.atomic_path, checkpoint.swap_into

    @contextlib.contextmanager
    def atomic_path(path):
        with _atomic_path(path) as tmp:
            yield tmp
        _record(path)

    def swap_into(staged, output_dir):
        _swap_into(staged, output_dir)
        _record(output_dir)

    files.atomic_path, checkpoint.swap_into = atomic_path, swap_into
'''

# the two SFT examples: answers of very different lengths, so that averaging each process's own token mean
# (wrong) and averaging over all target tokens (right) give different losses
SFT_TRAIN = [
    [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."}],
    [{"role": "user", "content": "Describe the sea."},
     {"role": "assistant", "content": "The sea is wide and grey and restless, and it sings to the shore every "
                                      "night of the year while the gulls sleep on the water far from land."}],
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chat(conversations: list[list[dict[str, str]]], prefix: str) -> pl.DataFrame:
    return pl.DataFrame({"id": [f"{prefix}-{i}" for i in range(len(conversations))],
                         "source": ["long"] * len(conversations), "messages": conversations},
                        schema_overrides={"messages": MESSAGES})


def _train(**kw: Any) -> dict[str, Any]:
    return {"learning_rate": 1e-3, "max_steps": 1, "per_device_train_batch_size": 1, "max_length": 128,
            "logging_steps": 1, "seed": 0, **kw}


def _reference_sft(root: Path) -> dict[str, Any]:
    """The first SFT loss of one process on the same global batch (both examples in one batch of 2, the same data,
    seed and weights), and each example's own token-mean loss and target-token count."""
    from transformers import AutoTokenizer

    from longwriter.train.sft import SFTSettings, load_split, run_sft, sft_trainer
    from longwriter.train.trainer import TrainSettings

    one = SFTSettings(train=TrainSettings(**_train(per_device_train_batch_size=2)), eval_steps=None)
    reference = run_sft(one, root / "base", root / "mix", root / "one" / "model", root / "one" / "m.json",
                        root / "one" / "c.csv")
    trainer = sft_trainer(one, root / "base", AutoTokenizer.from_pretrained(str(root / "base")),
                          load_split(root / "mix" / "train.parquet"),
                          load_split(root / "mix" / "validation.parquet").select([]), str(root / "one" / "scratch"))
    trainer.model.eval()
    means, counts = [], []
    with torch.no_grad():
        for i in range(2):
            batch = trainer.data_collator([trainer.train_dataset[i]])
            means.append(trainer.compute_loss(trainer.model, batch).item())
            counts.append(int((batch["labels"][:, 1:] != -100).sum()))
    return {"loss": reference["train_loss_first"], "means": means, "counts": counts}


@pytest.fixture(scope="module")
def runs(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The three stages launched at once (their start-up, mostly imports, overlaps), the one-process SFT reference
    computed meanwhile; then every launch's outcome."""
    from fake_openai import FakeOpenAIServer

    from longwriter.train.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("multiprocess")
    model = tiny_llama(tokenizer)
    with torch.no_grad():  # sharper logits than a fresh init's: token losses differ, and so do the averagings
        model.get_input_embeddings().weight.mul_(20)
    save_checkpoint(model, tokenizer, root / "base")
    write_checked(_chat(SFT_TRAIN, "train"), Chat, root / "mix" / "train.parquet")
    write_checked(_chat(SFT_TRAIN[:1], "val"), Chat, root / "mix" / "validation.parquet")
    pairs = [{"prompt_id": f"p{i}", "prompt": f"Write about topic {i}.",
              "chosen": f"Topic {i} is interesting because it has many careful parts.", "rejected": "No.",
              "chosen_sample": 0, "rejected_sample": 1, "chosen_score": 80.0, "rejected_score": 20.0,
              "margin": 60.0} for i in range(3)]
    pairs[2]["chosen"] = "far too long " * 100  # over max_length: dropped, one failures row
    write_checked(pl.DataFrame(pairs, schema=empty(Pairs).schema), Pairs, root / "pairs.parquet")
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(WRITES)
    judge = FakeOpenAIServer(faults={"500": 1.0}).start()  # every judgement fails: each completion is a row
    params = {
        "base": {"model": str(root / "base"), "dtype": "float32", "trust_remote_code": False},
        "sft": {"eval_steps": None, "train": _train()},
        "dpo": {"train": _train(lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})},
        # 2 prompts x 2 completions: one step of 2 completions per process
        "grpo": {"start": "sft", "pool": str(FIXTURES / "tiny_rl.jsonl"), "use_selected": False,
                 "num_generations": 2, "max_completion_length": 96, "overlong_buffer": 16,
                 "train": _train(learning_rate=1e-5, per_device_train_batch_size=2)},
        "judge": {"model": {"provider": "openai", "base_url": judge.base_url, "model": "judge"}, "max_attempts": 1},
        "llm": {"cache_dir": str(root / "cache"), "max_retries": 0},
    }
    inputs = {"sft": {"base": str(root / "base"), "data": str(root / "mix")},
              "dpo": {"model": str(root / "base"), "pairs": str(root / "pairs.parquet")},
              "grpo": {"model": str(root / "base"), "instructions": str(root / "none.parquet"),
                       "plans": str(root / "none.parquet"), "prompts-output": str(root / "grpo_prompts.parquet")}}
    started: dict[str, tuple[Path, Any]] = {}
    try:
        for stage, options in inputs.items():
            started[stage] = _start(root, stage, params, options)
        reference = _reference_sft(root)
        results = {stage: _finish(*run) for stage, run in started.items()}
        sent = judge.requests_count()
    finally:
        for _, process in started.values():
            _stop(process)
        judge.stop()
    return {"root": root, "reference": reference, "judge_requests": sent, **results}


def _start(root: Path, stage: str, params: dict[str, Any], options: dict[str, str]) -> tuple[Path, Any]:
    """Start ``${train.launch} -m stages.<stage>`` as dvc.yaml runs it, writing into ``root/<stage>``."""
    out = root / stage
    out.mkdir()
    # as configs/accelerate/multi_gpu.yaml, with 2 processes on this machine's CPU (and no default config of the
    # machine's own read in its place); a port per launch, as they run at once
    accelerate = out / "accelerate.yaml"
    accelerate.write_text(yaml.safe_dump({
        "compute_environment": "LOCAL_MACHINE", "distributed_type": "MULTI_GPU", "machine_rank": 0,
        "main_training_function": "main", "mixed_precision": "no", "num_machines": 1, "num_processes": 2,
        "main_process_port": _free_port(), "rdzv_backend": "static", "same_network": True, "use_cpu": False}))
    launch = f"env ACCELERATE_USE_CPU=true {sys.executable} -m accelerate.commands.launch --config_file {accelerate}"
    (out / "params.yaml").write_text(yaml.safe_dump({**params, "train": {"launch": launch}}, sort_keys=False))
    command = [*shlex.split(launch), "-m", f"stages.{stage}", "--params", str(out / "params.yaml"),
               *(word for flag, value in options.items() for word in (f"--{flag}", value)),
               "--output", str(out / "model"), "--metrics", str(out / "metrics.json"),
               "--timings", str(out / "timings.json"), "--plot-csv", str(out / "curve.csv"),
               "--failures", str(out / "failures.parquet")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "site"), str(ROOT)]),
           "LW_WRITE_LOG": str(out / "writes.log"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1"}
    return out, subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, start_new_session=True)  # a process group: the launcher and its ranks


def _stop(process: Any) -> None:
    """End a launch still running (and its ranks)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _finish(out: Path, process: Any) -> dict[str, Any]:
    try:
        output, _ = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        _stop(process)
        output, _ = process.communicate()
    log = out / "writes.log"
    writes = Counter(tuple(line.split("\t")) for line in log.read_text().splitlines()) if log.exists() else Counter()
    return {"out": out, "returncode": process.returncode, "output": output, "writes": writes}


def _check_launch(run: dict[str, Any]) -> Path:
    """The launch succeeded; every output was written once, by rank 0; one checkpoint, which transformers loads."""
    from transformers import AutoModelForCausalLM

    out = run["out"]
    assert run["returncode"] == 0, run["output"][-8000:]
    expected = {str(out / name) for name in ("model", "metrics.json", "timings.json", "curve.csv",
                                             "failures.parquet")}
    expected |= {path for _, path in run["writes"] if path.endswith("grpo_prompts.parquet")}  # grpo's prompts
    assert run["writes"] == Counter({("0", path): 1 for path in expected}), run["writes"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging directory left
    assert type(AutoModelForCausalLM.from_pretrained(str(out / "model"))).__name__ == "LlamaForCausalLM"
    return out


def _weights(directory: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(directory / "model.safetensors"))


def test_sft_on_two_processes_has_the_one_process_token_averaged_loss(runs: dict[str, Any]) -> None:
    out = _check_launch(runs["sft"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["examples"] == {"train": 2, "validation": 1}
    reference = runs["reference"]
    # Tolerance: the Trainer logs the loss rounded to 4 decimals (and summarize rounds it again), and the two runs
    # sum the same float32 token losses in a different order (one batch, or two all-reduced halves): 1e-6 apart
    # before rounding, so at most one unit of the 4th decimal after it. Below, the wrong averaging is far off.
    tolerance = 2e-4
    assert metrics["train_loss_first"] == pytest.approx(reference["loss"], abs=tolerance)
    # the test can tell: the mean of each example's own token mean (what each process averaging its own tokens,
    # then DDP averaging the processes, would log) is far from the loss over all target tokens, which the
    # one-process run logs
    (a, b), (n_a, n_b) = reference["means"], reference["counts"]
    token_mean = (a * n_a + b * n_b) / (n_a + n_b)
    assert reference["loss"] == pytest.approx(token_mean, abs=tolerance)
    assert abs((a + b) / 2 - token_mean) > 50 * tolerance, reference


def test_dpo_lora_on_two_processes_publishes_one_merged_checkpoint(runs: dict[str, Any]) -> None:
    out = _check_launch(runs["dpo"])
    merged, base = _weights(out / "model"), _weights(runs["root"] / "base")
    assert set(merged) == set(base)  # a plain checkpoint: adapters merged, none of their keys
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])
    assert torch.equal(merged["model.layers.0.mlp.up_proj.weight"], base["model.layers.0.mlp.up_proj.weight"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trained"] is True and metrics["pairs"] == 2 and metrics["steps"] == 1
    failures = pl.read_parquet(out / "failures.parquet")  # the dataset's rows, once (not once per process)
    assert failures["instruction_id"].to_list() == ["p2"]


def test_grpo_on_two_processes_gathers_every_rank_s_judge_failures_and_calls(runs: dict[str, Any]) -> None:
    out = _check_launch(runs["grpo"])
    metrics = json.loads((out / "metrics.json").read_text())
    # one step: 2 processes x 2 completions, each judged once (and failed)
    assert metrics["steps"] == 1 and metrics["completions"] == 4 and runs["judge_requests"] == 4
    assert metrics["judge_failed"] == 4
    assert metrics["judge_llm"]["failed_calls"] == 4  # every process's calls, summed
    failures = validate(pl.read_parquet(out / "failures.parquet"), Failures, "grpo")
    # both processes' rows, each completion named by its place in the step's whole batch: distinct ids
    assert sorted(failures["instruction_id"].to_list()) == [f"step1:completion{k}" for k in range(4)]
