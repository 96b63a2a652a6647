"""dvc.yaml against the stage scripts: each stage declares exactly the params sections it reads (of `llm`, only the
keys that can change its outputs) and exactly the code it runs (what `python -m longwriter.dvc_deps` writes: its
script, every project module the script imports, directly or transitively, and the prompt templates they send),
its cmd passes every path its script takes (each written once, in dvc.yaml's vars), the files it reads are deps and
the files it writes are outs (never both), and the response cache is nobody's output."""

from __future__ import annotations

import dataclasses
import importlib
import re
import shlex
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from longwriter.config import SECTIONS, read_params
from longwriter.dvc_deps import (
    CODE_MARKER,
    check,
    code_dep_problems,
    code_deps,
    imported_modules,
    main,
    prompt_templates,
    rewrite,
    stage_code,
)
from longwriter.llm.spec import RUN_ONLY_KEYS, ClientSettings

ROOT = Path(__file__).parent.parent
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
STAGES = DVC["stages"]
# dvc.yaml's own variables (`vars`: the paths), as opposed to params.yaml's, which ${...} also reads
VARS = {k: v for entry in DVC.get("vars") or [] if isinstance(entry, dict) for k, v in entry.items()}


def resolve(text: str) -> str:
    """``text`` with dvc.yaml's own variables filled in (``${paths.selected}``); params' stay as written."""
    def value(match: re.Match) -> str:
        node = VARS
        for key in match.group(1).split("."):
            node = node[key]
        return str(node)
    names = "|".join(map(re.escape, VARS))
    return re.sub(rf"\$\{{((?:{names})(?:\.\w+)+)\}}", value, text) if VARS else text


def paths(entries: list) -> set[str]:
    return {resolve(next(iter(e)) if isinstance(e, dict) else e) for e in entries or []}


def interpolated_sections(node: object) -> set[str]:
    """The params.yaml sections ``${...}`` reads in ``node`` (dvc.yaml's own vars left out)."""
    return {v.split(".")[0] for v in re.findall(r"\$\{([\w.]+)\}", yaml.safe_dump(node))} - set(VARS)


def cmd_options(name: str) -> dict[str, str]:
    """The options stage ``name``'s cmd passes its script, by parameter name, with dvc.yaml's vars filled in."""
    command: click.Command = importlib.import_module(f"stages.{name}").main
    by_flag = {flag: p.name for p in command.params if isinstance(p, click.Option) for flag in p.opts}
    words = shlex.split(resolve(STAGES[name]["cmd"]))
    words = words[words.index(f"stages.{name}") + 1:]
    assert len(words) % 2 == 0, (name, words)
    unknown = [flag for flag in words[::2] if flag not in by_flag]
    assert not unknown, (name, unknown)
    return {by_flag[flag]: value for flag, value in zip(words[::2], words[1::2], strict=True)}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_declares_the_params_sections_it_reads(name):
    stage = STAGES[name]
    source = (ROOT / "stages" / f"{name}.py").read_text()
    read = set(re.findall(r'section\(params, "(\w+)"', source))
    interpolated = interpolated_sections(stage)
    declared = {p.split(".")[0] for p in stage.get("params", [])}
    assert declared == read | interpolated, (name, declared, read, interpolated)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_writes_its_outs_and_reads_its_deps(name):
    stage = STAGES[name]
    deps = paths(stage["deps"])
    written = paths(stage.get("outs")) | paths(stage.get("metrics")) | paths(stage.get("plots"))
    assert not deps & written, (name, deps & written)
    files = set(cmd_options(name).values())
    # every path the cmd passes is declared; every declared output is one the cmd has the script write
    assert files <= deps | written, (name, files - deps - written)
    assert written <= files, (name, written - files)
    assert not any(".llm-cache" in p for p in written)


def test_the_known_params_sections_are_the_ones_the_stages_read():
    read = {s for name in STAGES for s in re.findall(r'section\(params, "(\w+)"',
                                                      (ROOT / "stages" / f"{name}.py").read_text())}
    assert read | interpolated_sections(STAGES) | {"models"} == SECTIONS


def test_no_path_is_written_by_two_stages():
    written = [p for s in STAGES.values() for p in paths(s.get("outs")) | paths(s.get("metrics"))
               | paths(s.get("plots"))]
    assert len(written) == len(set(written))


# --- code deps: the stage script, every project module it imports, directly or transitively, and the prompt
# templates they send; longwriter/dvc_deps.py writes them (python -m longwriter.dvc_deps) --------------------------

def test_the_code_deps_are_the_generators():
    # `python -m longwriter.dvc_deps --check` passes: dvc.yaml is what the generator writes
    assert check() == [], "run: python -m longwriter.dvc_deps\n" + "\n".join(check())
    result = CliRunner().invoke(main, ["--check"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_declares_exactly_the_code_it_runs(name):
    problems = code_dep_problems(name, paths(STAGES[name]["deps"]))
    assert not problems, "\n".join(problems)


def test_the_code_deps_check_names_the_stage_and_the_missing_module():
    deps = paths(STAGES["longbench"]["deps"])
    # the length score: imported directly by longbench.py
    assert "stage longbench: dvc.yaml misses longwriter/scoring.py (imported by longwriter/eval/longbench.py)" \
        in code_dep_problems("longbench", deps - {"longwriter/scoring.py"})
    # only imported through other modules, and inside a function
    assert any(p.startswith("stage longbench: dvc.yaml misses longwriter/errors.py")
               for p in code_dep_problems("longbench", deps - {"longwriter/errors.py"}))
    assert any(p.startswith("stage dpo: dvc.yaml misses longwriter/train/checkpoint.py")
               for p in code_dep_problems("dpo", paths(STAGES["dpo"]["deps"]) - {"longwriter/train/checkpoint.py"}))
    # the llm package directory stands for its modules; one the stage does not run is an over-declaration
    assert code_dep_problems("plan", paths(STAGES["plan"]["deps"]) | {"longwriter/eval/ruler.py"}) == [
        "stage plan: dep longwriter/eval/ruler.py is code the stage does not run"]


def test_imports_are_read_from_the_source_lazy_ones_included():
    assert "longwriter.llm.local" in imported_modules(ROOT / "longwriter" / "llm" / "__init__.py")  # in a function
    assert {"longwriter", "longwriter.eval", "longwriter.scoring"} <= imported_modules(
        ROOT / "longwriter" / "eval" / "longbench.py")


def test_every_stage_has_its_script_and_every_script_its_stage():
    scripts = {p.stem for p in (ROOT / "stages").glob("*.py") if p.stem != "__init__"}
    assert set(STAGES) == scripts, (set(STAGES) - scripts, scripts - set(STAGES))
    for name, stage in STAGES.items():
        assert re.search(rf"-m stages\.{name}( |$)", stage["cmd"]), (name, stage["cmd"])
        assert f"stages/{name}.py" in paths(stage["deps"]), name


def test_dvc_parses_the_templated_file():
    # DVC itself fills in dvc.yaml's vars and params.yaml's values: every stage resolves, nothing is left over
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        # the main pipeline's stages (evaluation/dvc.yaml runs some of the same scripts under the same names)
        stages = {s.name: s for s in repo.index.stages
                  if s.name in STAGES and Path(s.dvcfile.path).resolve() == ROOT / "dvc.yaml"}
    assert set(stages) == set(STAGES)
    for name, stage in stages.items():
        assert "${" not in stage.cmd and not any("${" in str(o) for o in [*stage.deps, *stage.outs]), name
        # the paths are dvc.yaml's vars (params' values, such as train.launch, are DVC's to fill in)
        assert all(w in stage.cmd.split() for w in resolve(STAGES[name]["cmd"]).split() if "${" not in w), name
        assert {str(o.def_path) for o in stage.outs} == {resolve(p) for key in ("outs", "metrics", "plots")
                                                         for p in paths(STAGES[name].get(key))}, name


# --- paths: named once, in dvc.yaml's vars; the scripts take each as a required option -----------------------

@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_script_has_no_path_default_and_its_cmd_passes_every_path(name):
    command: click.Command = importlib.import_module(f"stages.{name}").main
    options = [p for p in command.params if isinstance(p, click.Option)]
    # --params alone has a default (params.yaml, what DVC reads too)
    assert [p.name for p in options if isinstance(p.default, str)] == ["params_file"], name
    passed = cmd_options(name)
    assert {p.name for p in options if p.required} <= set(passed), name
    assert "params_file" not in passed, name
    # every path of the cmd is written once, as a var (or a params value, e.g. grpo's models/${grpo.start})
    literal = [v for v in re.findall(r"--[\w-]+ (\S+)", STAGES[name]["cmd"]) if "${" not in v]
    assert not literal, (name, literal)


def test_every_path_var_is_used():
    def leaves(node: object, prefix: str) -> list[str]:
        if isinstance(node, dict):
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{prefix}.{k}")]
        return [prefix]
    text = yaml.safe_dump(STAGES)
    unused = [v for k, node in VARS.items() for v in leaves(node, k) if "${" + v + "}" not in text]
    assert not unused, unused


# --- the code deps' generator ------------------------------------------------------------------------------

def test_the_generator_restores_the_code_deps_and_keeps_everything_else():
    text = (ROOT / "dvc.yaml").read_text()
    plan = code_deps("plan")
    assert plan[0] == "stages/plan.py" and "longwriter/errors.py" in plan
    edited = text.replace("      - longwriter/errors.py\n", "", 1)  # the first stage's (select's)
    edited = edited.replace("      - stages/plan.py\n", "      - stages/plan.py\n      - longwriter/stale.py\n", 1)
    assert edited != text
    new, changes = rewrite(edited)
    assert new == text
    assert changes == ["stage select: add longwriter/errors.py", "stage plan: remove longwriter/stale.py"]
    # a stage with no marker yet (the code interleaved with the data, as written by hand) gets one
    hand = text.replace(f"      {CODE_MARKER}\n      - stages/mix.py\n", "      - stages/mix.py\n", 1)
    assert hand != text and rewrite(hand)[0] == text


def test_the_generator_check_exits_non_zero_listing_the_differences(tmp_path):
    for name in ("stages", "longwriter"):
        (tmp_path / name).symlink_to(ROOT / name)
    text = (ROOT / "dvc.yaml").read_text()
    (tmp_path / "dvc.yaml").write_text(text.replace("      - stages/nll.py\n", "", 1))
    result = CliRunner().invoke(main, ["--check", "--root", str(tmp_path)])
    assert result.exit_code == 1 and "stage nll: add stages/nll.py" in result.output, result.output
    assert (tmp_path / "dvc.yaml").read_text() != text  # --check writes nothing
    result = CliRunner().invoke(main, ["--root", str(tmp_path)])
    assert result.exit_code == 0 and (tmp_path / "dvc.yaml").read_text() == text, result.output


def test_prompt_templates_are_the_literal_names_a_module_renders(tmp_path):
    module = tmp_path / "m.py"
    module.write_text('''"""Docs: ``render_prompt("documented")`` is not a call."""
from longwriter.prompts import load_prompt, render_prompt
import longwriter.prompts as prompts
a = render_prompt("plan", x=1)
b = load_prompt(
    'write-two')
c = prompts.render_prompt("judge_rating")
d = render_prompt(name)  # a computed name: not seen
''')
    assert prompt_templates(module) == {"longwriter/prompts/plan.txt", "longwriter/prompts/write-two.txt",
                                        "longwriter/prompts/judge_rating.txt"}
    # every call found is one the contract's regex matches
    regex = re.compile(r"""(?:render_prompt|load_prompt)\(\s*["']([\w-]+)["']""")
    for file in (ROOT / "longwriter").rglob("*.py"):
        assert {f"longwriter/prompts/{n}.txt" for n in regex.findall(file.read_text())} >= prompt_templates(file)


def test_a_stage_depends_on_the_templates_its_modules_send():
    sent = {t for name in STAGES for t in code_deps(name) if t.endswith(".txt")}
    for template in sent:
        assert (ROOT / template).is_file(), template


# --- params: a stage declares only the llm keys that can change what it writes ------------------------------

# a whole section holding keys that change no output is never declared: a change to one would rerun the stage
RUN_ONLY = {"llm": RUN_ONLY_KEYS}
# a run-only key a stage's own code uses for more than pacing, so the stage declares it: select judges candidates
# in windows of 2 x max_concurrency (longwriter/agentwrite/selector.py), and records every verdict
DECLARED_RUN_ONLY = {"select": {"max_concurrency"}}
OUTPUT_KEYS = {f.name for f in dataclasses.fields(ClientSettings) if f.metadata.get("param", True)} - RUN_ONLY_KEYS


def test_the_run_only_keys_are_llm_keys():
    fields = {f.name for f in dataclasses.fields(ClientSettings)}
    assert fields > RUN_ONLY_KEYS
    assert fields - RUN_ONLY_KEYS - {"spend"} == OUTPUT_KEYS
    assert sorted(OUTPUT_KEYS) == ["max_cost_usd", "max_retries", "request_timeout_s"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_declares_the_llm_keys_that_can_change_its_outputs(name):
    declared = STAGES[name].get("params") or []
    assert not set(declared) & set(RUN_ONLY), (name, "declares a whole section holding run-only keys")
    llm = {p.split(".", 1)[1] for p in declared if p.startswith("llm.")}
    source = (ROOT / "stages" / f"{name}.py").read_text()
    reads = re.search(r'build\(ClientSettings,\s*section\(params,\s*"llm"', source)
    expected = OUTPUT_KEYS | DECLARED_RUN_ONLY.get(name, set()) if reads else set()
    assert llm == expected, (name, "declared but run-only or unread:", sorted(llm - expected),
                             "missing:", sorted(expected - llm))


def test_the_declared_llm_keys_are_in_params_yaml():
    # DVC refuses to run a stage that declares a key its params file lacks
    declared = {p.split(".", 1)[1] for s in STAGES.values() for p in s.get("params") or [] if p.startswith("llm.")}
    assert declared <= set(read_params(ROOT / "params.yaml")["llm"])


@pytest.mark.parametrize("name", sorted(STAGES))
def test_only_the_llm_client_reads_the_run_only_keys(name):
    # a run-only key read outside the client (longwriter/llm/) may shape outputs: the stage must declare it
    for file in stage_code(name):
        if file.endswith(".py") and not file.startswith("longwriter/llm/"):
            text = (ROOT / file).read_text()
            used = {k for k in RUN_ONLY_KEYS if re.search(rf"\.{k}\b", text)}
            assert used <= DECLARED_RUN_ONLY.get(name, set()), (name, file, used)
