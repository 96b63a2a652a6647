"""The test suite, timed: what ``make test`` runs after installing, with each test's share.

\b
    python bench/test_suite.py        # 6-10 minutes on 2 cores
    python bench/test_suite.py -- -x  # pass pytest options after --

Runs ``python -m pytest`` in this checkout with this interpreter first on PATH (as ``make test`` does), with
a JUnit XML report in a temporary directory. pytest's JUnit ``time`` of a test is its setup, call and
teardown together, so a test that first asks for a shared fixture (the end-to-end pipeline run) carries that
fixture's time.

Results go to bench/results/test_suite.json: ``seconds`` (wall time of the pytest process), ``tests``
(passed, failed, errors, skipped), ``slowest`` (the 15 longest tests: id and seconds), ``cpus``, the commit and
pytest's exit code. Like ``bench/default_run.py``, the run is bracketed by ``bench/machine_speed.py``'s
measurement (``--no-machine-speed`` skips it): ``reference_machine`` holds this machine's two ratios to the
machine of commit 689c9a8's default run and ``estimated_seconds``, the suite's time there (an estimate).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import click
from common import ROOT, save_result, sigterm_as_exit, table
from machine_speed import REFERENCE_COMMIT, describe, reference_machine
from machine_speed import measure as measure_machine


def read_junit(path: Path) -> tuple[dict[str, int], list[tuple[str, float]]]:
    """Counts per outcome and (test id, seconds) for every test case of a JUnit XML report."""
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    times: list[tuple[str, float]] = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
        times.append((name, float(case.get("time") or 0.0)))
        kinds = {child.tag for child in case}
        outcome = ("failed" if "failure" in kinds else "errors" if "error" in kinds
                   else "skipped" if "skipped" in kinds else "passed")
        counts[outcome] += 1
    return counts, times


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--name", default="test_suite", show_default=True, help="Results file bench/results/NAME.json.")
@click.option("--machine-speed/--no-machine-speed", default=True, show_default=True,
              help=f"Time commit {REFERENCE_COMMIT}'s general stage before and after (bench/machine_speed.py).")
def main(pytest_args: tuple[str, ...], name: str, machine_speed: bool) -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    env = {**os.environ, "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    before = measure_machine() if machine_speed else None
    with sigterm_as_exit(), tempfile.TemporaryDirectory(prefix="test-suite-") as tmp:
        report = Path(tmp) / "junit.xml"
        started = time.perf_counter()
        rc = subprocess.run([sys.executable, "-m", "pytest", f"--junitxml={report}", *pytest_args],
                            cwd=ROOT, env=env).returncode
        seconds = time.perf_counter() - started
        counts, times = read_junit(report)
    after = measure_machine() if machine_speed else None
    slowest = sorted(times, key=lambda t: -t[1])[:15]
    result = {"commit": commit, "command": "python -m pytest " + " ".join(pytest_args), "exit_code": rc,
              "cpus": os.cpu_count(), "seconds": round(seconds, 1), "tests": counts,
              "slowest": [{"test": t, "seconds": round(s, 1)} for t, s in slowest]}
    if before is not None and after is not None:
        result["reference_machine"] = reference_machine(seconds, before, after)
        click.echo(describe(result["reference_machine"], "the suite"))
    click.echo(table(["test", "seconds"], [[t, round(s, 1)] for t, s in slowest] + [["total (wall)", seconds]]))
    click.echo(f"results: {save_result(name, result)}")
    sys.exit(rc)


if __name__ == "__main__":
    main()
