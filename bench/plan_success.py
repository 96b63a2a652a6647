"""Plan success rate with and without a JSON schema, on the embedded model (or any model spec).

    python bench/plan_success.py --n 20

Takes the first N writing prompts of the default pool (after select's deterministic filters, those that state
a length of at least 800 words or none), asks for a plan in each structured-output mode, and prints, per
mode: parsed on the first try, usable after repair on the first try, usable within max_attempts, and the
repairs made. Calls go through the shared response cache (.llm-cache), so a rerun is free.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click
import polars as pl

from longwriter.agentwrite.plan import (
    PlanConfig,
    Repairs,
    paragraph_bounds,
    parse_plan_json,
    parse_plan_lines,
    plan_messages,
    plan_one,
    plan_schema,
)
from longwriter.agentwrite.pool import load_pools
from longwriter.agentwrite.select import SelectConfig, prefilter
from longwriter.files import write_json
from longwriter.llm import ClientSettings, LLMClient, ModelSpec, run_with_llm


@click.command(help=__doc__)
@click.option("--n", default=20, show_default=True, help="Prompts per mode.")
@click.option("--pool", default="data/pool/instructions.jsonl", show_default=True)
@click.option("--cache-dir", default=".llm-cache", show_default=True)
@click.option("--out", default="bench/results/plan_success.json", show_default=True)
def main(n: int, pool: str, cache_dir: str, out: str) -> None:
    cands, _, _ = prefilter(load_pools([pool]), SelectConfig())
    cands = cands.filter(pl.col("required_words").is_null() | (pl.col("required_words") >= 800)).sort("id").head(n)
    rows = cands.to_dicts()
    results = {}
    for mode in ("json_object", "none"):
        cfg = PlanConfig(min_paragraphs=3, max_paragraphs=5, min_words=100, max_words=250,
                         generator=ModelSpec(structured_output=mode))
        repairs = Repairs()

        async def work(llm: LLMClient, cfg=cfg, repairs=repairs, mode=mode) -> tuple[list, int]:
            parsed_first = 0
            outcomes = []
            for row in rows:  # one at a time: the embedded server has one slot
                outcomes.append(await plan_one(llm, row, cfg, repairs))
                # was the very first reply parseable at all (before repair)?
                reply = await llm.complete(_first_messages(row, cfg, mode), cfg.sampling,
                                           schema=_schema(row, cfg, mode), sample=0)
                try:
                    (parse_plan_json if mode != "none" else parse_plan_lines)(reply.text)
                    parsed_first += 1
                except ValueError:
                    pass
            return outcomes, parsed_first

        started = time.perf_counter()
        (outcomes, parsed_first), stats = run_with_llm(cfg.generator, ClientSettings(cache_dir=cache_dir), work)
        k = len(outcomes)
        results[mode] = {
            "prompts": k,
            "parsed_first_try": round(parsed_first / k, 3),
            "usable_first_try": round(sum(o.paragraphs is not None and o.attempts == 1 for o in outcomes) / k, 3),
            "usable_within_attempts": round(sum(o.paragraphs is not None for o in outcomes) / k, 3),
            "max_attempts": cfg.max_attempts,
            "repairs": dataclasses.asdict(repairs),
            "seconds": round(time.perf_counter() - started, 1),
            "sent_calls": stats.sent_calls,
        }
    click.echo(f"{'mode':<12} {'parsed@1':>9} {'usable@1':>9} {'usable@' + str(PlanConfig().max_attempts):>9} "
               f"{'seconds':>8}")
    for mode, r in results.items():
        click.echo(f"{mode:<12} {r['parsed_first_try']:>9.0%} {r['usable_first_try']:>9.0%} "
                   f"{r['usable_within_attempts']:>9.0%} {r['seconds']:>8}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(results, out)
    click.echo(json.dumps(results, indent=1))


def _first_messages(row: dict, cfg: PlanConfig, mode: str) -> list[dict]:
    return plan_messages(row["prompt"], row.get("required_words"), cfg, structured=mode != "none")


def _schema(row: dict, cfg: PlanConfig, mode: str) -> dict | None:
    return plan_schema(*paragraph_bounds(row.get("required_words"), cfg)) if mode != "none" else None


if __name__ == "__main__":
    main()
