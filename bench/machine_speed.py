"""Machine speed: this machine against the one that recorded a past default run, on identical work.

    python bench/machine_speed.py [--commit 689c9a8]

A wall time measured on one session's machine is not comparable with one measured on another: the 2-core
machines lent to sessions differ. This reruns one stage of a past default run, ``general`` (the embedded
llama.cpp model answering the general prompts), at that run's commit, with its params and an empty response
cache, and times it here. The work is identical when the completion tokens match the past run's metrics (the
seeded sampling makes them match); the script refuses a ratio otherwise. ``ratio`` = seconds here / seconds
there: above 1, this machine is slower at that work.

Results go to bench/results/machine_speed.json: ``commit``, ``stage``, ``seconds_there`` (from that commit's
bench/results/default_run.json), ``seconds_here``, ``completion_tokens`` and ``ratio``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import yaml
from common import ROOT, save_result


def _show(commit: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{path}"], check=True, capture_output=True,
                          text=True).stdout


REFERENCE_COMMIT = "689c9a8"


def measure(commit: str = REFERENCE_COMMIT) -> dict:
    """Rerun ``commit``'s ``general`` stage here (its params, an empty response cache) and time it against that
    commit's default run: ``commit``, ``stage``, ``seconds_there``, ``seconds_here``, ``completion_tokens`` and
    ``ratio`` (seconds here / seconds there). Raises if the work was not the same (other completion tokens)."""
    past = json.loads(_show(commit, "bench/results/default_run.json"))
    there = past["stages"]["general"]["seconds"]
    tokens_there = past["metrics"]["general"]["llm"]["completion_tokens"]
    with tempfile.TemporaryDirectory(prefix="machine-speed-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                       capture_output=True)
        try:
            params = yaml.safe_load((tree / "params.yaml").read_text(encoding="utf-8"))
            params["llm"]["cache_dir"] = str(Path(tmp) / "cache")  # empty: every call is paid
            (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
            out = Path(tmp) / "out"
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "stages.general", "--params", str(Path(tmp) / "params.yaml"),
                            "--output", str(out / "general.parquet"), "--failures", str(out / "failures.parquet"),
                            "--metrics", str(out / "general.json")], cwd=tree, check=True)
            here = time.perf_counter() - started
            tokens_here = json.loads((out / "general.json").read_text())["llm"]["completion_tokens"]
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
    if tokens_here != tokens_there:
        raise click.ClickException(f"not the same work: {tokens_here} completion tokens here, {tokens_there} there")
    return {"commit": commit, "stage": "general", "seconds_there": there, "seconds_here": round(here, 1),
            "completion_tokens": tokens_here, "ratio": round(here / there, 2)}


def reference_machine(seconds: float, before: dict, after: dict) -> dict:
    """A wall time measured between two ``measure()`` calls, put on the reference machine: both ratios, their
    mean, and ``estimated_seconds`` (``seconds`` over the mean: an estimate from one stage's LLM work)."""
    ratio = (before["ratio"] + after["ratio"]) / 2
    return {"commit": before["commit"], "ratio_before": before["ratio"], "ratio_after": after["ratio"],
            "ratio": round(ratio, 2), "estimated_seconds": round(seconds / ratio, 1)}


def describe(ref: dict, what: str) -> str:
    """One line for a ``reference_machine()`` result, ``what`` naming the timed work."""
    return (f"this machine: {ref['ratio_before']} x / {ref['ratio_after']} x the time of {ref['commit']}'s machine "
            f"before / after {what}; {what} there: about {ref['estimated_seconds']:.0f} s (estimate)")


@click.command(help=__doc__)
@click.option("--commit", default=REFERENCE_COMMIT, show_default=True,
              help="A commit whose bench/results/default_run.json holds the stage's time on its machine.")
def main(commit: str) -> None:
    result = measure(commit)
    save_result("machine_speed", result)
    click.echo(f"general at {commit}: {result['seconds_here']} s here, {result['seconds_there']} s on the machine of "
               f"its default run ({result['completion_tokens']} completion tokens both): ratio {result['ratio']}")


if __name__ == "__main__":
    main()
