"""Every figure in the measured tables of the README and the docs against the file it comes from.

\b
    python bench/readme_figures.py --check    # list every figure that disagrees with its file or has none (exit 1)
    python bench/readme_figures.py --show     # each row: the figures shown next to their source values
    python bench/readme_figures.py --check --file docs/measured.md   # one file only

The convention (tests/test_readme_figures.py runs ``--check``'s code):

* **Checked files**: ``README.md``, every ``docs/*.md`` and ``bench/README.md`` (``checked_files``).
* **Checked tables**: every table with a ``source`` column in a checked file, and every table under the
  headings in ``SECTIONS`` (which must have one).
* **Figure cells**: the cells of the columns whose header contains ``figure``. Every number in them is a
  figure. Inputs (lengths asked, request counts, targets, ``max_concurrency`` ...) go in the other columns
  (``what``, ``target``, ``command``), which are not checked.
* **Source cell**: code spans of the form ``path: key, key, ...``, several separated by ``;`` (text outside code
  spans is a comment). ``path`` is relative to the repository root (``bench/results/*.json`` written by a
  bench, ``metrics/*.json`` written by a `dvc repro` stage). The n-th number of the row's figure cells (left to
  right, columns in order) comes from the n-th key: as many keys as numbers, in the same order.
* **Keys**: ``a.b.c`` walks dicts (``mean_words.1000`` is the dict key "1000"); ``runs[0]`` indexes a list;
  ``runs[mode=sequential]`` picks the list element whose field ``mode`` equals ``sequential``; ``runs[*]``
  maps over a list and then needs an aggregate around the key: ``max(runs[*].seconds)``, ``min(...)``,
  ``sum(...)``.
* **Numbers**: a number is digits with optional ``,`` thousands separators and a decimal part, not preceded by
  a letter, digit or ``_`` (so ``AVX2`` and ``S_l`` are not numbers; ``2k`` is the number 2). Shown with d
  decimals, it matches a value v when v rounds to it: |v - shown| <= 0.5 x 10^-d. Followed by ``%``, it is
  compared with v x 100. ``X min Y s`` is one number, X x 60 + Y, compared with v in seconds.
* A figure without a file (``not yet measured``) has no number in its cell and no key in its source.

After a bench run or a pipeline rerun, ``--show`` prints each row's current source values: copy them into
the figure cells, rounded as shown, and ``--check`` passes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# headings whose tables must carry a source column
SECTIONS = ("## Measured", "## Performance")
AGGREGATES = {"max": max, "min": min, "sum": sum}

_DURATION = re.compile(r"(?<![\w.,])(\d+) min (\d+) s\b")
_NUMBER = re.compile(r"(?<![A-Za-z0-9_.,])(-?)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(\s*%)?")
_CODE = re.compile(r"`([^`]*)`")


@dataclass
class Figure:
    text: str      # as shown
    value: float   # the number shown (seconds for "X min Y s")
    decimals: int
    percent: bool

    def matches(self, v: float) -> bool:
        target = v * 100 if self.percent else v
        return abs(target - self.value) <= 0.5 * 10 ** -self.decimals + 1e-9 * max(1.0, abs(target))


@dataclass
class Row:
    line: int                  # 1-based line in its file
    section: str
    what: str                  # the row's first cell
    figure_cells: list[str]
    source: str
    errors: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str, Any]] = field(default_factory=list)  # (figure shown, key, value)
    file: str = "README.md"    # the checked file, relative to the repository root


def figures(text: str) -> list[Figure]:
    """Every number in a figure cell, in order (see the module docstring)."""
    found: list[tuple[int, Figure]] = []
    taken: list[tuple[int, int]] = []
    for m in _DURATION.finditer(text):
        found.append((m.start(), Figure(m.group(0), int(m.group(1)) * 60 + int(m.group(2)), 0, False)))
        taken.append(m.span())
    for m in _NUMBER.finditer(text):
        if any(a <= m.start() < b for a, b in taken):
            continue
        sign, whole, frac, pct = m.groups()
        value = float(sign + whole.replace(",", "") + ("." + frac if frac else ""))
        found.append((m.start(), Figure(m.group(0).strip(), value, len(frac or ""), bool(pct))))
    return [f for _, f in sorted(found, key=lambda p: p[0])]


def parse_source(cell: str) -> list[tuple[str, str]]:
    """``(path, key)`` for every key of a source cell, in order."""
    out = []
    for span in _CODE.findall(cell):
        for group in span.split(";"):
            group = group.strip()
            if not group:
                continue
            path, _, keys = group.partition(":")
            for key in keys.split(","):
                if key.strip():
                    out.append((path.strip(), key.strip()))
    return out


def _segments(path: str) -> list[str]:
    """``a.b[x=1.5].c`` -> ``["a", "b", "[x=1.5]", "c"]`` (dots inside brackets do not split)."""
    segs, buf, depth = [], "", 0
    for ch in path:
        if ch == "[" and depth == 0:
            if buf:
                segs.append(buf)
            buf, depth = "[", 1
        elif ch == "]" and depth == 1:
            segs.append(buf + "]")
            buf, depth = "", 0
        elif ch == "." and depth == 0:
            if buf:
                segs.append(buf)
            buf = ""
        else:
            buf += ch
    if depth:
        raise KeyError(f"unclosed [ in {path!r}")
    if buf:
        segs.append(buf)
    return segs


def _step(node: Any, seg: str, path: str) -> Any:
    if seg.startswith("["):
        inner = seg[1:-1]
        if not isinstance(node, list):
            raise KeyError(f"{path!r}: {seg} on a {type(node).__name__}, not a list")
        if inner == "*":
            return node  # mapped over by resolve
        if "=" in inner:
            k, _, v = inner.partition("=")
            hits = [e for e in node if isinstance(e, dict) and str(e.get(k.strip())) == v.strip()]
            if len(hits) != 1:
                raise KeyError(f"{path!r}: {len(hits)} elements with {k.strip()} = {v.strip()!r}")
            return hits[0]
        try:
            return node[int(inner)]
        except (ValueError, IndexError) as e:
            raise KeyError(f"{path!r}: no element {seg}") from e
    if not isinstance(node, dict) or seg not in node:
        raise KeyError(f"{path!r}: no key {seg!r}")
    return node[seg]


def resolve(data: Any, key: str) -> float:
    """The number ``key`` names in ``data`` (see the module docstring); KeyError when there is none."""
    m = re.fullmatch(r"(\w+)\((.*)\)", key)
    agg, path = (m.group(1), m.group(2)) if m else (None, key)
    if agg is not None and agg not in AGGREGATES:
        raise KeyError(f"{key!r}: unknown aggregate {agg!r} (one of {', '.join(AGGREGATES)})")
    nodes, mapped = [data], False
    for seg in _segments(path):
        nxt = []
        for n in nodes:
            got = _step(n, seg, path)
            if seg == "[*]":
                nxt.extend(got)
                mapped = True
            else:
                nxt.append(got)
        nodes = nxt
    if mapped != (agg is not None):
        raise KeyError(f"{key!r}: [*] and an aggregate go together")
    for n in nodes:
        if isinstance(n, bool) or not isinstance(n, int | float):
            raise KeyError(f"{key!r}: {n!r} is not a number")
    if agg is not None:
        if not nodes:
            raise KeyError(f"{key!r}: empty list")
        return AGGREGATES[agg](nodes)
    return nodes[0]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def checked_files(root: Path = ROOT) -> list[Path]:
    """The files whose tables are checked: README.md, every docs/*.md and bench/README.md (those that exist)."""
    files = [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "bench" / "README.md"]
    return [f for f in files if f.is_file()]


def _name(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def rows(readme: str, name: str = "README.md") -> tuple[list[Row], list[str]]:
    """The rows of every checked table in ``readme`` (the text of the file ``name``), and the errors of tables
    that should be checked but cannot be."""
    out: list[Row] = []
    errors: list[str] = []
    lines = readme.splitlines()
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line
        if not line.lstrip().startswith("|"):
            i += 1
            continue
        start = i
        while i < len(lines) and lines[i].lstrip().startswith("|"):
            i += 1
        table = lines[start:i]
        header = [h.lower() for h in _cells(table[0])]
        must = any(section.startswith(s) for s in SECTIONS)
        if "source" not in header:
            if must:
                errors.append(f"{name}:{start + 1}: table in {section!r} has no 'source' column")
            continue
        fig_cols = [k for k, h in enumerate(header) if "figure" in h]
        if not fig_cols:
            errors.append(f"{name}:{start + 1}: table with a source column has no 'figure' column")
            continue
        src = header.index("source")
        for k, body in enumerate(table[2:], start=start + 3):
            cells = _cells(body)
            if len(cells) != len(header):
                errors.append(f"{name}:{k}: {len(cells)} cells, the header has {len(header)}")
                continue
            out.append(Row(k, section, cells[0], [cells[c] for c in fig_cols], cells[src], file=name))
    return out, errors


def check_row(row: Row, root: Path, cache: dict[Path, Any]) -> None:
    figs = [f for cell in row.figure_cells for f in figures(cell)]
    keys = parse_source(row.source)
    if len(figs) != len(keys):
        row.errors.append(f"{len(figs)} numbers in the figure cells ({', '.join(f.text for f in figs) or 'none'}) "
                          f"but {len(keys)} source keys")
    for n, (fig, (path, key)) in enumerate(zip(figs, keys, strict=False), start=1):
        file = root / path
        if file not in cache:
            try:
                cache[file] = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                cache[file] = e
        data = cache[file]
        if isinstance(data, Exception):
            row.errors.append(f"figure {n} {fig.text!r}: source {path} cannot be read ({data})")
            continue
        try:
            value = resolve(data, key)
        except KeyError as e:
            row.errors.append(f"figure {n} {fig.text!r}: {path}: {e.args[0]}")
            continue
        row.pairs.append((fig.text, f"{path}: {key}", value))
        if not fig.matches(value):
            row.errors.append(f"figure {n} {fig.text!r} disagrees with {path}: {key} = {value!r}"
                              + (" (x 100 for %)" if fig.percent else ""))


def _check_rows(table_rows: list[Row], root: Path, cache: dict[Path, Any]) -> list[str]:
    errors = []
    for row in table_rows:
        check_row(row, root, cache)
        errors += [f"{row.file}:{row.line} ({row.what[:60]}): {e}" for e in row.errors]
    return errors


def check(readme: str, root: Path = ROOT, name: str = "README.md") -> list[str]:
    """Every disagreement in one file's text, one line each; empty when every figure matches its source."""
    table_rows, errors = rows(readme, name)
    if not table_rows and not errors:
        errors.append(f"{name}: no checked table found")
    return errors + _check_rows(table_rows, root, {})


def all_rows(files: list[Path] | None = None, root: Path = ROOT) -> tuple[list[Row], list[str]]:
    """``rows`` over every checked file (``checked_files(root)`` unless ``files`` is given)."""
    out: list[Row] = []
    errors: list[str] = []
    for path in checked_files(root) if files is None else files:
        r, e = rows(path.read_text(encoding="utf-8"), _name(path, root))
        out += r
        errors += e
    return out, errors


def check_files(files: list[Path] | None = None, root: Path = ROOT) -> list[str]:
    """Every disagreement in the checked files, one line each; empty when every figure matches its source and
    at least one checked table was found."""
    table_rows, errors = all_rows(files, root)
    if not table_rows and not errors:
        errors.append("no checked table found")
    return errors + _check_rows(table_rows, root, {})


def show(readme: str, root: Path = ROOT, name: str = "README.md") -> str:
    table_rows, errors = rows(readme, name)
    return _show(table_rows, errors, root)


def show_files(files: list[Path] | None = None, root: Path = ROOT) -> str:
    return _show(*all_rows(files, root), root)


def _show(table_rows: list[Row], errors: list[str], root: Path) -> str:
    cache: dict[Path, Any] = {}
    out = []
    for row in table_rows:
        check_row(row, root, cache)
        out.append(f"{row.file}:{row.line}  {row.what}")
        keys = parse_source(row.source)
        shown = [f.text for cell in row.figure_cells for f in figures(cell)]
        if not keys and not shown:
            out.append(f"    (no figures: {' | '.join(row.figure_cells)})")
        for n, (path, key) in enumerate(keys):
            try:
                value: Any = resolve(json.loads((root / path).read_text(encoding="utf-8")), key)
            except (OSError, ValueError, KeyError) as e:
                value = f"<{e}>"
            fig = shown[n] if n < len(shown) else "<missing>"
            out.append(f"    {fig:>14}  <-  {path}: {key} = {value}")
        out += [f"    !! {e}" for e in row.errors]
    out += [f"!! {e}" for e in errors]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when a figure disagrees with its source")
    ap.add_argument("--show", action="store_true", help="print every row's figures and source values")
    ap.add_argument("--file", "--readme", dest="files", type=Path, action="append",
                    help="check only this file (repeatable); default: README.md, docs/*.md, bench/README.md")
    args = ap.parse_args(argv)
    files = [f if f.is_absolute() else Path.cwd() / f for f in args.files] if args.files else None
    if args.show or not args.check:
        print(show_files(files))
    errors = check_files(files)
    if args.check:
        print("\n".join(errors) if errors else "every checked figure matches its source")
    return 1 if errors and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
