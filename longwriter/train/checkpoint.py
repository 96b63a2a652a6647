"""Model checkpoints on disk, saved atomically: every trainer writes into a staging directory beside the output
and renames it into place, so a crash leaves the old checkpoint or the new one, never half of one.

A checkpoint is a directory transformers can load (config, safetensors weights, tokenizer, chat template).

Training checkpoints (``train.save_steps``) are another kind: the Trainer's resumable state every N steps, in
``<train.checkpoint_dir>/<stage>/`` (``.train-checkpoints/sft/`` by default). That directory is outside every DVC
out on purpose: DVC deletes a stage's outs before it runs the stage, so a checkpoint inside one would not survive
the failure it is for (a ``persist: true`` out would, but DVC would then cache and hash gigabytes of optimizer
state per save and keep a failed run's state as the stage's output). It holds ``run.json``, the fingerprint of
the run that wrote it (the stage's settings and its inputs' files); a rerun with the same fingerprint resumes
from the last ``checkpoint-N``, any other run clears it first, and a successful run deletes it after publishing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
CHECKPOINT = re.compile(r"^checkpoint-\d+$")


def staging_dir(output_dir: str | Path) -> Path:
    """A fresh temporary directory next to ``output_dir``, to write a checkpoint into before ``swap_into``."""
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", suffix=".tmp", dir=output_dir.parent))
    os.chmod(tmp, 0o755)
    return tmp


def swap_into(staged: Path, output_dir: str | Path) -> None:
    """Replace ``output_dir`` with the completed ``staged`` directory (a crash leaves the old one or the new)."""
    output_dir = Path(output_dir)
    old = output_dir.with_name(f".{output_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if output_dir.exists():
        output_dir.rename(old)
    staged.rename(output_dir)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(model: Any, tokenizer: Any, output_dir: str | Path) -> None:
    """Save model and tokenizer to ``output_dir`` atomically: written next to it, then renamed into place."""
    tmp = staging_dir(output_dir)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        swap_into(tmp, output_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- training checkpoints: resume a failed run ------------------------------------------------------------------

def run_fingerprint(stage: str, settings: Any, inputs: Iterable[str | Path], extra: Any = None) -> str:
    """What makes two trainings the same run: the stage, its settings (less where and how often it checkpoints)
    and ``extra`` (other settings it reads), every input file's path, size and modification time (a rewritten
    input is a new run: never resumed wrongly, at worst not resumed), and the number of processes
    (``WORLD_SIZE``: sharded optimizer states do not load into another layout)."""
    config = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else dict(settings)
    if isinstance(config.get("train"), dict):
        config["train"] = {k: v for k, v in config["train"].items() if k not in ("save_steps", "checkpoint_dir")}
    files = []
    for root in map(Path, inputs):
        paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        files += [[p.as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in paths if p.exists()]
    if dataclasses.is_dataclass(extra):
        extra = dataclasses.asdict(extra)
    blob = json.dumps({"stage": stage, "settings": config, "extra": extra, "inputs": files,
                       "processes": os.environ.get("WORLD_SIZE", "1")}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _saves_checkpoints(trainer: Any) -> bool:
    strategy = trainer.args.save_strategy
    return getattr(strategy, "value", strategy) == "steps"


def _clear(directory: Path) -> None:
    """Remove what training wrote into ``directory`` (checkpoints, run file, TRL's model card), nothing else."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.is_dir() and CHECKPOINT.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.name in (RUN_FILE, "README.md"):
            entry.unlink(missing_ok=True)


def resume_checkpoint(trainer: Any, fingerprint: str) -> str | None:
    """The checkpoint to pass ``trainer.train(resume_from_checkpoint=...)``: the last complete one in the Trainer's
    output directory when it saves checkpoints and that directory's ``run.json`` names this run (``fingerprint``),
    else None, after clearing the directory and writing this run's ``run.json``. Every process must call this.

    Complete: it has ``trainer_state.json``, which transformers writes after the weights, optimizer and RNG states
    (``transformers.trainer_utils.get_last_checkpoint`` would also return one cut short by the crash)."""
    if not _saves_checkpoints(trainer):
        return None
    directory = Path(trainer.args.output_dir)
    run_file = directory / RUN_FILE
    try:
        same = json.loads(run_file.read_text(encoding="utf-8")).get("fingerprint") == fingerprint
    except (OSError, ValueError):
        same = False
    complete = [p for p in directory.glob("checkpoint-*") if CHECKPOINT.match(p.name)
                and (p / "trainer_state.json").is_file()] if same else []
    last = str(max(complete, key=lambda p: checkpoint_step(str(p)) or 0)) if complete else None
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()  # every process has decided before the main one changes the directory
    if last is None and accelerator.is_main_process:
        _clear(directory)
        directory.mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps({"fingerprint": fingerprint}) + "\n", encoding="utf-8")
    accelerator.wait_for_everyone()
    if last is not None and hasattr(trainer, "_total_train_tokens"):
        # TRL counts the trained tokens from 0 in every train() call: continue the interrupted run's count
        state = json.loads((Path(last) / "trainer_state.json").read_text(encoding="utf-8"))
        trainer._total_train_tokens = int(max((e.get("num_tokens", 0) for e in state.get("log_history", [])),
                                              default=0))
    return last


def checkpoint_step(checkpoint: str | None) -> int | None:
    """The optimizer step a ``checkpoint-N`` directory was saved at (None for None)."""
    return None if checkpoint is None else int(Path(checkpoint).name.rsplit("-", 1)[1])


def discard_checkpoints(trainer: Any) -> None:
    """After a successful run: delete its training checkpoints (main process), and the directories left empty."""
    if not _saves_checkpoints(trainer):
        return
    if trainer.accelerator.is_main_process:
        directory = Path(trainer.args.output_dir)
        _clear(directory)
        for empty in (directory, directory.parent):
            try:
                empty.rmdir()
            except OSError:
                break
    trainer.accelerator.wait_for_everyone()
