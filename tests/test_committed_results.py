"""The committed results are those of the committed code and params.

``dvc.lock`` records, per stage, the hash of every dep and the params it read when ``metrics/`` and ``plots/``
were last written. A stage whose code or params changed since then has stale results on main, and
``dvc metrics diff main`` would compare against figures the code no longer produces. Outputs merely absent
(a fresh clone has no ``data/*.parquet`` or ``models/``) are not a change of code or params.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# dvc status's words for a dep that is missing rather than changed: an upstream output a fresh clone lacks
ABSENT = {"deleted", "not in cache"}


def stale_stages(status: dict) -> dict[str, list[str]]:
    """Stages whose deps or params changed since dvc.lock, each with what changed (from ``dvc status --json``)."""
    stale: dict[str, list[str]] = {}
    for stage, items in status.items():
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            for path, change in (item.get("changed deps") or {}).items():
                if isinstance(change, dict):  # a params file: {key: "modified" | "new" | "deleted"}
                    stale.setdefault(stage, []).extend(f"{path}:{key} {how}" for key, how in change.items())
                elif change not in ABSENT:
                    stale.setdefault(stage, []).append(f"{path} {change}")
        if "changed command" in json.dumps(items):
            stale.setdefault(stage, []).append("command changed")
    return stale


def test_dvc_lock_matches_the_committed_code_and_params() -> None:
    out = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    stale = stale_stages(json.loads(out or "{}"))
    assert not stale, (
        "dvc.lock is stale: rerun `dvc repro` and commit dvc.lock, metrics/ and plots/; stages and what changed:\n"
        + "\n".join(f"  {stage}: {', '.join(changes)}" for stage, changes in sorted(stale.items())))


def test_absent_outputs_are_not_stale_but_changed_code_and_params_are() -> None:
    status = {
        "plan": [{"changed deps": {"data/selected.parquet": "deleted"}}, {"changed outs": {"data/plans.parquet":
                                                                                             "deleted"}}],
        "write": [{"changed deps": {"longwriter/agentwrite/write.py": "modified"}}],
        "sft": [{"changed deps": {"params.yaml": {"sft.epochs": "modified"}}}],
        "ruler": ["changed command"],
    }
    assert stale_stages(status) == {"write": ["longwriter/agentwrite/write.py modified"],
                                    "sft": ["params.yaml:sft.epochs modified"], "ruler": ["command changed"]}
