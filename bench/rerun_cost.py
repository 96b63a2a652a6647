"""Rerun cost: what a forced rerun pays, and how fast a fully cached write replays.

\b
    python bench/rerun_cost.py                 # both parts (~45 s on 2 cores)
    python bench/rerun_cost.py --part b --instructions 100

Part A (target: 0 requests). In a temp DVC repo (dvc.yaml, stages/ and longwriter/ copied from this project,
``dvc init --no-scm``) whose params.yaml points the selector, the planner and the writer at the load server
(tests/fake_openai.py in its own process, zero latency) and keeps the response cache inside the repo, run
``dvc repro``, then ``dvc repro -f -s plan write`` (forces exactly plan and write; without ``-s`` a forced
repro of a target also reruns its upstream stages) and then ``dvc repro -f`` (every stage). Reports the
requests that reached the server during each forced rerun, from its request log, and their wall time.

Part B (target: <= 10 s, 0 requests). N instructions x S sections (default 250 x 40 = 10,000 sections) are
written once by ``run_write`` against the load server (zero latency, no slot limit, client max_concurrency
64) to fill a fresh cache, then written again with the same cache and settings: every call is a cache hit.
Reports the fill and replay times, the replay's calls and cache_hit_rate, and the requests that reached the
server during the replay.

Results go to bench/results/rerun_cost.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import yaml
from common import ROOT, LoadServer, Timer, save_result, sigterm_as_exit, table, write_workload

from longwriter.agentwrite.write import WriteConfig, run_write
from longwriter.llm import ClientSettings, ModelSpec, Sampling

REPLAY_TARGET_S = 10.0


def dvc(repo: Path, *args: str, timeout: float = 600) -> tuple[float, str]:
    started = time.perf_counter()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True,
                          timeout=timeout, env=env)
    seconds = time.perf_counter() - started
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise click.ClickException(f"dvc {' '.join(args)} failed ({proc.returncode}):\n{out[-4000:]}")
    return seconds, out


def ran_stages(out: str) -> list[str]:
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")]


TOPICS = ["a lighthouse keeper", "a city under snow", "the history of tea", "a robot gardener", "an old map",
          "the first day of school", "a river journey", "a lost letter", "the night market", "a mountain village"]
ZH_TOPICS = ["春天的校园", "一次难忘的旅行", "家乡的变化", "我的祖父", "城市的夜晚"]


def synthetic_pool(path: Path, n: int) -> None:
    """``n`` writing prompts, one in four Chinese, some stating a length."""
    with path.open("w", encoding="utf-8") as f:
        for k in range(n):
            if k % 4 == 3:
                topic = ZH_TOPICS[k % len(ZH_TOPICS)]
                prompt = f"请写一篇约{300 + 100 * (k % 5)}字的文章，题目是《{topic}》（第{k}篇）。"
            elif k % 2:
                prompt = f"Write a {400 + 100 * (k % 7)}-word story about {TOPICS[k % len(TOPICS)]} (number {k})."
            else:
                prompt = f"Write a detailed essay about {TOPICS[k % len(TOPICS)]}, version {k}."
            f.write(json.dumps({"id": f"p{k:04d}", "prompt": prompt, "source": "bench"}, ensure_ascii=False) + "\n")


def part_a(tmp: Path, pool: Path | None, pool_size: int, words: int) -> dict[str, Any]:
    repo = tmp / "repo"
    for name in ("longwriter", "stages"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    (repo / "data" / "pool").mkdir(parents=True)
    if pool is not None:
        shutil.copy(pool, repo / "data" / "pool" / "instructions.jsonl")
    else:
        synthetic_pool(repo / "data" / "pool" / "instructions.jsonl", pool_size)
    with LoadServer(tmp / "a-requests.jsonl", words=words) as srv:
        spec = {"provider": "openai", "base_url": srv.base_url, "model": "fake-model"}
        params = {
            "llm": {"cache_dir": ".llm-cache", "max_concurrency": 4, "request_timeout_s": 60, "max_retries": 2,
                    "max_cost_usd": None, "backoff_base_s": 0.01, "backoff_max_s": 0.05},
            "select": {"pools": ["data/pool/instructions.jsonl"], "per_lang": None, "min_estimated_words": 1,
                       "max_required_words": None, "selector": spec},
            "plan": {"min_paragraphs": 2, "max_paragraphs": 4, "min_words": 60, "max_words": 150,
                     "generator": spec},
            "write": {"max_continuations": 1, "generator": spec},
            "postprocess": {"min_words_ratio": 0.3, "max_repetition": 0.5},
        }
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        dvc(repo, "init", "--no-scm", "-q")
        steps = []
        for label, args in (("dvc repro", ["repro"]),
                            ("dvc repro -f -s plan write", ["repro", "-f", "-s", "plan", "write"]),
                            ("dvc repro -f", ["repro", "-f"])):
            before = srv.count()
            seconds, out = dvc(repo, *args)
            time.sleep(0.1)
            llm = {stage: json.loads((repo / "metrics" / f"{stage}.json").read_text())["llm"]
                   for stage in ("select", "plan", "write")}
            steps.append({
                "command": label, "stages_run": ran_stages(out), "seconds": round(seconds, 2),
                "requests": srv.count() - before,
                "calls": {s: m["calls"] for s, m in llm.items()},
                "sent_calls": {s: m["sent_calls"] for s, m in llm.items()},
                "cache_hit_rate": {s: m["cache_hit_rate"] for s, m in llm.items()},
            })
    forced = steps[1:]
    return {
        "pool": str(pool) if pool is not None else f"synthetic, {pool_size} prompts",
        "selected": json.loads((repo / "metrics" / "select.json").read_text())["selected"],
        "sections": json.loads((repo / "metrics" / "write.json").read_text())["sections"],
        "steps": steps,
        "target_requests": 0,
        "pass": all(s["requests"] == 0 for s in forced) and set(forced[0]["stages_run"]) == {"plan", "write"},
    }


def part_b(tmp: Path, n: int, sections: int, words: int, min_budget: int, max_budget: int, concurrency: int,
           mode: str, seed: int) -> dict[str, Any]:
    load = write_workload(tmp / "b-in", n, min_sections=sections, max_sections=sections, min_budget=min_budget,
                          max_budget=max_budget, seed=seed)
    with LoadServer(tmp / "b-requests.jsonl", words=words, seed=seed) as srv:
        cfg = WriteConfig(mode=mode, max_continuations=0,  # type: ignore[arg-type]
                          generator=ModelSpec(provider="openai", base_url=srv.base_url, model="fake-model"),
                          sampling=Sampling(temperature=0.7, max_tokens=1024))
        settings = ClientSettings(cache_dir=str(tmp / "b-cache"), max_concurrency=concurrency,
                                  request_timeout_s=600.0)

        def write(tag: str) -> tuple[float, dict[str, Any], int]:
            before = srv.count()
            out = tmp / f"b-{tag}"
            with Timer() as t:
                m = run_write(load.instructions, load.plans, out / "sections.parquet", out / "failures.parquet",
                              out / "metrics.json", cfg, settings)
            time.sleep(0.1)
            return t.seconds, m, srv.count() - before

        fill_s, fill, fill_requests = write("fill")
        replay_s, replay, replay_requests = write("replay")
    same = (tmp / "b-fill" / "sections.parquet").exists() and _same_sections(tmp / "b-fill", tmp / "b-replay")
    return {
        "mode": mode,
        "instructions": n,
        "sections": load.sections,
        "words_per_answer": words,
        "client_max_concurrency": concurrency,
        "fill_seconds": round(fill_s, 2),
        "fill_requests": fill_requests,
        "fill_sections_per_s": round(fill["sections"] / fill_s, 1),
        "fill_calls": fill["llm"]["calls"],
        "fill_cache_hit_rate": fill["llm"]["cache_hit_rate"],
        "fill_failed": fill["failed"],
        "replay_seconds": round(replay_s, 2),
        "replay_sections_per_s": round(replay["sections"] / replay_s, 1),
        "replay_calls": replay["llm"]["calls"],
        "replay_cache_hit_rate": replay["llm"]["cache_hit_rate"],
        "replay_requests": replay_requests,
        "replay_sections": replay["sections"],
        "replay_identical": same,
        "target_seconds": REPLAY_TARGET_S,
        "pass": replay_s <= REPLAY_TARGET_S and replay_requests == 0 and replay["llm"]["cache_hit_rate"] == 1.0,
    }


def _same_sections(a: Path, b: Path) -> bool:
    import polars as pl
    x = pl.read_parquet(a / "sections.parquet").drop("latency_s")
    y = pl.read_parquet(b / "sections.parquet").drop("latency_s")
    return x.equals(y)


@click.command(help=__doc__)
@click.option("--part", type=click.Choice(["a", "b", "both"]), default="both", show_default=True)
@click.option("--pool", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Part A: an instruction pool (JSONL), e.g. tests/fixtures/tiny_pool.jsonl "
                   "[default: a synthetic pool of --pool-size prompts].")
@click.option("--pool-size", default=40, show_default=True, help="Part A: prompts in the synthetic pool.")
@click.option("--instructions", "n", default=250, show_default=True, help="Part B: instructions.")
@click.option("--sections", default=40, show_default=True, help="Part B: sections per instruction.")
@click.option("--words", default=100, show_default=True, help="Words per server answer.")
@click.option("--min-budget", default=100, show_default=True, help="Part B: smallest section budget (words).")
@click.option("--max-budget", default=250, show_default=True, help="Part B: largest section budget (words).")
@click.option("--concurrency", default=64, show_default=True, help="Part B: client max_concurrency.")
@click.option("--mode", type=click.Choice(["sequential", "parallel"]), default="sequential", show_default=True,
              help="Part B: write mode.")
@click.option("--seed", default=0, show_default=True)
@click.option("--name", default="rerun_cost", show_default=True, help="Results file bench/results/NAME.json.")
def main(part: str, pool: Path | None, pool_size: int, n: int, sections: int, words: int, min_budget: int,
         max_budget: int, concurrency: int, mode: str, seed: int, name: str) -> None:
    started = time.perf_counter()
    result: dict[str, Any] = {}
    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="rerun-cost-") as tmp:
        if part in ("a", "both"):
            click.echo("part A: dvc repro, then forced reruns ...", err=True)
            result["a"] = part_a(Path(tmp), pool, pool_size, words)
        if part in ("b", "both"):
            click.echo(f"part B: filling the cache with {n * sections} sections, then replaying ...", err=True)
            result["b"] = part_b(Path(tmp), n, sections, words, min_budget, max_budget, concurrency, mode, seed)
    if "a" in result:
        a = result["a"]
        click.echo(f"\nPart A ({a['pool']}): {a['selected']} instructions selected, {a['sections']} sections "
                   "written")
        click.echo(table(["command", "stages run", "requests", "seconds", "calls (sel/plan/write)", "pass"],
                         [[s["command"], ",".join(s["stages_run"]) or "-", s["requests"], s["seconds"],
                           "/".join(str(s["calls"][k]) if k in s["stages_run"] else "-"
                                    for k in ("select", "plan", "write")),
                           "" if i == 0 else ("PASS" if s["requests"] == 0 else "FAIL")]
                          for i, s in enumerate(a["steps"])]))
    if "b" in result:
        b = result["b"]
        click.echo(f"\nPart B: {b['sections']} sections ({b['instructions']} x {sections}, {b['mode']})")
        click.echo(table(["run", "seconds", "sections/s", "calls", "cache_hit_rate", "requests", "pass"],
                         [["fill", b["fill_seconds"], b["fill_sections_per_s"], b["fill_calls"],
                           b["fill_cache_hit_rate"], b["fill_requests"], ""],
                          ["replay", b["replay_seconds"], b["replay_sections_per_s"], b["replay_calls"],
                           b["replay_cache_hit_rate"], b["replay_requests"],
                           "PASS" if b["pass"] else "FAIL"]]))
        click.echo(f"replay output identical to the fill's: {b['replay_identical']}; target <= "
                   f"{REPLAY_TARGET_S:g} s and 0 requests")
    result["pass"] = all(r["pass"] for k, r in result.items() if k in ("a", "b"))
    result["seconds"] = round(time.perf_counter() - started, 1)
    click.echo(f"results: {save_result(name, result)} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
