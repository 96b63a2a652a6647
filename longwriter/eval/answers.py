"""The ``eval`` section (the models under test and how they sample, the per-request length caps) and what an
evaluation reports of its answers. The answering itself is ``longwriter.generation``, shared with training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from longwriter.generation import LOSSLESS_RATIO, EvalModel, LengthCap, default_tokens_per_word
from longwriter.llm import ModelSpec, Sampling
from longwriter.schemas import EVAL_LANGS


@dataclass(frozen=True)
class EvalConfig:
    """The ``eval`` section: which models are evaluated and how they sample."""

    models: tuple[EvalModel, ...] = (EvalModel("base", ModelSpec(provider="local", path="models/base")),
                                     EvalModel("sft", ModelSpec(provider="local", path="models/sft")))
    # the paper's generation settings; max_tokens is a ceiling over the per-request caps below (the paper's:
    # 32768; 512 holds the laptop benchmark files' asks)
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.5, top_p=0.8, top_k=50,
                                                                max_tokens=512))
    # each request's max_tokens is at most ceil(cap_ratio x required words x tokens_per_word) + cap_margin:
    # 4 (or more) loses nothing, as S_l is 0 from 4x the required words on; less saves time and is counted
    cap_ratio: float = LOSSLESS_RATIO
    # tokens per counted word, one number or one per language ({en: .., zh: .., other: ..}); see
    # longwriter.generation.default_tokens_per_word for why 2.5 and 3.0
    tokens_per_word: float | dict[str, float] = field(default_factory=default_tokens_per_word)
    cap_margin: int = 64

    def __post_init__(self) -> None:
        names = [m.name for m in self.models]
        if not names:
            raise ValueError("list at least one model")
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        if isinstance(self.cap_ratio, bool) or not isinstance(self.cap_ratio, int | float) or self.cap_ratio <= 0:
            raise ValueError(f"cap_ratio must be a positive number, got {self.cap_ratio!r}")
        if isinstance(self.cap_margin, bool) or not isinstance(self.cap_margin, int) or self.cap_margin < 0:
            raise ValueError(f"cap_margin must be a non-negative integer, got {self.cap_margin!r}")
        per_word = self.tokens_per_word
        values = list(per_word.values()) if isinstance(per_word, dict) else [per_word]
        if isinstance(per_word, dict):
            unknown = sorted(set(per_word) - set(EVAL_LANGS), key=str)
            if not per_word or unknown:
                raise ValueError(f"tokens_per_word: languages must be some of {', '.join(EVAL_LANGS)}"
                                 + (f", got {', '.join(map(str, unknown))}" if unknown else ""))
        if any(isinstance(v, bool) or not isinstance(v, int | float) or v <= 0 for v in values):
            raise ValueError(f"tokens_per_word must be positive numbers, got {per_word!r}")
        object.__setattr__(self, "tokens_per_word", {k: float(v) for k, v in per_word.items()}
                           if isinstance(per_word, dict) else float(per_word))

    @property
    def length_cap(self) -> LengthCap:
        return LengthCap(self.cap_ratio, self.tokens_per_word, self.cap_margin)


def answer_metrics(answers: pl.DataFrame) -> dict[str, Any]:
    """Of one model's answers: how many had a limit below the lossless one and below the words asked, the share
    cut at that limit (finish_reason "length") and the share that fell into a loop."""
    n = answers.height
    return {
        "capped_below_lossless": int((~answers["cap_lossless"]).sum()) if n else 0,
        "capped_below_ask": int(answers["cap_below_ask"].sum()) if n else 0,
        "truncated_share": round(float((answers["finish_reason"] == "length").mean()), 4) if n else None,
        "degenerate_share": round(float(answers["degenerate"].mean()), 4) if n else None,
    }
