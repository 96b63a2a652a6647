"""Which package may import which: training must not depend on evaluation.

What both use (benchmark files, answering with length caps, the judge, the scores) lives outside both packages
(``longwriter.benchmark``, ``longwriter.generation``, ``longwriter.judge``, ``longwriter.scoring``), so a change to
an evaluation stage's code is never a change to a training stage's code.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported(source: str, package: str) -> set[str]:
    """The modules a file of ``package`` imports (``from m import n``: m and m.n), those inside functions
    included, relative imports resolved."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_imported_reads_every_form_of_import() -> None:
    source = "import longwriter.eval.ruler\nfrom longwriter import eval\ndef f():\n    from ..eval import answers\n"
    assert {"longwriter.eval.ruler", "longwriter.eval", "longwriter.eval.answers"} <= imported(source,
                                                                                              "longwriter.train")


def test_no_training_module_imports_evaluation() -> None:
    offending = {}
    for path in sorted((ROOT / "longwriter" / "train").rglob("*.py")):
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
        bad = sorted(m for m in imported(path.read_text(), package)
                     if m == "longwriter.eval" or m.startswith("longwriter.eval."))
        if bad:
            offending[str(path.relative_to(ROOT))] = bad
    assert not offending, f"training imports evaluation: {offending}"
