"""How many Batch API jobs write submits, against the fake server's files and batches endpoints.

\b
    python bench/batch_rounds.py                 # 200 instructions of 2-8 paragraphs (~1 min on 2 cores)
    python bench/batch_rounds.py --n 1000 --max-sections 20

N instructions (seeded) with plans of ``--min-sections``..``--max-sections`` paragraphs are written by
``run_write`` through a ``batch: true`` spec, in each mode, on a fresh fake server and response cache:

- sequential, answers as long as their budgets: expected K batches, K the longest plan (round k = paragraph k
  of every plan that has one);
- parallel, the same: expected 1 batch;
- sequential, answers of 40 words for budgets of 40-80: paragraphs under 60% of their budget get a
  "continue" call in the next round, so expected: the longest chain of calls of one instruction (its
  paragraphs plus their continuations);
- sequential with ``--fault-rate`` of lines failing: a failed line is asked again in the next round, so its
  instruction lags one round per failure (no expected figure: it depends on where the failures fall).

Also reported: each round's size, the lines retried, and the dollars at example prices (gpt-4o's list prices)
at the batch price against the same tokens at the direct price. Results go to bench/results/batch_rounds.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import polars as pl
from common import save_result, table, write_workload

from longwriter.agentwrite.write import WriteConfig, run_write
from longwriter.llm import ClientSettings, ModelSpec

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from fake_openai import FakeOpenAIServer  # noqa: E402

PRICES = {"price_input_per_mtok": 2.5, "price_output_per_mtok": 10.0}


def run_case(mode: str, n: int, min_sections: int, max_sections: int, words: int, fault_rate: float, seed: int
             ) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        work = write_workload(d / "in", n, min_sections=min_sections, max_sections=max_sections, min_budget=40,
                              max_budget=80, seed=seed)
        faults = {"500": fault_rate} if fault_rate else None
        with FakeOpenAIServer(words=words, batch_polls=1, faults=faults, seed=seed) as srv:
            spec = ModelSpec(provider="openai", base_url=srv.base_url, model="fake-model", batch=True, **PRICES)
            settings = ClientSettings(cache_dir=str(d / "cache"), batch_gather_s=0.2, batch_poll_s=0.05,
                                      max_retries=5)
            started = time.perf_counter()
            m = run_write(work.instructions, work.plans, d / "s.parquet", d / "f.parquet", d / "m.json",
                          WriteConfig(mode=mode, generator=spec), settings)
            wall = time.perf_counter() - started
            sizes = [b["request_counts"]["total"] for b in sorted(srv.batches.values(), key=lambda b: b["id"])]
        sections = pl.read_parquet(d / "s.parquet")
        chains = sections.group_by("instruction_id").agg((pl.col("continuations") + 1).sum().alias("calls"))
        rewritten = bool((sections["attempts"] > 1).any())
        llm = m["llm"]
        direct = (llm["prompt_tokens"] * PRICES["price_input_per_mtok"]
                  + llm["completion_tokens"] * PRICES["price_output_per_mtok"]) / 1e6
        longest = max(len(b) for b in work.budgets.values())
        expected = None
        if not fault_rate and not rewritten:
            expected = int(chains["calls"].max()) if mode == "sequential" else 1 + int(m["continuation_calls"] > 0)
        return {"mode": mode, "answer_words": words, "fault_rate": fault_rate, "instructions": n,
                "sections": sum(len(b) for b in work.budgets.values()), "longest_plan": longest,
                "batches": len(sizes), "expected_batches": expected, "batch_sizes": sizes,
                "lines_retried": llm["retries"],
                "written": m["written"], "failed": m["failed"], "continuation_calls": m["continuation_calls"],
                "cost_usd_batch": llm["cost_usd"], "cost_usd_direct_price": round(direct, 6),
                "wall_s": round(wall, 2)}


@click.command()
@click.option("--n", default=200, show_default=True, help="instructions")
@click.option("--min-sections", default=2, show_default=True)
@click.option("--max-sections", default=8, show_default=True)
@click.option("--fault-rate", default=0.02, show_default=True, help="share of lines failing, in the third case")
@click.option("--seed", default=0, show_default=True)
def main(n: int, min_sections: int, max_sections: int, fault_rate: float, seed: int) -> None:
    """Batches submitted by write in each mode (see the module docstring)."""
    cases = [run_case("sequential", n, min_sections, max_sections, 80, 0.0, seed),
             run_case("parallel", n, min_sections, max_sections, 80, 0.0, seed),
             run_case("sequential", n, min_sections, max_sections, 40, 0.0, seed),
             run_case("sequential", n, min_sections, max_sections, 80, fault_rate, seed)]
    print(table(["mode", "words", "faults", "sections", "K", "continued", "batches", "expected", "retried",
                 "failed", "$ batch", "$ direct", "wall s"],
                [[c["mode"], c["answer_words"], c["fault_rate"], c["sections"], c["longest_plan"],
                  c["continuation_calls"], c["batches"], c["expected_batches"], c["lines_retried"], c["failed"],
                  c["cost_usd_batch"],
                  c["cost_usd_direct_price"], c["wall_s"]] for c in cases]))
    path = save_result("batch_rounds", {"cases": cases, "prices_per_mtok": PRICES})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
