"""The prompt templates (``longwriter/prompts/<name>.txt``): each rendered for a fixed input and compared byte for
byte with ``tests/golden/prompts/<case>.txt``; the renderer's rules; every template used, every name a template.

The golden files were first written from the prompts as the code built them before the templates existed, so
they pin the bytes the response cache is keyed on. After changing a template on purpose, regenerate them and
review the diff:

    UPDATE_GOLDEN=1 python -m pytest -p no:xdist tests/test_prompts.py

(the golden test then rewrites the files and fails, so a regeneration is never mistaken for a pass).
"""

from __future__ import annotations

import ast
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

import longwriter.prompts as prompts
from longwriter.agentwrite.plan import PlanConfig, plan_messages
from longwriter.agentwrite.select import SelectConfig
from longwriter.agentwrite.write import WriteConfig, section_messages
from longwriter.judge import (
    DIMENSIONS,
    criterion_messages,
    pair_messages,
    part_messages,
    rating_messages,
    target_messages,
)
from longwriter.llm.spec import Sampling
from longwriter.llm.structured import reask
from longwriter.prompts import load_prompt, render_prompt

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden" / "prompts"
TEMPLATES = ROOT / "longwriter" / "prompts"
# what the dvc.yaml deps generator scans for: a template named by a string literal
CALL_SITE = re.compile(r"""(?:render_prompt|load_prompt)\(\s*["']([\w-]+)["']""")

INSTRUCTION = "Write a 3000-word essay about rivers, with {braces} and a $dollar: 写一篇关于长江的文章。"
PLAN = [("Where rivers begin {x}", 300), ("河流的历史", 500), ("What rivers carry to the sea", 200)]
WRITTEN = ["Rivers begin as rain on high ground {y}.", "河流的历史很长。" * 20]
ANSWER = "An essay about rivers. It has {braces}, \"quotes\" and </response> tags it cannot close."


def _selector() -> str:
    return render_prompt("select", min_words=SelectConfig().min_estimated_words, prompt=INSTRUCTION)


def _reask() -> str:
    messages, _ = reask([{"role": "user", "content": "Q"}], Sampling(temperature=0.0), "not JSON at all",
                        'it must be one JSON object with "better"', attempt=1)
    return messages[-1]["content"]


# case -> the prompt as the code sends it; a case named after a template shows that template, ``name@variant``
# another branch of the same call site
# the golden plan prompts were rendered with these bounds (PlanConfig's defaults then; params.yaml's now 3-5, 100-250)
GOLDEN_PLAN = PlanConfig(max_paragraphs=8, max_words=1000)
CASES: dict[str, Callable[[], str]] = {
    "select": _selector,
    "plan": lambda: plan_messages(INSTRUCTION, 3000, GOLDEN_PLAN, structured=True)[0]["content"],
    "plan@lines_no_length": lambda: plan_messages(INSTRUCTION, None, GOLDEN_PLAN, structured=False)[0]["content"],
    "plan_length_rule": lambda: render_prompt("plan_length_rule", required=3000),
    "plan_json_rule": lambda: render_prompt("plan_json_rule"),
    "plan_line_rule": lambda: render_prompt("plan_line_rule"),
    "write": lambda: section_messages(INSTRUCTION, PLAN, 3, WRITTEN, WriteConfig(history_words=12))[0]["content"],
    "write@first": lambda: section_messages(INSTRUCTION, PLAN, 1, [], WriteConfig())[0]["content"],
    "write@parallel": lambda: section_messages(INSTRUCTION, PLAN, 2, WRITTEN,
                                               WriteConfig(mode="parallel"))[0]["content"],
    "write_history": lambda: render_prompt("write_history", text=WRITTEN[0]),
    "write_follow": lambda: render_prompt("write_follow"),
    "write_continue": lambda: render_prompt("write_continue", words=137),
    "judge_data_rule": lambda: render_prompt("judge_data_rule", nonce="0123456789abcdef"),
    "judge_rating": lambda: rating_messages(INSTRUCTION, ANSWER)[0]["content"],
    "judge_rating_user": lambda: rating_messages(INSTRUCTION, ANSWER)[1]["content"],
    "judge_part": lambda: part_messages(INSTRUCTION, WRITTEN[0], ANSWER)[0]["content"],
    "judge_part_user": lambda: part_messages(INSTRUCTION, WRITTEN[0], ANSWER)[1]["content"],
    "judge_part_beginning": lambda: part_messages(INSTRUCTION, "", ANSWER)[1]["content"],
    "judge_pairwise": lambda: pair_messages(INSTRUCTION, ANSWER, WRITTEN[1])[0]["content"],
    "judge_pairwise_user": lambda: pair_messages(INSTRUCTION, ANSWER, WRITTEN[1])[1]["content"],
    "judge_criterion": lambda: criterion_messages(INSTRUCTION, ANSWER, "Tone: polite {but} firm")[0]["content"],
    "judge_criterion_user": lambda: criterion_messages(INSTRUCTION, ANSWER, "Tone: polite")[1]["content"],
    "judge_length_target": lambda: target_messages(INSTRUCTION)[0]["content"],
    "judge_length_target_user": lambda: target_messages(INSTRUCTION)[1]["content"],
    "reask": _reask,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_prompt_matches_its_golden_file(case: str) -> None:
    rendered = CASES[case]()
    path = GOLDEN / f"{case}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rendered.encode("utf-8"))
        pytest.fail(f"regenerated {path.relative_to(ROOT)}: review the diff, then run without UPDATE_GOLDEN")
    assert path.is_file(), f"no golden file {path.relative_to(ROOT)}: run with UPDATE_GOLDEN=1"
    assert rendered.encode("utf-8") == path.read_bytes()


def test_every_template_has_a_golden_case() -> None:
    names = {p.stem for p in TEMPLATES.glob("*.txt")}
    assert names <= {case.split("@")[0] for case in CASES}
    assert {p.stem for p in GOLDEN.glob("*.txt")} == set(CASES)


# -- the naming contract: every template used, every literal name a template, no computed names ------------------


def _sources() -> list[Path]:
    files = [p for d in ("longwriter", "stages", "bench") for p in (ROOT / d).rglob("*.py")]
    return [p for p in files if p.parent != TEMPLATES]


def _calls(path: Path) -> list[tuple[int, str | None]]:
    """Each ``render_prompt``/``load_prompt`` call in ``path`` (from the syntax tree, so not one written in a
    docstring): its line and its literal template name, None when the name is not a string literal."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if func in ("render_prompt", "load_prompt"):
                first = node.args[0] if node.args else None
                literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
                calls.append((node.lineno, first.value if literal else None))  # type: ignore[union-attr]
    return calls


def test_every_template_is_used_and_every_named_template_exists() -> None:
    used: set[str] = set()
    for path in _sources():
        names = {name for _, name in _calls(path) if name is not None}
        # the dvc.yaml deps generator reads the call sites with the contract's regex: it must see each of them
        assert names <= set(CALL_SITE.findall(path.read_text(encoding="utf-8"))), path
        used |= names
    templates = {p.stem for p in TEMPLATES.glob("*.txt")}
    assert not used - templates, f"call sites name templates that do not exist: {sorted(used - templates)}"
    assert not templates - used, f"templates no call site uses: {sorted(templates - used)}"


def test_every_call_site_names_its_template_literally() -> None:
    computed = [f"{path.relative_to(ROOT)}:{line}" for path in _sources() for line, name in _calls(path)
                if name is None or not re.fullmatch(r"[\w-]+", name)]
    assert not computed, f"a prompt name that is not a string literal (the dvc.yaml deps cannot see it): {computed}"


# -- the renderer ---------------------------------------------------------------------------------------------------


def test_a_missing_field_is_an_error_naming_template_and_field() -> None:
    with pytest.raises(ValueError, match=r"'write_continue'.*\{words\} not given"):
        render_prompt("write_continue")


def test_an_unused_field_is_an_error_naming_template_and_field() -> None:
    with pytest.raises(ValueError, match=r"'write_continue'.*no field \{colour\}"):
        render_prompt("write_continue", words=10, colour="red")


def test_an_unknown_template_is_an_error_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"no prompt template 'nope'.*plan_json_rule"):
        load_prompt("nope")
    with pytest.raises(ValueError, match="letters, digits"):
        load_prompt("../pyproject")


def test_braces_other_than_fields_are_text_and_values_are_not_read_again(monkeypatch) -> None:
    monkeypatch.setattr(prompts, "load_prompt", lambda name: 'JSON {"a": [1, {"b": 2}]}, {{field}}, {x}, {0}.')
    assert render_prompt("any", x="{x} {y}") == 'JSON {"a": [1, {"b": 2}]}, {field}, {x} {y}, {0}.'


def test_json_examples_are_sent_with_single_braces() -> None:
    assert render_prompt("plan_json_rule").startswith('Reply with a JSON object: {"paragraphs": [{"main_point"')
    assert '{"needs_long_answer": true or false' in _selector()


def test_a_template_file_loses_only_its_final_newline() -> None:
    raw = (TEMPLATES / "plan_line_rule.txt").read_text(encoding="utf-8")
    assert raw.endswith("...\n") and load_prompt("plan_line_rule") == raw[:-1]


def test_the_rating_prompt_asks_for_every_dimension() -> None:
    text = load_prompt("judge_rating")
    assert all(f'"{d}": score' in text for d in DIMENSIONS)


def test_the_templates_ship_with_the_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "*.txt" in config["tool"]["setuptools"]["package-data"]["longwriter.prompts"]


def test_the_call_site_reader_sees_computed_names_and_skips_docstrings(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text('"""Call render_prompt("nope") like so."""\nfrom longwriter.prompts import render_prompt\n'
                      'a = render_prompt("plan_json_rule")\nb = render_prompt(NAME)\nc = prompts.load_prompt(f"x")\n',
                      encoding="utf-8")
    assert _calls(source) == [(3, "plan_json_rule"), (4, None), (5, None)]
