"""Every figure in the Measured and Performance tables (README.md, docs/*.md, bench/README.md) agrees with the
file its source cell names, and every relative link in the README and the docs points to an existing file.

The convention and the checker are in bench/readme_figures.py (``python bench/readme_figures.py --show`` prints
each row's figures next to their source values; ``--check`` is what this test runs).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("readme_figures", ROOT / "bench" / "readme_figures.py")
assert _spec is not None and _spec.loader is not None
rf = importlib.util.module_from_spec(_spec)
sys.modules["readme_figures"] = rf  # dataclasses look their module up
_spec.loader.exec_module(rf)


def test_checked_files_are_the_readme_the_docs_and_the_bench_readme() -> None:
    names = [p.relative_to(ROOT).as_posix() for p in rf.checked_files(ROOT)]
    docs = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))
    assert names == ["README.md", *docs, "bench/README.md"]
    assert docs, "no docs/*.md"


def test_readme_figures_match_their_sources() -> None:
    errors = rf.check_files(root=ROOT)
    assert not errors, "figures without a matching source value:\n" + "\n".join(errors)


def test_readme_checked_tables_are_found() -> None:
    table_rows, errors = rf.all_rows(root=ROOT)
    assert not errors
    found = {(r.file, r.section.split(" (")[0]) for r in table_rows}
    sections = {section for _, section in found}
    assert {"## Measured", "## Performance"} <= sections
    assert ("bench/README.md", "## Performance") in found   # the benchmarks' table
    assert any(f.startswith("docs/") and s == "## Measured" for f, s in found)  # the default run's figures


def test_check_files_names_the_file(root: Path) -> None:
    (root / "docs").mkdir()
    (root / "README.md").write_text("# x\n", encoding="utf-8")
    (root / "docs" / "a.md").write_text(_readme("| w | 9.9 | `bench/results/b.json: ratio` |"), encoding="utf-8")
    assert [p.name for p in rf.checked_files(root)] == ["README.md", "a.md"]
    errors = rf.check_files(root=root)
    assert len(errors) == 1 and errors[0].startswith("docs/a.md:7 (w): figure 1 '9.9' disagrees"), errors
    (root / "docs" / "a.md").write_text("# no tables\n", encoding="utf-8")
    assert rf.check_files(root=root) == ["no checked table found"]


# --- links -----------------------------------------------------------------------------------------------

_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_links(text: str) -> list[str]:
    """The targets of the Markdown links in ``text`` that point into the repository (code left out)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    out = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor in the same file
        out.append(target.split("#")[0])
    return out


def test_relative_links_are_found() -> None:
    text = ("[a](docs/a.md) [b](../b.md#part) [c](https://x.org/y.md) [d](#here) `[e](code.md)`\n"
            "```bash\n[f](block.md)\n```\n[g](bench/README.md \"title\")\n")
    assert relative_links(text) == ["docs/a.md", "../b.md", "bench/README.md"]


@pytest.mark.parametrize("doc", [p.relative_to(ROOT).as_posix() for p in rf.checked_files(ROOT)])
def test_relative_links_point_to_existing_files(doc: str) -> None:
    path = ROOT / doc
    links = relative_links(path.read_text(encoding="utf-8"))
    missing = [t for t in links if not (path.parent / t).exists()]
    assert not missing, f"{doc}: links to missing files: {missing}"


def test_readme_links_every_doc() -> None:
    links = {(ROOT / t).resolve() for t in relative_links((ROOT / "README.md").read_text(encoding="utf-8"))}
    docs = {p.resolve() for p in (ROOT / "docs").glob("*.md")} | {(ROOT / "bench" / "README.md").resolve()}
    assert docs <= links, f"not linked from README.md: {sorted(str(p.relative_to(ROOT)) for p in docs - links)}"


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
