"""Stage ``mix``: long-output samples plus general chat data, shuffled and split, as the SFT dataset.

The paper trains on LongWriter-6k mixed with general SFT data (about 180k examples: ~30 general per long)
so the model learns to write long without forgetting how to answer short. ``general_per_long`` sets that
ratio; the split is per source, so validation holds long examples whenever there are enough of them.
The output directory holds ``train.parquet`` and ``validation.parquet`` with a ``messages`` column,
loadable as ``datasets.load_dataset("parquet", data_files=...)``.

``max_output_words`` caps the SFT data's output length, the variable of the paper's length experiment (GLM-4-9B
trained on sets capped at 500 / 1,000 / 2,000 words wrote at most about 600 / 900 / 1,800): a sample, long or
general, whose answer (its longest assistant turn, by ``longwriter.wordcount.count_words``) has more words is left
out before the ratio is applied, with a failures row (``over_max_words``). The metrics give each split's answer
words per source (max, total) beside its tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.errors import InputError
from longwriter.failures import Reason, failure_row, reason_counts, write_failures
from longwriter.files import read_table, write_metrics
from longwriter.schemas import Chat, LongSamples, validate, write_checked
from longwriter.wordcount import count_words

# token-length histogram bins (upper bounds), per source
_BINS = ((512, "<512"), (2048, "512-2k"), (8192, "2k-8k"), (32768, "8k-32k"))


@dataclass(frozen=True)
class MixConfig:
    long: str = "data/long_samples.parquet"
    # any Parquet/JSONL with a ``messages`` column (role/content dicts), e.g. a converted ShareGPT set
    general: str = "data/general_chat.parquet"
    # general examples per long example (the paper: ~30); null: every general example
    general_per_long: float | None = 2.0
    validation_fraction: float = 0.1
    seed: int = 0
    # the SFT data's maximum output length in words: longer samples (long or general) are left out; null: no limit
    max_output_words: int | None = None

    def __post_init__(self) -> None:
        if self.general_per_long is not None and self.general_per_long < 0:
            raise ValueError("general_per_long must be >= 0 (or null)")
        if self.max_output_words is not None and (isinstance(self.max_output_words, bool)
                                                  or self.max_output_words < 1):
            raise ValueError(f"max_output_words must be a positive integer or null, got {self.max_output_words!r}")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError("validation_fraction must be within [0, 1)")


def answer_words(messages: list[dict[str, str]]) -> int:
    """A sample's output length: the words (the paper's count) of its longest assistant turn."""
    return max((count_words(m["content"]) for m in messages if m["role"] == "assistant"), default=0)


def cap_output_words(df: pl.DataFrame, max_words: int | None, source: str
                     ) -> tuple[pl.DataFrame, list[dict[str, Any]]]:
    """The samples whose answer has at most ``max_words`` words (all of them for None), and a failures row for
    each one left out (``source`` names the input: long or general)."""
    if max_words is None or df.height == 0:
        return df, []
    words = pl.Series("_words", [answer_words(m) for m in df["messages"].to_list()], dtype=pl.Int64)
    over = df.with_columns(words).filter(pl.col("_words") > max_words)
    rows = [failure_row("mix", Reason.OVER_MAX_WORDS, f"{source} sample: {n} words > max_output_words {max_words}",
                        instruction_id=i) for i, n in over.select("id", "_words").iter_rows()]
    return df.filter(words <= max_words), rows


def _shuffled(df: pl.DataFrame, rng: random.Random) -> pl.DataFrame:
    order = list(range(df.height))
    rng.shuffle(order)
    return df[order]


def mix_frames(long: pl.DataFrame, general: pl.DataFrame, cfg: MixConfig) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Train and validation tables (id, source, messages): deterministic for a given seed."""
    rng = random.Random(cfg.seed)
    general = _shuffled(general.sort("id"), rng)
    if cfg.general_per_long is not None:
        general = general.head(min(general.height, round(cfg.general_per_long * long.height)))
    parts = [("long", long.sort("id").select("id", pl.lit("long").alias("source"), "messages")),
             ("general", general.select("id", pl.lit("general").alias("source"), "messages"))]
    train, validation = [], []
    for _, part in parts:
        part = _shuffled(part, rng)
        n_val = round(cfg.validation_fraction * part.height)
        validation.append(part.head(n_val))
        train.append(part.slice(n_val))
    train_df, val_df = pl.concat(train), pl.concat(validation)
    if cfg.validation_fraction > 0 and val_df.height == 0 and train_df.height >= 2:
        # too few examples for the fraction to round up: still keep one aside, so validation loss exists
        val_df, train_df = train_df.tail(1), train_df.head(train_df.height - 1)
    return _shuffled(train_df, rng), _shuffled(val_df, rng)


def _histogram(lengths: list[int]) -> dict[str, int]:
    counts = {label: 0 for _, label in _BINS} | {">=32k": 0}
    for n in lengths:
        label = next((lab for top, lab in _BINS if n < top), ">=32k")
        counts[label] += 1
    return counts


def token_lengths(tokenizer: Any, messages: list[list[dict[str, str]]]) -> list[int]:
    """Tokens of each conversation under the model's chat template (what training sees)."""
    return [len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=False)) for m in messages]


def run_mix(cfg: MixConfig, tokenizer_dir: str | Path, output_dir: str | Path, metrics: str | Path,
            failures: str | Path, timings: str | Path | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    from transformers import AutoTokenizer

    long = validate(read_table(cfg.long), LongSamples, cfg.long)
    general = validate(read_table(cfg.general, columns=["id", "source", "messages"]), Chat, cfg.general)
    if long.height == 0:
        raise InputError(cfg.long, "no long-output samples to train on (did postprocess drop them all?)")
    clash = set(long["id"]) & set(general["id"])
    if clash:
        raise InputError(cfg.general, f"ids also used by long samples: {sorted(clash)[:3]}", column="id")
    long, long_rows = cap_output_words(long, cfg.max_output_words, "long")
    general, general_rows = cap_output_words(general, cfg.max_output_words, "general")
    train, validation = mix_frames(long, general, cfg)
    taken = set(train["id"]) | set(validation["id"])
    by_ratio = [failure_row("mix", Reason.LEFT_OUT, f"general sample past mix.general_per_long {cfg.general_per_long} "
                            f"x {long.height} long samples", instruction_id=i)
                for i in general["id"].to_list() if i not in taken]
    rows = long_rows + general_rows + by_ratio
    write_failures(rows, failures)
    if train.height == 0:
        raise InputError(cfg.long, f"nothing to train on: {len(long_rows)} long and {len(general_rows)} general "
                                   f"samples have more than max_output_words {cfg.max_output_words} words, and "
                                   f"general_per_long {cfg.general_per_long} takes general samples per long one")
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=trust_remote_code)
    result: dict[str, Any] = {"general_per_long": cfg.general_per_long, "seed": cfg.seed,
                              "max_output_words": cfg.max_output_words,
                              "left_out": {"long": len(long_rows), "general": len(general_rows)},
                              "left_out_by_ratio": len(by_ratio),
                              "failures": reason_counts(rows)}
    for split, df in (("train", train), ("validation", validation)):
        write_checked(df, Chat, Path(output_dir) / f"{split}.parquet")
        lengths = token_lengths(tokenizer, df["messages"].to_list())
        words = [answer_words(m) for m in df["messages"].to_list()]
        sources = df["source"].to_list()
        per_source: dict[str, Any] = {}
        for source in ("long", "general"):
            mine = [n for n, s in zip(lengths, sources, strict=True) if s == source]
            my_words = [w for w, s in zip(words, sources, strict=True) if s == source]
            per_source[source] = {"examples": len(mine), "tokens": sum(mine), "max_tokens": max(mine, default=0),
                                  "words": {"max": max(my_words, default=0), "total": sum(my_words)},
                                  "histogram": _histogram(mine)}
        result[split] = per_source
    write_metrics(result, metrics, timings)
    return result
