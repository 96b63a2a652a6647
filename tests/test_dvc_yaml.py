"""dvc.yaml against the stage scripts: each stage declares exactly the params sections it reads and exactly the
code it runs (its script and every project module the script imports, directly or transitively), the files it
reads are deps and the files it writes are outs (never both), and the response cache is nobody's output."""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import click
import pytest
import yaml

from longwriter.config import SECTIONS

ROOT = Path(__file__).parent.parent
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def paths(entries: list) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries or []}


def option_defaults(name: str) -> dict[str, str]:
    command: click.Command = importlib.import_module(f"stages.{name}").main
    return {p.name: p.default for p in command.params
            if isinstance(p, click.Option) and isinstance(p.default, str) and p.name != "params_file"}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_declares_the_params_sections_it_reads(name):
    stage = STAGES[name]
    source = (ROOT / "stages" / f"{name}.py").read_text()
    read = set(re.findall(r'section\(params, "(\w+)"', source))
    interpolated = {v.split(".")[0] for v in re.findall(r"\$\{([\w.]+)\}", yaml.safe_dump(stage))}
    declared = {p.split(".")[0] for p in stage.get("params", [])}
    assert declared == read | interpolated, (name, declared, read, interpolated)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_writes_its_outs_and_reads_its_deps(name):
    stage = STAGES[name]
    deps = paths(stage["deps"])
    written = paths(stage.get("outs")) | paths(stage.get("metrics")) | paths(stage.get("plots"))
    assert not deps & written, (name, deps & written)
    files = set(option_defaults(name).values())
    # every path the script defaults to is declared; every declared output is one the script writes
    assert files <= deps | written, (name, files - deps - written)
    assert written <= files, (name, written - files)
    assert not any(".llm-cache" in p for p in written)


def test_the_known_params_sections_are_the_ones_the_stages_read():
    read = {s for name in STAGES for s in re.findall(r'section\(params, "(\w+)"',
                                                      (ROOT / "stages" / f"{name}.py").read_text())}
    interpolated = {v.split(".")[0] for v in re.findall(r"\$\{([\w.]+)\}", yaml.safe_dump(STAGES))}
    assert read | interpolated | {"models"} == SECTIONS


def test_no_path_is_written_by_two_stages():
    written = [p for s in STAGES.values() for p in paths(s.get("outs")) | paths(s.get("metrics"))
               | paths(s.get("plots"))]
    assert len(written) == len(set(written))


# --- code deps: the stage script plus every project module it imports, directly or transitively ---------------

PACKAGE = "longwriter"


def module_file(module: str) -> Path | None:
    """The file of a project module (``longwriter.x.y``), or None for anything outside the project."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = ROOT / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(file: Path) -> set[str]:
    """Every module ``file`` imports, at the top or inside a function (a lazy import runs too), with the
    packages Python imports on the way (``a.b.c`` runs ``a`` and ``a.b`` first)."""
    names: set[str] = set()
    package = ".".join(file.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            # ``from package import module`` imports the module
            names |= {f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}") is not None}
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


def code_closure(script: Path) -> dict[str, str]:
    """Every project file running ``script`` executes, repo-relative, each with a file that imports it."""
    seen: dict[str, str] = {script.relative_to(ROOT).as_posix(): "dvc.yaml"}
    todo = [script]
    while todo:
        file = todo.pop()
        for module in sorted(imported_modules(file)):
            found = module_file(module)
            if found is not None and (rel := found.relative_to(ROOT).as_posix()) not in seen:
                seen[rel] = file.relative_to(ROOT).as_posix()
                todo.append(found)
    return seen


def is_code(dep: str) -> bool:
    return dep.startswith((PACKAGE + "/", "stages/")) or dep == PACKAGE


def code_dep_problems(name: str, deps: set[str]) -> list[str]:
    """What is wrong with a stage's declared code deps: a module it runs that no dep covers, a code dep it does
    not run, or a package directory standing for modules the stage does not all run."""
    run = code_closure(ROOT / "stages" / f"{name}.py")
    problems = [f"stage {name}: dvc.yaml misses {file} (imported by {importer})"
                for file, importer in sorted(run.items())
                if not any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)]
    for dep in sorted(d for d in deps if is_code(d)):
        path = ROOT / dep
        if path.is_dir():
            unused = sorted(f.relative_to(ROOT).as_posix() for f in path.rglob("*.py")
                            if "__pycache__" not in f.parts and f.relative_to(ROOT).as_posix() not in run)
            problems += [f"stage {name}: dep {dep} stands for {f}, which the stage does not run" for f in unused]
        elif dep not in run:
            problems.append(f"stage {name}: dep {dep} is code the stage does not run")
    return problems


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_declares_exactly_the_code_it_runs(name):
    problems = code_dep_problems(name, paths(STAGES[name]["deps"]))
    assert not problems, "\n".join(problems)


def test_the_code_deps_check_names_the_stage_and_the_missing_module():
    deps = paths(STAGES["longbench"]["deps"])
    # the length score: imported directly by longbench.py
    assert "stage longbench: dvc.yaml misses longwriter/eval/scoring.py (imported by longwriter/eval/longbench.py)" \
        in code_dep_problems("longbench", deps - {"longwriter/eval/scoring.py"})
    # only imported through other modules, and inside a function
    assert any(p.startswith("stage longbench: dvc.yaml misses longwriter/errors.py")
               for p in code_dep_problems("longbench", deps - {"longwriter/errors.py"}))
    assert any(p.startswith("stage dpo: dvc.yaml misses longwriter/train/checkpoint.py")
               for p in code_dep_problems("dpo", paths(STAGES["dpo"]["deps"]) - {"longwriter/train/checkpoint.py"}))
    # the llm package directory stands for its modules; one the stage does not run is an over-declaration
    assert code_dep_problems("plan", paths(STAGES["plan"]["deps"]) | {"longwriter/eval/judge.py"}) == [
        "stage plan: dep longwriter/eval/judge.py is code the stage does not run"]


def test_imports_are_read_from_the_source_lazy_ones_included():
    assert "longwriter.llm.local" in imported_modules(ROOT / "longwriter" / "llm" / "__init__.py")  # in a function
    assert {"longwriter", "longwriter.eval", "longwriter.eval.scoring"} <= imported_modules(
        ROOT / "longwriter" / "eval" / "longbench.py")


def test_every_stage_has_its_script_and_every_script_its_stage():
    scripts = {p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__"}
    assert set(STAGES) == scripts, (set(STAGES) - scripts, scripts - set(STAGES))
    for name, stage in STAGES.items():
        assert re.search(rf"-m stages\.{name}$", stage["cmd"]), (name, stage["cmd"])
        assert f"stages/{name}.py" in paths(stage["deps"]), name
