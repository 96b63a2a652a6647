"""The default pipeline, timed: ``dvc repro`` in a fresh clone with empty caches, stage by stage.

\b
    python bench/default_run.py                # about 20 minutes on 2 cores (the embedded model, no GPU)
    python bench/default_run.py --keep /tmp/run   # keep the clone (its outputs and response cache)

Clones this repository's HEAD (committed files only: the run measures what a fresh ``git clone`` gets) into a
temporary directory, so the DVC cache, the run cache and the LLM response cache (``.llm-cache/``) start empty,
and runs ``python -m dvc repro`` there with this interpreter first on PATH. Each stage's wall time runs from
DVC's ``Running stage '<name>'`` line to the next one (or to the end of the run), so it includes DVC's own
work for the stage (hashing, saving outputs). Then it forces the AgentWrite part again with the response cache
that run filled, ``dvc repro -f postprocess`` (select, plan, write and postprocess), and records its wall
time and, from the clone's metrics, each stage's LLM calls, cache hits and paid calls.

Results go to bench/results/default_run.json: ``seconds`` (the whole ``dvc repro``), ``stages.<name>.seconds``,
``forced_rerun.seconds`` and ``forced_rerun.llm.<stage>.{calls,cache_hits,sent_calls}``, plus the commit and
each stage's metrics from the run (``metrics.<stage>``).

Wall times of different sessions' 2-core machines are not comparable (the same work has taken more than twice
as long on one as on another: bench/results/machine_speed.json), so the run is bracketed by
``bench/machine_speed.py``'s measurement, right before and right after it (about 5 minutes together;
``--no-machine-speed`` skips it): ``reference_machine`` holds both ratios to the machine of commit 689c9a8's
default run, their mean, and ``estimated_seconds``, the run's seconds divided by that mean: an estimate of the
same run on that machine, from one stage's LLM work timed on both.
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
from common import ROOT, save_result, sigterm_as_exit, table
from machine_speed import REFERENCE_COMMIT, describe, reference_machine
from machine_speed import measure as measure_machine

AGENTWRITE_LLM_STAGES = ("select", "plan", "write")


def _env() -> dict[str, str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONPATH", None)  # the stages import the clone's longwriter (python -m from the clone's root)
    return env


def timed_repro(repo: Path, *args: str, timeout_s: float) -> tuple[float, list[tuple[str, float]], str]:
    """Run ``dvc repro ARGS`` in ``repo``, streaming its output; wall seconds, (stage, start offset) in the
    order DVC ran them, and the output."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *args], cwd=repo, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    starts: list[tuple[str, float]] = []
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            lines.append(line)
            click.echo(line, nl=False, err=True)
            if line.startswith("Running stage '"):
                starts.append((line.split("'")[1], time.perf_counter() - started))
            if time.perf_counter() - started > timeout_s:
                raise click.ClickException(f"dvc repro {' '.join(args)} ran past {timeout_s} s")
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
    seconds = time.perf_counter() - started
    out = "".join(lines)
    if proc.returncode != 0:
        raise click.ClickException(f"dvc repro {' '.join(args)} failed ({proc.returncode}):\n{out[-4000:]}")
    return seconds, starts, out


def stage_seconds(starts: list[tuple[str, float]], total: float) -> dict[str, float]:
    ends = [t for _, t in starts[1:]] + [total]
    return {name: round(end - t, 1) for (name, t), end in zip(starts, ends, strict=True)}


def read_metrics(repo: Path) -> dict[str, Any]:
    return {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted((repo / "metrics").glob("*.json"))}


@click.command(help=__doc__)
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Clone into this (new) directory and keep it, instead of a temporary one.")
@click.option("--timeout-min", default=120.0, show_default=True, help="Give up on a dvc repro after this long.")
@click.option("--name", default="default_run", show_default=True, help="Results file bench/results/NAME.json.")
@click.option("--machine-speed/--no-machine-speed", default=True, show_default=True,
              help=f"Time commit {REFERENCE_COMMIT}'s general stage before and after the run (bench/machine_speed.py).")
def main(keep: Path | None, timeout_min: float, name: str, machine_speed: bool) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.strip()
    if dirty:
        click.echo("WARNING: uncommitted changes are not part of the run (it clones HEAD)", err=True)
    before = measure_machine() if machine_speed else None
    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="default-run-") as tmp:
        repo = keep if keep is not None else Path(tmp) / "repo"
        subprocess.run(["git", "clone", "-q", "--no-local", str(ROOT), str(repo)], check=True)
        for cache in (repo / ".llm-cache", repo / ".dvc" / "cache"):
            shutil.rmtree(cache, ignore_errors=True)  # never in a clone; made sure of
        seconds, starts, _ = timed_repro(repo, timeout_s=timeout_min * 60)
        stages = {s: {"seconds": t} for s, t in stage_seconds(starts, seconds).items()}
        metrics = read_metrics(repo)
        forced_s, forced_starts, _ = timed_repro(repo, "-f", "postprocess", timeout_s=timeout_min * 60)
        forced_metrics = read_metrics(repo)
    after = measure_machine() if machine_speed else None
    llm = {s: {k: forced_metrics[s]["llm"][k] for k in ("calls", "cache_hits", "sent_calls")}
           for s in AGENTWRITE_LLM_STAGES}
    result = {
        "commit": commit,
        "uncommitted_changes_left_out": bool(dirty),
        "command": "dvc repro",
        "seconds": round(seconds, 1),
        "stages": stages,
        "forced_rerun": {"command": "dvc repro -f postprocess", "seconds": round(forced_s, 1),
                         "stages_run": [s for s, _ in forced_starts], "llm": llm},
        "metrics": metrics,
    }
    if before is not None and after is not None:
        result["reference_machine"] = reference_machine(seconds, before, after)
    click.echo(table(["stage", "seconds"], [[s, v["seconds"]] for s, v in stages.items()] + [["total", seconds]]))
    click.echo(f"forced rerun of the AgentWrite part: {forced_s:.1f} s; LLM calls {json.dumps(llm)}")
    if "reference_machine" in result:
        click.echo(describe(result["reference_machine"], "the run"))
    click.echo(f"results: {save_result(name, result)}")


if __name__ == "__main__":
    main()
