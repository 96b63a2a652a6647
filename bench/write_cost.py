"""The true price of long writing: what sequential write sends for 10,000-word answers, against its estimate.

\b
    python bench/write_cost.py                    # the three runs below (~1 min on 2 cores)
    python bench/write_cost.py --n 100 --history-words 4000

Sequential AgentWrite re-sends the instruction, the plan and all earlier text with every paragraph, so its
prompt tokens grow with the square of the answer's length. N instructions (default 50), each planned as 20
paragraphs of 500 words (10,000 words: synthetic plans written by this script), are written by the real
``run_write`` against the load server (tests/fake_openai.py in its own process: zero latency, every answer 500
words, so each paragraph comes out at its budget) with its prefix cache on, rounding as OpenAI does (a prefix of
at least 1,024 tokens, cached in steps of 128; prefixes kept every 16 words, which bounds the server's memory).
Three runs, each in a fresh child process (so its peak RSS is the run's own) with a fresh server and response
cache, client max_concurrency 8:

\b
    sequential                 the paper's mode, the whole history re-sent
    sequential_history_2000    write.history_words 2000: only the last 2,000 words of history re-sent
    parallel                   no history (reference)

(--history-words changes the second run's window.) For each: prompt tokens per completion token, the prompt,
cached prompt and completion tokens the server reported (summed by the client's metrics, checked against the
server's log) against ``python -m stages.write --estimate``'s figures for the same plans (its defaults: 4/3
tokens per word, OpenAI's caching rule), dollars at the prices below (the client's cost_usd, cached tokens at
the cached-input price; and what every prompt token at the input price would cost), peak RSS of the writing
process and wall seconds. Target: the estimate within 5 % of each measured count. history_words bounds the
quadratic term; what it costs in coherence (each paragraph no longer sees the text before the window) is
untested here. Results: bench/results/write_cost.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from common import LoadServer, Timer, save_result, sigterm_as_exit, table, write_workload

from longwriter.agentwrite.estimate import estimate_files
from longwriter.agentwrite.write import WriteConfig, run_write
from longwriter.llm import ClientSettings, ModelSpec, Sampling

# gpt-4o's list prices when this was written, US dollars per million tokens: input, cached input, output
PRICES = {"price_input_per_mtok": 2.5, "price_cached_input_per_mtok": 1.25, "price_output_per_mtok": 10.0}
OPENAI_CACHE = (128, 1024, 16)  # the load server's prefix cache: step and minimum in tokens, block in words
MAX_TOKENS = 1024
TARGET_ERROR = 0.05  # the estimate's largest relative error on prompt, cached and completion tokens
COHERENCE = ("history_words bounds the quadratic prompt term; what it costs in coherence (each paragraph no longer "
             "sees the text before the window) is untested")


def _config(mode: str, history_words: int | None, base_url: str) -> WriteConfig:
    return WriteConfig(mode=mode, history_words=history_words, max_continuations=0,  # type: ignore[arg-type]
                       generator=ModelSpec(provider="openai", base_url=base_url, model="fake-model", **PRICES),
                       sampling=Sampling(temperature=0.7, max_tokens=MAX_TOKENS))


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """One run, in this (child) process: the write, its counts and the server's, peak RSS, seconds."""
    work = Path(case["dir"])
    with LoadServer(work / "requests.jsonl", words=case["words"], prefix_cache=OPENAI_CACHE,
                    seed=case["seed"]) as srv:
        cfg = _config(case["mode"], case["history_words"], srv.base_url)
        settings = ClientSettings(cache_dir=str(work / "cache"), max_concurrency=case["concurrency"],
                                  request_timeout_s=600.0)
        with Timer() as t:
            metrics = run_write(case["instructions"], case["plans"], work / "sections.parquet",
                                work / "failures.parquet", work / "metrics.json", cfg, settings)
        time.sleep(0.2)  # the log's last lines
        log = [e for e in srv.entries() if e["outcome"] == "ok"]
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"metrics": metrics, "seconds": t.seconds, "peak_rss_mib": int(status["VmHWM"].split()[0]) / 1024,
            "server": {k: sum(e.get(k, 0) for e in log) for k in ("prompt_tokens", "cached_tokens",
                                                                    "completion_tokens")},
            "server_requests": len(log)}


def _child(case: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True,
                         check=False)
    if out.returncode != 0:
        raise RuntimeError(f"case {case['name']} failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rel(estimated: int, measured: int) -> float | None:
    return round((estimated - measured) / measured, 4) if measured else None


def summarize(name: str, case: dict[str, Any], child: dict[str, Any], estimate: dict[str, Any],
              n: int) -> dict[str, Any]:
    llm = child["metrics"]["llm"]
    measured = {"prompt_tokens": llm["prompt_tokens"], "cached_prompt_tokens": llm["cached_prompt_tokens"],
                "completion_tokens": llm["completion_tokens"]}
    est = estimate[case["mode"]]
    plain = (llm["prompt_tokens"] * PRICES["price_input_per_mtok"]
             + llm["completion_tokens"] * PRICES["price_output_per_mtok"]) / 1e6
    server = child["server"]
    return {
        "name": name, "mode": case["mode"], "history_words": case["history_words"],
        "requests": llm["sent_calls"], "written": child["metrics"]["written"], "failed": child["metrics"]["failed"],
        "words": child["metrics"]["words"],
        "measured": measured,
        "estimate": {k: est[k] for k in measured},
        "estimate_error": {k: _rel(est[k], measured[k]) for k in measured},
        "server_log_agrees": (server["prompt_tokens"], server["cached_tokens"], server["completion_tokens"])
        == (measured["prompt_tokens"], measured["cached_prompt_tokens"], measured["completion_tokens"]),
        "prompt_tokens_per_completion_token": round(llm["prompt_tokens"] / llm["completion_tokens"], 3),
        "cached_share": round(llm["cached_prompt_tokens"] / llm["prompt_tokens"], 4),
        "cost_usd": round(llm["cost_usd"], 4),
        "cost_usd_without_prefix_cache": round(plain, 4),
        "usd_per_sample": round(llm["cost_usd"] / n, 4),
        "usd_per_sample_without_prefix_cache": round(plain / n, 4),
        "estimate_usd": est["usd"],
        "peak_rss_mib": round(child["peak_rss_mib"], 1),
        "seconds": round(child["seconds"], 2),
    }


@click.command(help=__doc__)
@click.option("--n", default=50, show_default=True, help="Instructions (each a 10,000-word plan).")
@click.option("--sections", default=20, show_default=True, help="Paragraphs per plan.")
@click.option("--words", default=500, show_default=True, help="Words per paragraph (budget and server answer).")
@click.option("--history-words", type=int, default=2000, show_default=True,
              help="write.history_words of the bounded sequential run.")
@click.option("--concurrency", default=8, show_default=True, help="Client max_concurrency.")
@click.option("--seed", default=0, show_default=True)
@click.option("--name", default="write_cost", show_default=True, help="Results file bench/results/NAME.json.")
@click.option("--case", "case_json", default=None, hidden=True, help="(internal) run one case, print JSON.")
def main(n: int, sections: int, words: int, history_words: int, concurrency: int, seed: int, name: str,
         case_json: str | None) -> None:
    if case_json is not None:
        click.echo(json.dumps(run_case(json.loads(case_json))))
        return
    started = time.perf_counter()
    runs = []
    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="write-cost-") as tmp:
        load = write_workload(Path(tmp) / "in", n, min_sections=sections, max_sections=sections, min_budget=words,
                              max_budget=words, seed=seed)
        cases = [("sequential", "sequential", None), (f"sequential_history_{history_words}", "sequential",
                                                      history_words), ("parallel", "parallel", None)]
        for label, mode, hw in cases:
            click.echo(f"running {label} ...", err=True)
            case = {"name": label, "mode": mode, "history_words": hw, "dir": str(Path(tmp) / label),
                    "instructions": str(load.instructions), "plans": str(load.plans), "words": words,
                    "concurrency": concurrency, "seed": seed}
            child = _child(case)
            with Timer() as t:
                # the estimate the stage's --estimate prints, for the params of this run (its default rule)
                estimate = estimate_files(load.instructions, load.plans, _config(mode, hw, "http://unused/v1"),
                                          modes=(mode,))  # type: ignore[arg-type]
            run = summarize(label, case, child, estimate, n)
            run["estimate_seconds"] = round(t.seconds, 2)
            runs.append(run)
    headers = ["run", "requests", "prompt/completion", "cached share", "prompt est/meas", "cached est/meas",
               "USD/sample", "USD/sample uncached", "peak RSS MiB", "seconds"]
    rows = [[r["name"], r["requests"], r["prompt_tokens_per_completion_token"], r["cached_share"],
             f"{r['estimate']['prompt_tokens']:,}/{r['measured']['prompt_tokens']:,}",
             f"{r['estimate']['cached_prompt_tokens']:,}/{r['measured']['cached_prompt_tokens']:,}",
             r["usd_per_sample"], r["usd_per_sample_without_prefix_cache"], r["peak_rss_mib"], r["seconds"]]
            for r in runs]
    click.echo(table(headers, rows))
    result = {
        "params": {"instructions": n, "sections": sections, "words_per_section": words,
                   "planned_words_per_sample": sections * words, "history_words": history_words,
                   "client_max_concurrency": concurrency, "seed": seed, "prices_per_mtok": PRICES,
                   "server_prefix_cache": dict(zip(("step_tokens", "min_tokens", "block_words"), OPENAI_CACHE,
                                                   strict=True))},
        "runs": runs,
        "max_abs_estimate_error": max(abs(v) for r in runs for v in r["estimate_error"].values() if v is not None),
        "target_max_estimate_error": TARGET_ERROR,
        "coherence": COHERENCE,
        "seconds": round(time.perf_counter() - started, 1),
    }
    result["pass"] = result["max_abs_estimate_error"] <= TARGET_ERROR and all(r["server_log_agrees"] for r in runs)
    click.echo(f"estimate within {TARGET_ERROR:.0%} of measured (and the client's counts the server's): "
               f"{'PASS' if result['pass'] else 'FAIL'}; {COHERENCE}.")
    click.echo(f"results: {save_result(name, result)} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
