"""dvc.yaml's code deps, written by a command: ``python -m longwriter.dvc_deps`` (``--check``: only compare).

Each stage runs ``stages/<name>.py``, every project module that script imports, directly or transitively (a lazy
import inside a function runs too), and reads the prompt templates those modules name
(``render_prompt("x")``/``load_prompt("x")``: ``longwriter/prompts/x.txt``). Those files are the stage's code
deps: a change to any of them reruns the stage, and nothing else's change does.

In dvc.yaml a stage's deps are its data deps (hand-written, with their comments) and then, after the marker
comment ``CODE_MARKER``, its code deps. Every entry under ``stages/`` or ``longwriter/`` is code: the generator
owns those entries (and the marker) and rewrites them in place; every other line of dvc.yaml, params and outs
included, stays as it is. A template named through a variable, not a string literal, is not seen.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from pathlib import Path

import click

PACKAGE = "longwriter"
ROOT = Path(__file__).resolve().parent.parent
DVC_YAML = "dvc.yaml"
# every pipeline file of the repository: the main one and the evaluation pipeline's (its stages run the same
# scripts from the root, so their code deps are written the same way)
DVC_YAMLS = (DVC_YAML, "evaluation/dvc.yaml")
CODE_MARKER = "# code: python -m longwriter.dvc_deps"
PROMPT_CALL = re.compile(r"""(?:render_prompt|load_prompt)\(\s*["']([\w-]+)["']""")  # the contract's regex
PROMPT_FUNCTIONS = frozenset({"render_prompt", "load_prompt"})
PROMPTS_DIR = f"{PACKAGE}/prompts"


# --- the import closure --------------------------------------------------------------------------------------

def module_file(module: str, root: Path = ROOT) -> Path | None:
    """The file of a project module (``longwriter.x.y``), or None for anything outside the project."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = root / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _nodes(file: Path) -> tuple[ast.AST, ...]:
    """The imports and calls of ``file`` (parsed once per version of the file)."""
    stat = file.stat()
    return _parse(str(file), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1024)
def _parse(file: str, mtime_ns: int, size: int) -> tuple[ast.AST, ...]:
    tree = ast.parse(Path(file).read_text(encoding="utf-8"), file)
    return tuple(n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom | ast.Call))


def imported_modules(file: Path, root: Path = ROOT) -> set[str]:
    """Every module ``file`` imports, at the top or inside a function (a lazy import runs too), with the
    packages Python imports on the way (``a.b.c`` runs ``a`` and ``a.b`` first)."""
    names: set[str] = set()
    package = ".".join(file.relative_to(root).with_suffix("").parts[:-1])
    for node in _nodes(file):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            # ``from package import module`` imports the module
            names |= {f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}", root) is not None}
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


def code_closure(script: Path, root: Path = ROOT) -> dict[str, str]:
    """Every project file running ``script`` executes, repo-relative, each with a file that imports it."""
    seen: dict[str, str] = {script.relative_to(root).as_posix(): DVC_YAML}
    todo = [script]
    while todo:
        file = todo.pop()
        for module in sorted(imported_modules(file, root)):
            found = module_file(module, root)
            if found is not None and (rel := found.relative_to(root).as_posix()) not in seen:
                seen[rel] = file.relative_to(root).as_posix()
                todo.append(found)
    return seen


def prompt_templates(file: Path) -> set[str]:
    """The prompt templates ``file`` sends: ``longwriter/prompts/<name>.txt`` per ``render_prompt("name")`` or
    ``load_prompt("name")`` call with a literal name (none when the file names none).

    The calls ``PROMPT_CALL`` matches, read from the syntax tree: a call written out in a docstring or a comment
    (``longwriter/prompts/__init__.py`` documents the contract with one) sends nothing."""
    names: set[str] = set()
    for node in _nodes(file):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        first = node.args[0]
        if func in PROMPT_FUNCTIONS and isinstance(first, ast.Constant) and isinstance(first.value, str) \
                and re.fullmatch(r"[\w-]+", first.value):
            names.add(first.value)
    return {f"{PROMPTS_DIR}/{name}.txt" for name in names}


def stage_code(name: str, root: Path = ROOT) -> dict[str, str]:
    """Every code file stage ``name`` runs or reads, repo-relative, each with the file that brings it in."""
    run = code_closure(root / "stages" / f"{name}.py", root)
    templates = {t: f for f in run for t in sorted(prompt_templates(root / f))}
    return {**run, **{t: f for t, f in templates.items() if t not in run}}


def code_deps(name: str, root: Path = ROOT) -> list[str]:
    """Stage ``name``'s code deps in dvc.yaml's order: its script, the modules it runs, the templates they send."""
    files = stage_code(name, root)
    script = f"stages/{name}.py"
    modules = sorted(f for f in files if f.endswith(".py") and f != script)
    return [script, *modules, *sorted(f for f in files if not f.endswith(".py"))]


def is_code(dep: str) -> bool:
    return dep.startswith((PACKAGE + "/", "stages/")) or dep == PACKAGE


def code_dep_problems(name: str, deps: set[str], root: Path = ROOT) -> list[str]:
    """What is wrong with a stage's declared code deps: a file it runs that no dep covers, a code dep it does
    not run, or a package directory standing for modules the stage does not all run."""
    run = stage_code(name, root)
    problems = [f"stage {name}: {DVC_YAML} misses {file} (imported by {importer})"
                for file, importer in sorted(run.items())
                if not any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)]
    for dep in sorted(d for d in deps if is_code(d)):
        path = root / dep
        if path.is_dir():
            unused = sorted(f.relative_to(root).as_posix() for f in path.rglob("*.py")
                            if "__pycache__" not in f.parts and f.relative_to(root).as_posix() not in run)
            problems += [f"stage {name}: dep {dep} stands for {f}, which the stage does not run" for f in unused]
        elif dep not in run:
            problems.append(f"stage {name}: dep {dep} is code the stage does not run")
    return problems


# --- dvc.yaml in place -----------------------------------------------------------------------------------------

def _dep_path(entry: object) -> str:
    return str(next(iter(entry))) if isinstance(entry, dict) else str(entry)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def rewrite(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """``text`` (a dvc.yaml) with every stage's code deps regenerated, and what changed, one line per file added
    to or removed from a stage (or its order)."""
    from ruamel.yaml import YAML

    doc = YAML().load(text)
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, list[str]]] = []  # (first line, end line, replacement) of each deps block
    changes: list[str] = []
    for name, stage in doc["stages"].items():
        deps = stage.get("deps")
        if deps is None or not len(deps):
            raise click.ClickException(f"{DVC_YAML}: stage {name} has no deps (it needs at least its script)")
        if deps.fa.flow_style():
            raise click.ClickException(f"{DVC_YAML}: stage {name}: write deps as a block list, not [...]")
        item_lines = [deps.lc.item(i)[0] for i in range(len(deps))]
        dash = lines[item_lines[0]][: _indent(lines[item_lines[0]])] + "- "
        key_line = stage.lc.key("deps")[0]
        key_indent = _indent(lines[key_line])
        first = key_line + 1  # comments between `deps:` and its first item are the block's too
        # the block runs to the last item, or a comment indented under deps after it
        end = item_lines[-1] + 1
        probe = end
        while probe < len(lines):
            stripped = lines[probe].strip()
            if stripped and not (stripped.startswith("#") and _indent(lines[probe]) > key_indent):
                break
            probe += 1
            if stripped:
                end = probe
        old = [_dep_path(d) for d in deps]
        want = code_deps(name, root)
        kept: list[str] = []
        code_lines = {ln for ln, d in zip(item_lines, old, strict=True) if is_code(d)}
        for ln in range(first, end):
            if ln in code_lines or lines[ln].strip() == CODE_MARKER:
                continue
            kept.append(lines[ln])
        while kept and not kept[-1].strip():
            kept.pop()
        block = [*kept, dash[:-2] + CODE_MARKER + "\n", *(f"{dash}{f}\n" for f in want)]
        edits.append((first, end, block))
        have = [d for d in old if is_code(d)]
        changes += [f"stage {name}: add {f}" for f in want if f not in have]
        changes += [f"stage {name}: remove {f}" for f in have if f not in want]
        if set(have) == set(want) and have != want:
            changes.append(f"stage {name}: code deps out of order")
    for first, end, block in sorted(edits, reverse=True):
        lines[first:end] = block
    return "".join(lines), changes


def missing_templates(root: Path = ROOT) -> list[str]:
    """Prompt templates a module sends that do not exist (a dep DVC could not hash)."""
    stages = sorted(p.stem for p in (root / "stages").glob("*.py") if p.stem != "__init__")
    wanted = {t: f for name in stages for t, f in stage_code(name, root).items() if not t.endswith(".py")}
    return [f"{t} (sent by {f}) does not exist" for t, f in sorted(wanted.items()) if not (root / t).is_file()]


def check(root: Path = ROOT) -> list[str]:
    """What ``python -m longwriter.dvc_deps`` would change in ``root``'s pipeline files (empty: up to date)."""
    changes: list[str] = []
    for name in DVC_YAMLS:
        if not (root / name).is_file():
            continue
        text = (root / name).read_text(encoding="utf-8")
        new, changed = rewrite(text, root)
        if new != text and not changed:
            changed = ["code deps' layout differs (run python -m longwriter.dvc_deps)"]
        changes += [f"{name}: {c}" if name != DVC_YAML else c for c in changed]
    return changes


@click.command(help=__doc__)
@click.option("--check", "only_check", is_flag=True,
              help="Change nothing; exit 1 listing each difference when dvc.yaml's code deps are out of date.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=ROOT, show_default=True,
              help="Repository root (holds dvc.yaml, stages/ and longwriter/).")
def main(only_check: bool, root: Path) -> None:
    for problem in missing_templates(root):
        click.echo(f"warning: {problem}", err=True)
    if only_check:
        changes = check(root)
        for change in changes:
            click.echo(change)
        if changes:
            click.echo(f"{DVC_YAML} is out of date: run python -m longwriter.dvc_deps", err=True)
            sys.exit(1)
        return
    for name in DVC_YAMLS:
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        new, changes = rewrite(text, root)
        if new != text:
            path.write_text(new, encoding="utf-8")
        for change in changes:
            click.echo(change)
        click.echo(f"{name}: {len(changes)} change(s)" if changes else
                   f"{name}: rewritten (layout only)" if new != text else f"{name}: up to date")


if __name__ == "__main__":
    main()
