"""Stage ``general``: a small general chat set for ``mix``, built by answering short everyday prompts.

The paper mixes its long-output data with a large general SFT set so the model keeps its short-answer
skills; users point ``mix.general`` at such a set (Parquet with ``messages``). The default is made here:
the prompts in ``data/general/prompts.jsonl`` answered by the generator through the shared client.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from longwriter.files import read_table, write_json
from longwriter.llm import ClientSettings, LLMCallError, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.schemas import Chat, Pool, empty, validate, write_checked, write_failures


@dataclass(frozen=True)
class GeneralConfig:
    prompts: str = "data/general/prompts.jsonl"
    generator: ModelSpec = field(default_factory=ModelSpec)
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.7, top_p=0.95, max_tokens=256))


def run_general(cfg: GeneralConfig, settings: ClientSettings, output: str | Path, failures: str | Path,
                metrics: str | Path) -> dict[str, Any]:
    pool = validate(read_table(cfg.prompts, columns=["id", "prompt"]), Pool, cfg.prompts)
    rows = list(pool.iter_rows(named=True))

    async def work(llm: LLMClient) -> list[dict[str, Any]]:
        with tqdm(total=len(rows), desc="general", unit="answer", disable=None) as bar:
            async def one(row: dict[str, Any]) -> dict[str, Any]:
                messages = [{"role": "user", "content": row["prompt"]}]
                try:
                    reply = await llm.complete(messages, cfg.sampling)
                    out = {"id": row["id"], "source": "general",
                           "messages": [*messages, {"role": "assistant", "content": reply.text.strip()}]}
                    if not reply.text.strip():
                        out = {"id": row["id"], "error": "empty answer", "attempts": 1}
                except LLMCallError as e:
                    out = {"id": row["id"], "error": str(e), "attempts": e.attempts}
                bar.update(1)
                return out
            return list(await asyncio.gather(*(one(r) for r in rows)))

    results, stats = run_with_llm(cfg.generator, settings, work)
    chat = pl.DataFrame([r for r in results if "error" not in r], schema=empty(Chat).schema).sort("id")
    write_checked(chat, Chat, output)
    failed = [r for r in results if "error" in r]
    write_failures([{"stage": "general", "instruction_id": r["id"], "section": None, "attempts": r["attempts"],
                     "error": r["error"]} for r in failed], failures)
    result = {"prompts": len(rows), "examples": chat.height, "failed": len(failed), "llm": stats.as_metrics()}
    write_json(result, metrics)
    return result
