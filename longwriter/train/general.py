"""Stage ``general``: a small general chat set for ``mix``, built by answering short everyday prompts.

The paper mixes its long-output data with a large general SFT set so the model keeps its short-answer
skills; users point ``mix.general`` at such a set (Parquet with ``messages``). The default is made here:
the prompts in ``data/general/prompts.jsonl`` answered by the generator through the shared client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.completeness import incomplete_reason, strip_preamble
from longwriter.failures import Reason, failure_row, reason_counts, write_failures
from longwriter.files import read_table, write_metrics
from longwriter.llm import ClientSettings, LLMCallError, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.llm.runner import run_each
from longwriter.schemas import Chat, Pool, empty, validate, write_checked


@dataclass(frozen=True)
class GeneralConfig:
    prompts: str = "data/general/prompts.jsonl"
    generator: ModelSpec = field(default_factory=ModelSpec)
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.95, max_tokens=512))
    # answers until one is complete text (longwriter.completeness); then the prompt is dropped and recorded
    max_attempts: int = 2
    # prompts answered: the first N of the file (None: all). mix takes general_per_long x the long samples, so
    # answering more than that and a few spares pays for answers it leaves out; the others are counted
    max_prompts: int | None = 12

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_prompts is not None and (isinstance(self.max_prompts, bool)
                                             or not isinstance(self.max_prompts, int) or self.max_prompts < 1):
            raise ValueError(f"max_prompts must be a positive integer or null (all), got {self.max_prompts!r}")


async def answer(llm: LLMClient, prompt_id: str, prompt: str, cfg: GeneralConfig) -> dict[str, Any]:
    """A chat row, or a failures row: an answer cut off, empty or refused is asked again with a new seed."""
    messages = [{"role": "user", "content": prompt}]
    for attempt in range(cfg.max_attempts):
        try:
            reply = await llm.complete(messages, cfg.sampling, sample=attempt)
        except LLMCallError as e:
            return failure_row("general", Reason.LLM_ERROR, str(e), instruction_id=prompt_id, attempts=attempt + 1)
        reason = incomplete_reason(reply.text, reply.finish_reason)
        if reason is None:
            text = strip_preamble(reply.text)[0]
            return {"id": prompt_id, "source": "general",
                    "messages": [*messages, {"role": "assistant", "content": text}]}
    return failure_row("general", reason, f"{reason} after {cfg.max_attempts} attempts (finish_reason "
                       f"{reply.finish_reason}): ...{reply.text[-120:]!r}",
                       instruction_id=prompt_id, attempts=cfg.max_attempts)


def run_general(cfg: GeneralConfig, settings: ClientSettings, output: str | Path, failures: str | Path,
                metrics: str | Path, timings: str | Path | None = None) -> dict[str, Any]:
    pool = validate(read_table(cfg.prompts, columns=["id", "prompt"]), Pool, cfg.prompts)
    rows = list(pool.iter_rows(named=True))
    in_file = len(rows)
    left_out = [failure_row("general", Reason.LEFT_OUT, f"past general.max_prompts {cfg.max_prompts}",
                            instruction_id=row["id"]) for row in rows[cfg.max_prompts:]] if cfg.max_prompts else []
    rows = rows[:cfg.max_prompts]

    async def work(llm: LLMClient) -> list[dict[str, Any]]:
        return await run_each(rows, lambda row: answer(llm, row["id"], row["prompt"], cfg),
                              desc="general", unit="answer")

    results, stats = run_with_llm(cfg.generator, settings, work)
    chat = pl.DataFrame([r for r in results if "error" not in r], schema=empty(Chat).schema).sort("id")
    write_checked(chat, Chat, output)
    failed = [r for r in results if "error" in r]
    write_failures(failed + left_out, failures)
    result = {"prompts": len(rows), "left_out_by_max_prompts": in_file - len(rows), "examples": chat.height,
              "failed": len(failed), "failures": reason_counts(failed + left_out), "llm": stats.as_metrics()}
    write_metrics(result, metrics, timings)
    return result
