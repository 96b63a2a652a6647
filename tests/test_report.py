"""longwriter.report: the committed metrics on one screen (<= 40 lines, <= 120 columns), its figures equal to the
JSON's, "–" for a missing file or key, and the same as Markdown tables with --md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from longwriter.report import MISSING, render_markdown, render_text, summarize

ROOT = Path(__file__).parent.parent
METRICS = ROOT / "metrics"


def load(name: str, metrics: Path = METRICS) -> dict[str, Any]:
    return json.loads((metrics / f"{name}.json").read_text(encoding="utf-8"))


def shown(v: float | int) -> str:
    """A figure as the report shows it: rounded to 4 decimals, no trailing zeros."""
    return f"{round(v, 4):.12g}" if isinstance(v, float) else str(v)


def section(text: str, title: str) -> str:
    """The lines of one section of the text (from its title to the next blank line)."""
    lines = text.splitlines()
    start = lines.index(title)
    end = next((i for i in range(start, len(lines)) if not lines[i]), len(lines))
    return "\n".join(lines[start + 1:end])


def cells(text: str, first: str) -> list[str]:
    """The cells of the text table row whose first cell is ``first`` ("≥ 100" is one cell)."""
    rows = [line.replace("≥ ", "≥\0").split() for line in text.splitlines() if line.split()[:1] == [first]]
    assert len(rows) == 1, (first, rows)
    return [cell.replace("≥\0", "≥ ") for cell in rows[0]]


def ruler_cell(m: dict[str, Any], effective: bool = False) -> str:
    """A ruler maximum as the report shows it: "≥ L" when censored (by its flag; metrics without the flag: when it
    is the longest length in its mean words)."""
    suffix = "_effective" if effective else ""
    value = m[f"max_output_length{suffix}"]
    censored = m.get(f"max_output_length{suffix}_censored")
    if censored is None:
        asked = [int(k) for k in m["mean_effective_words" if effective else "mean_words"]]
        censored = value > 0 and value == max(asked)
    return f"≥ {value}" if censored else str(value)


def md_section(md: str, title: str) -> str:
    return md.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def md_row(md: str, first: str) -> list[str]:
    rows = [[c.strip() for c in line.strip("|").split("|")]
            for line in md.splitlines() if line.startswith(f"| {first} |")]
    assert len(rows) == 1, (first, rows)
    return rows[0]


def check_size(text: str) -> None:
    lines = text.splitlines()
    assert len(lines) <= 40, len(lines)
    assert max(map(len, lines)) <= 120, max(lines, key=len)


def test_the_committed_metrics_fit_one_screen_and_show_their_figures() -> None:
    text = render_text(summarize(METRICS))
    check_size(text)
    titles = ("Data", "Training", "Evaluation")
    assert tuple(line for line in text.splitlines() if line in titles) == titles
    # data: samples kept per language, words per sample min / median / max
    post, select = load("postprocess"), load("select")
    kept = ", ".join(f"{lang} {post['words_by_lang'][lang]['count']}" for lang in ("en", "zh"))
    assert f"{post['kept']} of {post['written']} written ({kept})" in text
    assert f"{select['selected']} of {select['read']} read" in text
    for lang in ("en", "zh"):
        words = post["words_by_lang"][lang]
        figures = " / ".join(shown(words[k]) if k in words else MISSING for k in ("min", "median", "max"))
        assert f"{lang} {figures}" in text
    # every reason a data stage left rows out, with its count
    flat = " ".join(text.split())
    for stage, key in (("plan", "failures"), ("postprocess", "dropped"), ("general", "failures"),
                       ("dpo_pairs", "failures")):
        reasons = load(stage).get(key, {})
        if any(reasons.values()):
            assert f"{stage}: " + ", ".join(f"{r} {n}" for r, n in reasons.items()) in flat
    # training: loss first -> last
    sft, dpo, grpo = load("sft"), load("dpo"), load("grpo")
    train = section(text, "Training")
    assert cells(train, "sft")[1:4] == [shown(sft["train_loss_first"]), "->", shown(sft["train_loss_last"])]
    if dpo.get("trained", True):
        assert cells(train, "dpo")[1:4] == [shown(dpo["loss_first"]), "->", shown(dpo["loss_last"])]
    else:  # no pairs (the laptop's prompts ask more words than dpo_pairs' ceiling holds): said, not made up
        assert cells(train, "dpo")[1:2] == ["–"] and "not trained" in " ".join(cells(train, "dpo"))
    def loss(x: float) -> str:  # a loss that rounds to -0 prints as 0
        return "0" if shown(x) == "-0" else shown(x)

    assert cells(train, "grpo")[1:4] == [loss(grpo["first"]["loss"]), "->", loss(grpo["last"]["loss"])]
    # evaluation: one row per model
    lb, ruler, answers, elo = load("longbench"), load("ruler"), load("longbench_answer"), load("compare")["elo"]
    models = [m for m in lb if isinstance(lb[m], dict) and "S" in lb[m]]
    assert models
    for model in models:
        row = cells(section(text, "Evaluation"), model)
        assert row[:8] == [model, shown(lb[model]["S"]), shown(lb[model]["S_l"]), shown(lb[model]["S_q"]),
                           ruler_cell(ruler[model]), ruler_cell(ruler[model], effective=True),
                           shown(answers[model]["degenerate_share"]), shown(elo["ratings"][model]["elo"])]


def test_missing_files_and_keys_show_a_dash(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    assert MISSING in render_text(summarize(metrics))  # nothing at all
    check_size(render_text(summarize(metrics)))
    for name in ("postprocess", "longbench", "sft"):
        shutil.copy(METRICS / f"{name}.json", metrics)
    lb = load("longbench", metrics)
    model = next(m for m in lb if isinstance(lb[m], dict) and "S" in lb[m])
    del lb[model]["S_q"]
    (metrics / "longbench.json").write_text(json.dumps(lb))
    (metrics / "select.json").write_text("{not json")  # unreadable: as if missing
    # the timings are ignored, whatever they hold
    (metrics / "timings").mkdir()
    (metrics / "timings" / "sft.json").write_text(json.dumps({"runtime_s": 12345.5}))
    text = render_text(summarize(metrics))
    check_size(text)
    row = cells(section(text, "Evaluation"), model)
    assert row[1:3] == [shown(lb[model]["S"]), shown(lb[model]["S_l"])]
    assert row[3:6] == [MISSING] * 3 and row[7:] == [MISSING]  # S_q, ruler max and effective lengths, Elo
    assert row[6] == shown(lb[model]["degenerate_share"])  # without longbench_answer.json: longbench's own
    assert f"{MISSING} of {MISSING} read" in text
    assert cells(section(text, "Training"), "sft")[1] == shown(load("sft")["train_loss_first"])
    assert "dpo" not in section(text, "Training").split() and "12345" not in text
    # a metrics directory that does not exist is all dashes, not an error
    assert MISSING in render_text(summarize(tmp_path / "absent"))


def test_markdown_renders_the_same_figures_as_tables() -> None:
    summary = summarize(METRICS)
    md = render_markdown(summary)
    tables = re.findall(r"(?m)^\|.*\|\n\|(?:---\|)+\n(?:\|.*\|\n)+", md)
    assert len(tables) >= 3, md  # data figures, training, evaluation
    assert {"## Data", "## Training", "## Evaluation"} <= set(md.splitlines())
    evaluation, data = md_section(md, "Evaluation"), md_section(md, "Data")
    header = md_row(evaluation, "model")
    assert header[:4] == ["model", "S", "S_l", "S_q"]
    lb, sft = load("longbench"), load("sft")
    for model in (m for m in lb if isinstance(lb[m], dict) and "S" in lb[m]):
        assert md_row(evaluation, model)[1:4] == [shown(lb[model][k]) for k in ("S", "S_l", "S_q")]
    loss = f"{shown(sft['train_loss_first'])} -> {shown(sft['train_loss_last'])}"
    assert md_row(md_section(md, "Training"), "sft")[1] == loss
    # the same content as the text
    text = " ".join(render_text(summary).split())
    for label, value in ((r[0], r[1]) for r in (md_row(data, label) for label in ("selected", "kept", "words/sample"))):
        assert f"{label} {value}" in text


def test_a_censored_ruler_maximum_shows_as_at_least(tmp_path: Path) -> None:
    """A maximum that is only a lower bound (the model reached the longest length asked) is never shown bare."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    ruler = {
        "a": {"answers": 3, "max_output_length": 1000, "max_output_length_censored": True,
              "max_output_length_effective": 300, "max_output_length_effective_censored": False,
              "mean_words": {"100": 150.0, "300": 400.0, "1000": 900.0}},
        "b": {"answers": 3, "max_output_length": 300, "max_output_length_censored": False,
              "max_output_length_effective": 0, "max_output_length_effective_censored": False,
              "mean_words": {"100": 150.0, "300": 400.0, "1000": 100.0}},
        # metrics written before the flags: censored when the maximum is the longest length in mean_words
        "c": {"answers": 2, "max_output_length": 300, "max_output_length_effective": 100,
              "mean_words": {"100": 150.0, "300": 400.0}, "mean_effective_words": {"100": 90.0, "300": 100.0}},
        "decision_cap": {"ratio": 0.8, "answers_per_length": 1, "max_tokens": 2560},  # stage-wide, no model
    }
    (metrics / "ruler.json").write_text(json.dumps(ruler), encoding="utf-8")
    summary = summarize(metrics)
    text = render_text(summary)
    check_size(text)
    evaluation = section(text, "Evaluation")
    assert [cells(evaluation, name)[4:6] for name in ("a", "b", "c")] == [["≥ 1000", "300"], ["300", "0"],
                                                                         ["≥ 300", "100"]]
    assert "decision_cap" not in evaluation
    # right-aligned with the plain figures: the column's cells end together
    lines = [line for line in evaluation.splitlines() if line.split()[:1] in (["a"], ["b"], ["c"])]
    ends = {line.index(cell) + len(cell) for line, cell in zip(lines, ("≥ 1000", "  300", "≥ 300"), strict=True)}
    assert len(ends) == 1, lines
    md = md_section(render_markdown(summary), "Evaluation")
    assert md_row(md, "a")[4:6] == ["≥ 1000", "300"] and md_row(md, "c")[4] == "≥ 300"


@pytest.mark.parametrize("md", [False, True])
def test_the_command_line(md: bool, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "longwriter.report", "--metrics", str(METRICS)] + (["--md"] if md else [])
    out = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    summary = summarize(METRICS)
    assert out == (render_markdown(summary) if md else render_text(summary))


def readme_summary(readme: str) -> str:
    """The README's copy of the summary: the text block between its summary markers."""
    block = readme.split("<!-- summary:start -->\n", 1)[1].split("<!-- summary:end -->", 1)[0]
    return block.removeprefix("```text\n").removesuffix("```\n")


def test_the_readme_shows_the_summary_of_the_committed_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refresh after a run: the block between the markers is `python -m longwriter.report` in a text fence."""
    monkeypatch.chdir(ROOT)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme_summary(readme) == render_text(summarize("metrics")).rstrip("\n") + "\n"
