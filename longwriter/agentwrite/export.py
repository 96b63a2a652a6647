"""The long-output dataset as the field shares data: a Hugging Face dataset directory (Parquet shards under
``data/`` and a ``README.md`` dataset card) that ``datasets.load_dataset(path)`` loads, and its upload to the Hub.

The card says what the data is and where it came from: counts, languages, a histogram of answer lengths, the
models that selected, planned and wrote it (names only, never a key), a hash of the params that made it and the
git revision of the code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.config import build, section
from longwriter.errors import InputError
from longwriter.files import atomic_dir, read_table, write_metrics
from longwriter.llm.spec import ModelSpec
from longwriter.schemas import LongSamples, validate

# the params sections whose values decide the data: their hash names the recipe
RECIPE_SECTIONS = ("select", "plan", "write", "postprocess")
# answer lengths (words) in the card's histogram, closed below: [0, 1000), [1000, 2000), ...
LENGTH_EDGES = (0, 1000, 2000, 5000, 10000, 20000)


@dataclass(frozen=True)
class ExportConfig:
    """The ``export`` section."""

    shard_rows: int = 10_000   # rows per Parquet shard
    pretty_name: str = "LongWriter-style long-output SFT data (AgentWrite)"
    # the data's license on the Hub; the generating models' terms may restrict it (the paper's data: apache-2.0)
    license: str = "other"

    def __post_init__(self) -> None:
        if isinstance(self.shard_rows, bool) or not isinstance(self.shard_rows, int) or self.shard_rows < 1:
            raise ValueError(f"shard_rows must be a positive integer, got {self.shard_rows!r}")


def describe_model(spec: ModelSpec) -> str:
    """A model spec as the card names it: what the model is, never how it is reached: no key, and no endpoint URL,
    which can name an internal host or carry credentials (``https://user:token@host/v1``)."""
    if spec.provider == "embedded":
        from longwriter.llm.server import DEFAULT_ALIAS

        name = Path(spec.gguf_path).name if spec.gguf_path else DEFAULT_ALIAS
        return f"{name} (llama.cpp)"
    if spec.provider == "local":
        return f"local checkpoint {spec.path}"
    text = f"{spec.model} (an OpenAI-compatible API)"
    return text + (f", revision {spec.revision}" if spec.revision else "")


def recipe_hash(params: dict[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the recipe sections of ``params``, canonical JSON."""
    recipe = {name: params.get(name) for name in RECIPE_SECTIONS}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def git_revision(root: str | Path = ".") -> str:
    """The checkout's commit, with "+uncommitted" when tracked files differ from it; "unknown" outside git."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except OSError:  # no git on PATH
        return "unknown"
    return head.stdout.strip() + ("+uncommitted" if dirty else "")


def models_of(params: dict[str, Any], where: str) -> dict[str, str]:
    """The selector, planner and writer named in ``params`` (a spec left out is the sections' default, the
    embedded model), and the write mode."""
    def spec(name: str, key: str) -> str:
        return describe_model(build(ModelSpec, section(params, name, where).get(key), f"{where}:{name}.{key}"))

    return {"selector": spec("select", "selector"), "planner": spec("plan", "generator"),
            "writer": spec("write", "generator"),
            "write_mode": str(section(params, "write", where).get("mode", "sequential"))}


def length_histogram(words: pl.Series) -> list[tuple[str, int]]:
    """(label, count) per LENGTH_EDGES bucket of answer words."""
    edges = list(LENGTH_EDGES)
    labels = [f"{lo:,}-{hi:,}" for lo, hi in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]:,}+"]
    counts = [int(((words >= lo) & (words < hi)).sum()) for lo, hi in zip(edges, edges[1:], strict=False)]
    return list(zip(labels, [*counts, int((words >= edges[-1]).sum())], strict=True))


def card(samples: pl.DataFrame, cfg: ExportConfig, models: dict[str, str], recipe: str, revision: str,
         shards: int) -> str:
    """The README.md dataset card: YAML metadata for the Hub and ``load_dataset``, then what the data is."""
    n = samples.height
    langs = sorted(set(samples["lang"]))
    size = "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "100K<n<1M"
    words = samples["words"]
    stats = (f"{int(words.min()):,} / {float(words.median()):,.0f} / {float(words.mean()):,.0f} / "
             f"{int(words.max()):,}" if n else "none")
    by_lang = "\n".join(f"| {lang} | {int((samples['lang'] == lang).sum()):,} |" for lang in langs)
    histogram = "\n".join(f"| {label} | {count:,} |" for label, count in length_histogram(words))
    front = "\n".join([
        "---",
        f"pretty_name: {json.dumps(cfg.pretty_name)}",
        f"license: {cfg.license}",
        f"language: [{', '.join(langs)}]",
        "task_categories: [text-generation]",
        "tags: [long-form-generation, longwriter, agentwrite, synthetic]",
        f"size_categories: [{size}]",
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: data/train-*.parquet",
        "---",
    ])
    return f"""{front}

# {cfg.pretty_name}

Long-output supervised fine-tuning data built with the AgentWrite method of LongWriter (arXiv 2408.07055) by
the longwriter pipeline: a model plans each long-writing instruction as an outline of
paragraphs with word budgets, then writes it paragraph by paragraph ({models['write_mode']} mode); answers that
are too short, cut off, refused or repetitive were dropped before this export.

```python
from datasets import load_dataset
ds = load_dataset("path/to/this/directory")   # or the Hub id it was pushed to
```

## Contents

{n:,} examples in {shards} Parquet shard(s). Answer length in words (CJK characters count one each):
min / median / mean / max {stats}.

| language | examples |
|---|---|
{by_lang}

| answer words | examples |
|---|---|
{histogram}

## Fields

- `id`: the instruction's id in its pool; `source`: the pool it came from; `lang`: `en` or `zh`
- `messages`: the conversation, `[{{role: user, content: instruction}}, {{role: assistant, content: answer}}]`
- `words`: the answer's words; `planned_words`: the plan's total budget; `sections`: paragraphs written
- `lines_removed`: "Paragraph N"-style label lines removed at the paragraphs' starts

## How it was made

| role | model |
|---|---|
| selector (which instructions need a long answer) | {models['selector']} |
| planner | {models['planner']} |
| writer | {models['writer']} |

Recipe: params sections {', '.join(RECIPE_SECTIONS)} hash `{recipe}` (sha256 of their canonical JSON);
code revision `{revision}`; exported {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d')}.

The answers are machine-written. Check the generating models' terms before redistributing them.
"""


def run_export(samples_path: str | Path, recipe: dict[str, Any], params_file: str, out_dir: str | Path,
               metrics_path: str | Path, cfg: ExportConfig, root: str | Path = ".",
               timings: str | Path | None = None) -> dict[str, Any]:
    """Write ``out_dir`` (shards and card, atomically) and the export metrics. ``recipe``: the params sections
    RECIPE_SECTIONS (missing ones count as empty)."""
    samples = validate(read_table(samples_path), LongSamples, samples_path).drop("_row", strict=False)
    models = models_of(recipe, params_file)
    recipe_id, revision = recipe_hash(recipe), git_revision(root)
    shards = max(1, -(-samples.height // cfg.shard_rows))
    with atomic_dir(out_dir) as tmp:
        (tmp / "data").mkdir()
        for i in range(shards):
            part = samples.slice(i * cfg.shard_rows, cfg.shard_rows)
            part.write_parquet(tmp / "data" / f"train-{i:05d}-of-{shards:05d}.parquet")
        (tmp / "README.md").write_text(card(samples, cfg, models, recipe_id, revision, shards), encoding="utf-8")
    metrics = {
        "examples": samples.height,
        "shards": shards,
        "by_lang": {lang: int((samples["lang"] == lang).sum()) for lang in sorted(set(samples["lang"]))},
        "words": {"total": int(samples["words"].sum()), "max": int(samples["words"].max() or 0)},
        "length_histogram": dict(length_histogram(samples["words"])),
        "recipe_hash": recipe_id,
    }
    write_metrics(metrics, metrics_path, timings)
    return metrics


def push_to_hub(out_dir: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an exported directory as the Hub dataset ``repo_id`` (made if missing); returns its URL. The token
    is huggingface_hub's own (``HF_TOKEN`` or ``huggingface-cli login``); it never passes through this code."""
    from huggingface_hub import HfApi

    out_dir = Path(out_dir)
    if not (out_dir / "README.md").is_file() or not list((out_dir / "data").glob("*.parquet")):
        raise InputError(out_dir, "not an exported dataset (README.md and data/*.parquet): run `dvc repro export`")
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset",
                      commit_message="longwriter export")
    return f"https://huggingface.co/datasets/{repo_id}"
