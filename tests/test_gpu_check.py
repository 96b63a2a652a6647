"""bench/gpu_check.py --dry-run on the CPU: the model and every trainer's arguments at the paper's settings, built
(TRL's config classes check them) and printed, nothing written. The GPU run itself has not happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.py"
RESULT = ROOT / "bench" / "results" / "gpu_check.json"


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def dry_run() -> tuple[subprocess.CompletedProcess[str], dict, float | None]:
    before = RESULT.stat().st_mtime_ns if RESULT.exists() else None
    proc = run("--dry-run")
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout[:proc.stdout.rindex("\ndry run:")])
    return proc, report, before


def test_the_dry_run_writes_nothing(dry_run) -> None:
    proc, _, before = dry_run
    assert (RESULT.stat().st_mtime_ns if RESULT.exists() else None) == before
    assert proc.stdout.rstrip().splitlines()[-1].endswith("nothing written")


def test_the_model_is_a_1b_llama_built_on_the_meta_device(dry_run) -> None:
    _, report, _ = dry_run
    model = report["model"]
    assert 1.0e9 < model["parameters"] < 1.2e9
    assert (model["num_hidden_layers"], model["hidden_size"], model["vocab_size"]) == (16, 2048, 49152)
    assert report["tokens_per_sft_row"] == 32768 and report["dry_run"] is True


def test_sft_runs_the_papers_settings_packed_at_32k(dry_run) -> None:
    _, report, _ = dry_run
    sft = report["settings"]["sft"]
    assert sft["max_length"] == 32768 and sft["packing"] is True and sft["padding_free"] is True
    assert sft["bf16"] is True and sft.get("activation_checkpointing", sft.get("gradient_checkpointing")) is True
    assert (sft["learning_rate"], sft["weight_decay"], sft["adam_beta2"]) == (1e-5, 0.1, 0.95)
    assert sft["lr_scheduler_type"] == "cosine" and sft["warmup_steps"] == 0.03
    assert (sft["per_device_train_batch_size"], sft["gradient_accumulation_steps"]) == (1, 1)
    assert sft["completion_only_loss"] is True and sft["max_steps"] == 6


def test_dpo_and_grpo_settings(dry_run) -> None:
    _, report, _ = dry_run
    dpo, grpo = report["settings"]["dpo"], report["settings"]["grpo"]
    assert dpo["beta"] == 0.1 and dpo["max_length"] == 32768 and dpo["bf16"] is True and dpo["max_steps"] == 3
    assert grpo["num_generations"] == 4 and grpo["max_completion_length"] == 1024 and grpo["use_vllm"] is False
    assert grpo["per_device_train_batch_size"] == 4 and grpo["gradient_checkpointing"] is True
    assert len(grpo["reward_weights"]) == 3


def test_the_project_code_runs_and_the_bare_machine_copy_agrees(dry_run) -> None:
    """Here the project's training modules import, so their arguments are the ones shown; the copy gpu_check keeps
    for a machine without polars must give the same (else update local_trainer_kwargs)."""
    _, report, _ = dry_run
    assert report["code_path"].startswith("longwriter.train")
    assert report["local_copy_differs"] == {}


def test_without_a_gpu_a_real_run_is_refused() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = run("--sft-steps", "1")
    assert proc.returncode != 0 and "--dry-run" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("flags", [(), ("--trl-only",)], ids=["project", "trl-only"])
def test_the_smoke_run_trains_the_three_phases_on_a_tiny_model(flags: tuple[str, ...], tmp_path: Path) -> None:
    """The whole path, on a tiny model on the CPU (~40 s): packed SFT rows come out full, DPO pairs whole."""
    out = tmp_path / "smoke.json"
    proc = run("--smoke", "--sft-steps", "2", "--dpo-steps", "1", "--grpo-steps", "1", "--output", str(out), *flags,
               timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and {p["status"] for p in report["phases"].values()} == {"ok"}
    assert report["phases"]["sft"]["tokens_per_step"] == [1024, 1024]  # 1,024-token rows, packed full
    assert report["phases"]["dpo"]["tokens_per_step"] == [1024]        # chosen + rejected, 512 tokens each
    assert 0 < report["phases"]["grpo"]["completion_mean_tokens"][0] <= 32  # (a random model rarely stops early)
    assert (report["code_path"] == "TRL directly (--trl-only)") == bool(flags)
