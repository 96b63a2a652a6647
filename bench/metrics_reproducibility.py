"""How reproducible are the default run's result figures? This run's metrics/ against another run's.

The reference is the metrics another default run wrote: by default the ones `bench/default_run.py` recorded in
`bench/results/default_run.json` (a fresh clone, empty caches, another session's machine). Timing figures are
split off both sides first (`longwriter.files.split_metrics`: they change on every run and live in
metrics/timings/), so what is compared is what `dvc metrics diff` compares. Prints the figures that differ and
writes bench/results/metrics_reproducibility.json.

    python bench/metrics_reproducibility.py [--reference FILE] [--metrics DIR]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from longwriter.files import split_metrics, write_json  # noqa: E402


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested metrics as ``{"a.b.c": leaf}``."""
    if not isinstance(obj, dict):
        return {prefix: obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def compare(reference: dict[str, dict], metrics_dir: Path) -> dict[str, Any]:
    same, differ, one_sided = 0, [], []
    for path in sorted(metrics_dir.glob("*.json")):
        stage = path.stem
        new = flatten(split_metrics(json.loads(path.read_text(encoding="utf-8")))[0])
        old = flatten(split_metrics(reference.get(stage, {}))[0])
        for key in sorted(set(new) | set(old)):
            if key not in new or key not in old:
                one_sided.append({"figure": f"{stage}.{key}", "reference": old.get(key), "this_run": new.get(key)})
            elif new[key] == old[key]:
                same += 1
            else:
                differ.append({"figure": f"{stage}.{key}", "reference": old[key], "this_run": new[key]})
    return {"figures_equal": same, "figures_differing": len(differ), "figures_on_one_side": len(one_sided),
            "differing": differ, "one_sided": one_sided}


@click.command(help=__doc__)
@click.option("--reference", default=str(ROOT / "bench/results/default_run.json"), show_default=True,
              help="A bench/default_run.py result file (its 'metrics'), or a directory of metrics JSON.")
@click.option("--metrics", "metrics_dir", default=str(ROOT / "metrics"), show_default=True)
@click.option("--out", default=str(ROOT / "bench/results/metrics_reproducibility.json"), show_default=True)
def main(reference: str, metrics_dir: str, out: str) -> None:
    ref_path = Path(reference)
    if ref_path.is_dir():
        ref = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in ref_path.glob("*.json")}
        source = str(ref_path)
    else:
        data = json.loads(ref_path.read_text(encoding="utf-8"))
        ref, source = data["metrics"], f"{ref_path.relative_to(ROOT)} (commit {data.get('commit', '?')})"
    result = {"reference": source, "metrics": str(Path(metrics_dir).resolve().relative_to(ROOT)),
              **compare(ref, Path(metrics_dir))}
    for row in result["differing"]:
        print(f"differs  {row['figure']}: {row['reference']} -> {row['this_run']}")
    for row in result["one_sided"]:
        print(f"one side {row['figure']}: {row['reference']} -> {row['this_run']}")
    print(f"{result['figures_equal']} result figures equal, {result['figures_differing']} differ, "
          f"{result['figures_on_one_side']} on one side only")
    write_json(result, out)


if __name__ == "__main__":
    main()
