"""dvc.yaml against the stage scripts: each stage declares exactly the params sections it reads, the files it
reads are deps and the files it writes are outs (never both), and the response cache is nobody's output."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import click
import pytest
import yaml

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


def test_no_path_is_written_by_two_stages():
    written = [p for s in STAGES.values() for p in paths(s.get("outs")) | paths(s.get("metrics"))
               | paths(s.get("plots"))]
    assert len(written) == len(set(written))
