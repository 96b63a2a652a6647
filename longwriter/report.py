"""A result you can read: the pipeline's figures from ``metrics/*.json`` on one screen.

    python -m longwriter.report                 # plain text: at most 40 lines of at most 120 columns
    python -m longwriter.report --md            # the same as Markdown (its tables as Markdown tables)
    python -m longwriter.report --metrics DIR   # another run's metrics directory

Three parts: the data (instructions selected, answers written, samples kept per language, words per sample,
what each data stage left out and why), training (each trainer's loss first -> last) and evaluation (one row per
model: LongBench-Write S, S_l, S_q, LongWrite-Ruler's maximum output length, the share of degenerate answers,
Elo). A ruler maximum that is only a lower bound (censored: the model reached the longest length asked) shows as
"≥ L"; metrics written before the censored flags existed count as censored when the maximum is the longest length
in their ``mean_words``. A metrics file or figure that is missing shows as "–". Only the stages' own
``metrics/<stage>.json`` files are read: the timing figures in ``metrics/timings/`` change on every run and are
no result.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MISSING = "–"
MAX_LINES = 40
MAX_WIDTH = 120
LANGS = ("en", "zh")
# stages that build training data, and the key of their per-reason counts of what they left out
DATA_FAILURES = (("select", "failures"), ("plan", "failures"), ("write", "failures"), ("postprocess", "dropped"),
                 ("general", "failures"), ("mix", "failures"), ("dpo_pairs", "failures"))
TRAINING_ORDER = ("base", "sft", "dpo", "grpo")  # the evaluation table's first rows, in the order they are trained
EVAL_HEADER = ["model", "S", "S_l", "S_q", "ruler max length", "effective", "degenerate share", "Elo (95% CI)"]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    title: str
    lines: list[tuple[str, str]] = field(default_factory=list)  # (label, text)
    table: Table | None = None


@dataclass
class Summary:
    source: str
    sections: list[Section]


# --------------------------------------------------------------------------------------------------- reading


def load_metrics(metrics_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every ``<stage>.json`` directly in ``metrics_dir`` (not ``timings/``), by stage; an unreadable file is left
    out, as if missing."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(metrics_dir).glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out[path.stem] = data
    return out


def get(obj: Any, *keys: Any) -> Any:
    """``obj[k1][k2]...``, or None where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def fmt(value: Any) -> str:
    """A figure as shown: "–" when missing, floats with at most 4 decimals (trailing zeros dropped)."""
    if value is None or isinstance(value, (dict, list)):
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return MISSING
        text = f"{value:.4f}".rstrip("0").rstrip(".")
        return "0" if text in ("-0", "") else text
    return str(value)


def ruler_max(ruler_model: Any, effective: bool = False) -> str:
    """A model's ruler max output length as shown: "≥ L" when censored (a lower bound, never its limit)."""
    suffix = "_effective" if effective else ""
    value = get(ruler_model, f"max_output_length{suffix}")
    if not isinstance(value, int) or isinstance(value, bool):
        return fmt(value)
    censored = get(ruler_model, f"max_output_length{suffix}_censored")
    if censored is None:  # older metrics: censored when no longer length was asked
        means = get(ruler_model, "mean_effective_words" if effective else "mean_words")
        asked = [int(k) for k in means if str(k).isdigit()] if isinstance(means, dict) else []
        censored = bool(asked) and value > 0 and value == max(asked)
    return f"≥ {value}" if censored else str(value)


def arrow(first: Any, last: Any) -> str:
    return MISSING if first is None and last is None else f"{fmt(first)} -> {fmt(last)}"


def counts(d: Any) -> str:
    """``{"en": 2, "zh": 1}`` as "en 2, zh 1"."""
    if not isinstance(d, dict) or not d:
        return MISSING
    return ", ".join(f"{k} {fmt(v)}" for k, v in d.items())


# --------------------------------------------------------------------------------------------------- summary


def summarize(metrics_dir: str | Path = "metrics") -> Summary:
    """The figures of ``metrics_dir`` in three sections: data, training, evaluation."""
    m = load_metrics(metrics_dir)
    return Summary(str(metrics_dir), [_data(m), _training(m), _evaluation(m)])


def _data(m: dict[str, dict[str, Any]]) -> Section:
    sel, plan, write = m.get("select"), m.get("plan"), m.get("write")
    post, export = m.get("postprocess"), m.get("export")
    lines = [
        ("selected", f"{fmt(get(sel, 'selected'))} of {fmt(get(sel, 'read'))} read "
                     f"({counts(get(sel, 'selected_by_lang'))})"),
        ("planned", f"{fmt(get(plan, 'planned'))} of {fmt(get(plan, 'instructions'))} instructions, "
                    f"{fmt(get(plan, 'paragraphs', 'total'))} paragraphs"),
        ("written", f"{fmt(get(write, 'written'))} answers, {fmt(get(write, 'words'))} words "
                    f"({fmt(get(write, 'written_to_planned'))} x planned)"),
    ]
    kept = ", ".join(f"{lang} {fmt(get(post, 'words_by_lang', lang, 'count'))}" for lang in LANGS)
    lines.append(("kept", f"{fmt(get(post, 'kept'))} of {fmt(get(post, 'written'))} written ({kept}); exported "
                          f"{fmt(get(export, 'examples'))} ({counts(get(export, 'by_lang'))})"))
    words = "; ".join(
        f"{lang} " + " / ".join(fmt(get(post, "words_by_lang", lang, k)) for k in ("min", "median", "max"))
        for lang in LANGS)
    lines.append(("words/sample", f"min / median / max: {words}"))
    lines.append(("left out", _failures(m)))
    return Section("Data", lines)


def _failures(m: dict[str, dict[str, Any]]) -> str:
    """Per data stage, its rows left out per reason: "plan unusable_output 1; postprocess repetitive 2"."""
    present = [(stage, get(m.get(stage), key)) for stage, key in DATA_FAILURES if stage in m]
    if not present:
        return MISSING
    parts = [f"{stage}: {counts(c)}" for stage, c in present if isinstance(c, dict) and any(c.values())]
    total = sum(v for _, c in present if isinstance(c, dict) for v in c.values() if isinstance(v, (int, float)))
    return f"{fmt(total)} rows" + (f" - {'; '.join(parts)}" if parts else "")


def _training(m: dict[str, dict[str, Any]]) -> Section:
    rows = []
    if "sft" in m:
        s = m["sft"]
        rows.append(["sft", arrow(get(s, "train_loss_first"), get(s, "train_loss_last")),
                     arrow(get(s, "validation_loss_first"), get(s, "validation_loss_last")), fmt(get(s, "steps")),
                     f"{fmt(get(s, 'train_tokens'))} tokens"])
    if "dpo" in m:
        d = m["dpo"]
        note = (f"{fmt(get(d, 'pairs'))} pairs, reward accuracy {fmt(get(d, 'reward_accuracy_last'))}"
                if get(d, "trained") is not False else "not trained (no pairs)")
        rows.append(["dpo", arrow(get(d, "loss_first"), get(d, "loss_last")), MISSING, fmt(get(d, "steps")), note])
    if "grpo" in m:
        g = m["grpo"]
        rows.append(["grpo", arrow(get(g, "first", "loss"), get(g, "last", "loss")), MISSING, fmt(get(g, "steps")),
                     f"reward {arrow(get(g, 'first', 'reward'), get(g, 'last', 'reward'))}"])
    if not rows:
        return Section("Training", [("trainers", MISSING)])
    return Section("Training", table=Table(["trainer", "loss first -> last", "validation loss", "steps", "note"],
                                           rows))


def _models(m: dict[str, dict[str, Any]]) -> list[str]:
    """Every model any evaluation stage measured: base, sft, dpo, grpo first, then the others as listed."""
    names: list[str] = []
    sources = [m.get("longbench"), m.get("ruler"), m.get("longbench_answer"), get(m.get("compare"), "elo", "ratings")]
    for source in sources:
        for name, value in (source or {}).items():
            if isinstance(value, dict) and name not in names and not name.endswith("_llm") and (
                    source is sources[3] or {"S", "answers", "max_output_length"} & set(value)):
                names.append(name)
    known = [name for name in TRAINING_ORDER if name in names]
    return known + [name for name in names if name not in known]


def _evaluation(m: dict[str, dict[str, Any]]) -> Section:
    lb, ruler, answers, compare = m.get("longbench"), m.get("ruler"), m.get("longbench_answer"), m.get("compare")
    rows = []
    for name in _models(m):
        degenerate = get(answers, name, "degenerate_share")
        if degenerate is None:
            degenerate = get(lb, name, "degenerate_share")
        rating = get(compare, "elo", "ratings", name)
        elo = fmt(get(rating, "elo"))
        if get(rating, "ci_low") is not None and get(rating, "ci_high") is not None:
            elo += f" [{fmt(rating['ci_low'])}, {fmt(rating['ci_high'])}]"
        rows.append([name, fmt(get(lb, name, "S")), fmt(get(lb, name, "S_l")), fmt(get(lb, name, "S_q")),
                     ruler_max(get(ruler, name)), ruler_max(get(ruler, name), effective=True),
                     fmt(degenerate), elo])
    lines = []
    pairs = [(k, v) for k, v in (compare or {}).items() if isinstance(v, dict) and "win_rate" in v]
    if pairs:
        lines.append(("pairwise", "; ".join(
            f"{k} win/tie/loss {fmt(v.get('win_rate'))}/{fmt(v.get('tie_rate'))}/{fmt(v.get('loss_rate'))}"
            for k, v in pairs)))
    if get(compare, "elo", "anchor"):
        lines.append(("Elo anchor", f"{compare['elo']['anchor']} = 1000 (compare.reference)"))
    criteria = m.get("criteria")
    if criteria is not None:
        scored = [(k, v) for k, v in criteria.items() if isinstance(v, dict) and "mean_score" in v]
        lines.append(("criteria (1-10)", "off (criteria.enabled: false)" if not criteria.get("enabled") else
                      "; ".join(f"{k} {fmt(v['mean_score'])} over {v['judged']} of {v['criteria']}"
                                for k, v in scored) or MISSING))
    targets = m.get("length_target")
    if targets is not None:
        t, a = targets.get("targets") or {}, targets.get("agreement") or {}
        lines.append(("length targets", "off (length_target.enabled: false)" if not targets.get("enabled") else
                      f"{fmt(t.get('predicted'))} of {fmt(t.get('needed'))} unstated; stated length hidden: "
                      f"in range {fmt(a.get('in_range_share'))} of {fmt(a.get('predicted'))}, "
                      f"S_l {fmt(a.get('S_l_of_stated'))}, rho {fmt(a.get('spearman'))}"))
    if not rows:
        return Section("Evaluation", lines or [("models", MISSING)])
    return Section("Evaluation", lines, Table(EVAL_HEADER, rows))


# --------------------------------------------------------------------------------------------------- rendering


def _fit(lines: list[str]) -> list[str]:
    """At most MAX_LINES lines of at most MAX_WIDTH columns."""
    lines = [line if len(line) <= MAX_WIDTH else line[:MAX_WIDTH - 1] + "…" for line in lines]
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES - 1] + [f"… ({len(lines) - MAX_LINES + 1} more lines)"]
    return lines


def _text_table(table: Table) -> list[str]:
    widths = [max(len(r[i]) for r in [table.header, *table.rows]) for i in range(len(table.header))]
    numeric = [i > 0 and all(_numeric(r[i]) for r in table.rows) for i in range(len(table.header))]

    def line(cells: list[str]) -> str:
        aligned = (c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric, strict=True))
        return ("  " + "  ".join(aligned)).rstrip()

    return [line(table.header), "  " + "  ".join("-" * w for w in widths), *(line(r) for r in table.rows)]


def _numeric(cell: str) -> bool:
    return cell == MISSING or cell.removeprefix("≥ ").replace(".", "", 1).lstrip("-").isdigit()


def render_text(summary: Summary) -> str:
    """Plain text, at most 40 lines of at most 120 columns."""
    out = [f"longwriter results from {summary.source}/ (timings, in {summary.source}/timings/, not shown)"]
    for section in summary.sections:
        out += ["", section.title]
        width = max((len(label) for label, _ in section.lines), default=0)
        for label, text in section.lines:
            out += textwrap.wrap(text, MAX_WIDTH, initial_indent=f"  {label.ljust(width)}  ",
                                 subsequent_indent=" " * (width + 4), break_on_hyphens=False) or [f"  {label}"]
        if section.table is not None:
            out += _text_table(section.table)
    return "\n".join(_fit(out)) + "\n"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(map(_md_cell, r)) + " |" for r in rows)]


def render_markdown(summary: Summary) -> str:
    """The same content as Markdown: a heading per section, its figures and its table as Markdown tables."""
    out = [f"# longwriter results (`{summary.source}/`)"]
    for section in summary.sections:
        out += ["", f"## {section.title}"]
        if section.lines:
            out += [""] + _md_table(["figure", "value"], [[label, text] for label, text in section.lines])
        if section.table is not None:
            out += [""] + _md_table(section.table.header, section.table.rows)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import click

    @click.command(help=__doc__)
    @click.option("--metrics", "metrics_dir", default="metrics", show_default=True, help="Metrics directory.")
    @click.option("--md", is_flag=True, help="Render as Markdown.")
    def main(metrics_dir: str, md: bool) -> None:
        summary = summarize(metrics_dir)
        click.echo(render_markdown(summary) if md else render_text(summary), nl=False)

    main()
