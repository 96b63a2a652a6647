"""Every figure in the README's Measured and Performance tables agrees with the file its source cell names.

The convention and the checker are in bench/readme_figures.py (``python bench/readme_figures.py --show`` prints
each row's figures next to their source values; ``--check`` is what this test runs).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "bench" / "readme_figures.py")
assert _spec is not None and _spec.loader is not None
rf = importlib.util.module_from_spec(_spec)
sys.modules["readme_figures"] = rf  # dataclasses look their module up
_spec.loader.exec_module(rf)


def test_readme_figures_match_their_sources() -> None:
    errors = rf.check((ROOT / "README.md").read_text(encoding="utf-8"), ROOT)
    assert not errors, "README figures without a matching source value:\n" + "\n".join(errors)


def test_readme_checked_tables_are_found() -> None:
    table_rows, errors = rf.rows((ROOT / "README.md").read_text(encoding="utf-8"))
    assert not errors
    sections = {r.section.split(" (")[0] for r in table_rows}
    assert {"## Measured", "## Performance"} <= sections


# --- the convention, on a small README -------------------------------------------------------------------

def _readme(rows: str, section: str = "## Performance") -> str:
    return f"# x\n\n{section}\n\n| what | figure | source |\n|---|---|---|\n{rows}\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "b.json").write_text(json.dumps({
        "ratio": 1.0876, "share": 0.667, "seconds": 2150.4, "rows_per_s": 131239, "flag": True,
        "runs": [{"mode": "sequential", "seconds": 7.44}, {"mode": "parallel", "seconds": 10.1}],
        "mean_words": {"1000": 423.2}}))
    return tmp_path


@pytest.mark.parametrize("figure, keys", [
    ("ratio 1.088", "ratio"),
    ("ratio 1.09, 67 %", "ratio, share"),                       # rounded as shown; % is value x 100
    ("35 min 50 s", "seconds"),                                # X min Y s against seconds
    ("131,239 rows/s", "rows_per_s"),                          # thousands separators
    ("slowest 10.1 s", "max(runs[*].seconds)"),                # aggregate over a list
    ("sequential 7.44 s", "runs[mode=sequential].seconds"),    # list element by field
    ("7.4 s then 10 s", "runs[0].seconds, runs[1].seconds"),   # by index, in order
    ("423 words (AVX2 build, S_l)", "mean_words.1000"),        # identifiers are not numbers
    ("not yet measured", ""),                                  # no number, no key
])
def test_convention_accepts(root: Path, figure: str, keys: str) -> None:
    src = f"`bench/results/b.json: {keys}`" if keys else "—"
    assert rf.check(_readme(f"| w | {figure} | {src} |"), root) == []


@pytest.mark.parametrize("figure, keys, why", [
    ("ratio 1.019", "ratio", "disagrees"),
    ("ratio 1.08", "ratio", "disagrees"),                      # 1.0876 shows as 1.09 (or 1.1), not 1.08
    ("67", "share", "disagrees"),                              # a share needs its % to read as x 100
    ("35 min 49 s", "seconds", "disagrees"),
    ("84 tokens/s", "", "1 numbers"),                          # a figure with no source
    ("1.088 and 2", "ratio", "2 numbers"),                     # every number needs a key
    ("1.088", "ratio, share", "2 source keys"),
    ("1.088", "nope", "no key 'nope'"),
    ("1", "flag", "not a number"),
    ("10.1", "runs[*].seconds", "aggregate"),
    ("10.1", "runs[mode=batch].seconds", "0 elements"),
])
def test_convention_rejects(root: Path, figure: str, keys: str, why: str) -> None:
    src = f"`bench/results/b.json: {keys}`" if keys else "—"
    errors = rf.check(_readme(f"| w | {figure} | {src} |"), root)
    assert len(errors) == 1 and why in errors[0], errors


def test_missing_file_and_missing_source_column(root: Path) -> None:
    errors = rf.check(_readme("| w | 9.4 s | `bench/results/gone.json: seconds` |"), root)
    assert len(errors) == 1 and "cannot be read" in errors[0]
    no_source = "# x\n\n## Measured (here)\n\n| what | figure | command |\n|---|---|---|\n| w | 84 | |\n"
    assert any("no 'source' column" in e for e in rf.check(no_source, root))
