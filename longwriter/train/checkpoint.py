"""Model checkpoints on disk, saved atomically: every trainer writes into a staging directory beside the output
and renames it into place, so a crash leaves the old checkpoint or the new one, never half of one.

A checkpoint is a directory transformers can load (config, safetensors weights, tokenizer, chat template).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


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
