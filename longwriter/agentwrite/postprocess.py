"""Stage ``postprocess``: from written paragraphs to chat-format long-output training samples.

As in the paper: strip the labels a model puts at a paragraph's start ("Paragraph 1:", "第1段"), and drop
answers that came out too short or whose plan collapsed into too many steps. Beyond the paper: drop answers
that degenerate into repetition, which small models do, and answers with a paragraph that is not complete
text (``longwriter.completeness``: a refusal, empty, filtered or cut off mid-sentence). Lines are removed only
at a paragraph's start (labels, plan echoes, preambles such as "Sure, here is paragraph 2:"), and every removal
is counted per sample (``lines_removed``): a line that mentions a word count inside the text stays.
Every dropped answer has a failures row with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.checks import non_negative, positive_int, within
from longwriter.completeness import incomplete_reason, strip_preamble
from longwriter.failures import Reason, failure_row, reason_counts, write_failures
from longwriter.files import read_table, write_metrics
from longwriter.repetition import repetition
from longwriter.schemas import (
    Instructions,
    LongSamples,
    Plans,
    Sections,
    empty,
    validate,
    write_checked,
)
from longwriter.wordcount import count_words


@dataclass(frozen=True)
class PostprocessConfig:
    # an answer below this fraction of its planned words is too short
    min_words_ratio: float = 0.5
    # and one below this many words (None: no floor): a long-output sample is long
    min_words: int | None = 1000
    # more sections than this: the plan collapsed into too many steps
    max_sections: int = 40
    # share of repeated n-grams above which an answer counts as degenerate
    max_repetition: float = 0.3
    repetition_n: int = 4

    def __post_init__(self) -> None:
        non_negative("min_words_ratio", self.min_words_ratio)
        positive_int("min_words", self.min_words, optional=True)
        positive_int("max_sections", self.max_sections)
        within("max_repetition", self.max_repetition, 0, 1)
        positive_int("repetition_n", self.repetition_n)


_NUM = r"(?:\d+|[一二三四五六七八九十百]+)"
# A label at the very start of a paragraph: optional markdown heading/bold, then the label, then separators.
_LABEL_EN = re.compile(rf"^\s*(?:#+\s*)?[*_]*\s*(?:paragraph|section)\s*{_NUM}\s*[*_]*\s*"
                       r"(?:[:：.)\-–—]\s*|\s+(?=\S)|$)", re.IGNORECASE)
_LABEL_ZH = re.compile(rf"^\s*(?:#+\s*)?[*_]*\s*第\s*{_NUM}\s*(?:段|部分)\s*[*_]*\s*(?:[:：、.\-–—]\s*)?")
# A line that only echoes the plan ("Main Point: ... - Word Count: 300 words").
_PLAN_ECHO = re.compile(r"^\s*[*_#\s-]*(?:main\s*point|word\s*count|主要内容|字数)\s*[:：].*$", re.IGNORECASE)
# At a paragraph's start: lines that echo the prompt's scaffolding instead of writing (plan lines with their
# word counts, delimiters, section headings of the prompt). Small models copy these before they write.
_ECHO_LINE = re.compile(r"^\s*(?:<<<|>>>|```\w*|\(nothing yet\)|#+\s*(?:writing instruction|plan of the whole "
                        r"piece|text written so far.*|your task)\s*|.*\b(?:word\s*count|字数)\s*[:：].*)\s*$",
                        re.IGNORECASE)


def strip_label(text: str) -> tuple[str, bool]:
    """Remove a leading "Paragraph N"-style label (and plan-echo lines) from a paragraph.

    Returns the cleaned text and whether anything was removed. A heading that was only the label
    disappears with its line; a label followed by real text keeps the text.
    """
    original = text
    lines = text.lstrip("\n").split("\n")
    while lines and _PLAN_ECHO.match(lines[0]):
        lines.pop(0)
    if lines:
        first = lines[0]
        for pattern in (_LABEL_EN, _LABEL_ZH):
            m = pattern.match(first)
            if m:
                rest = first[m.end():].strip().strip("*_").strip()
                rest = re.sub(r"^[-–—:：]\s*", "", rest)
                if _PLAN_ECHO.match(rest):
                    rest = ""
                lines[0] = rest
                break
        while lines and (not lines[0].strip() or _PLAN_ECHO.match(lines[0])):
            lines.pop(0)
    cleaned = "\n".join(lines).strip()
    return cleaned, cleaned != original.strip()


def clean_section(text: str) -> tuple[str, bool, int]:
    """``strip_label`` plus removal of a preamble and of echoed prompt scaffolding at the paragraph's start.

    Returns the text, whether a label was stripped, and how many lines (or line prefixes) were removed. Lines
    after the first line of real text are never touched.
    """
    removed = 0
    lines = text.strip("\n").split("\n")
    while True:
        while lines and (not lines[0].strip() or _ECHO_LINE.match(lines[0])):
            removed += bool(lines.pop(0).strip())
        if not lines:
            break
        rest, had_preamble = strip_preamble("\n".join(lines))
        if not had_preamble:
            break
        removed += 1
        lines = rest.split("\n")
    cleaned, labelled = strip_label("\n".join(lines))
    return re.sub(r"\n{3,}", "\n\n", cleaned), labelled, removed + labelled


def _distribution(values: list[int]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    s = pl.Series(values)
    return {"count": len(values), "min": int(s.min()), "p25": float(s.quantile(0.25)), "median": float(s.median()),
            "p75": float(s.quantile(0.75)), "max": int(s.max()), "mean": round(float(s.mean()), 1)}


def build_samples(instructions: pl.DataFrame, plans: pl.DataFrame, sections: pl.DataFrame,
                  cfg: PostprocessConfig) -> tuple[pl.DataFrame, list[dict[str, Any]], dict[str, int]]:
    """Join, clean and filter. Returns samples, drop records, and counts of labels stripped."""
    planned = {iid: (n, words) for iid, n, words in plans.group_by("instruction_id").agg(
        pl.len(), pl.col("words").sum()).iter_rows()}
    by_id: dict[str, list[tuple[int, str, str]]] = {}
    for row in sections.sort("instruction_id", "section").iter_rows(named=True):
        by_id.setdefault(row["instruction_id"], []).append((row["section"], row["text"], row["finish_reason"]))
    samples, dropped = [], []
    labels = lines_removed = 0
    for inst in instructions.sort("id").iter_rows(named=True):
        iid = inst["id"]
        if iid not in by_id:
            continue  # never planned or never written: already in an earlier stage's failures table
        n_planned, planned_words = planned.get(iid, (0, 0))
        texts, removed_here, unfit = [], 0, None
        for n, text, finish in by_id[iid]:
            cleaned, stripped, removed = clean_section(text)
            labels += stripped
            removed_here += removed
            texts.append(cleaned)
            why = incomplete_reason(cleaned, finish)
            if why is not None and unfit is None:
                unfit = (n, why, f"{why}: section {n} (finish_reason {finish}): ...{cleaned[-80:]!r}")
        lines_removed += removed_here
        answer = "\n\n".join(texts)
        words = count_words(answer)
        reason, section = None, None
        if len(texts) != n_planned:
            reason = (Reason.INCOMPLETE, f"{len(texts)} of {n_planned} sections written")
        elif unfit is not None:
            section, reason = unfit[0], unfit[1:]
        elif len(texts) > cfg.max_sections:
            reason = (Reason.COLLAPSED, f"{len(texts)} sections > max_sections {cfg.max_sections}")
        elif words < cfg.min_words_ratio * planned_words:
            reason = (Reason.TOO_SHORT, f"{words} words < {cfg.min_words_ratio} x {planned_words} planned")
        elif cfg.min_words is not None and words < cfg.min_words:
            reason = (Reason.TOO_SHORT, f"{words} words < min_words {cfg.min_words}")
        elif (rep := repetition(answer, cfg.repetition_n)) > cfg.max_repetition:
            reason = (Reason.REPETITIVE, f"{rep:.2f} of {cfg.repetition_n}-grams repeated > {cfg.max_repetition}")
        if reason is not None:
            dropped.append(failure_row("postprocess", *reason, instruction_id=iid, section=section))
            continue
        samples.append({"id": iid, "lang": inst["lang"], "source": inst["source"],
                        "messages": [{"role": "user", "content": inst["prompt"]},
                                     {"role": "assistant", "content": answer}],
                        "words": words, "planned_words": planned_words, "sections": len(texts),
                        "lines_removed": removed_here})
    frame = pl.DataFrame(samples, schema=empty(LongSamples).schema)
    return frame, dropped, {"labels_stripped": labels, "lines_removed": lines_removed}


def run_postprocess(instructions_path: str | Path, plans_path: str | Path, sections_path: str | Path,
                    output: str | Path, failures: str | Path, metrics: str | Path,
                    cfg: PostprocessConfig, timings: str | Path | None = None) -> dict[str, Any]:
    """The whole stage: build samples, write them, the drop records and metrics."""
    instructions = validate(read_table(instructions_path), Instructions, instructions_path)
    plans = validate(read_table(plans_path), Plans, plans_path)
    sections = validate(read_table(sections_path), Sections, sections_path)
    samples, dropped, extra = build_samples(instructions, plans, sections, cfg)
    write_checked(samples, LongSamples, output)
    write_failures(dropped, failures)
    result = {
        "written": sections["instruction_id"].n_unique() if sections.height else 0,
        "kept": samples.height,
        "dropped": reason_counts(dropped),
        "samples_with_lines_removed": int((samples["lines_removed"] > 0).sum()) if samples.height else 0,
        **extra,
        "words_by_lang": {lang: _distribution(samples.filter(pl.col("lang") == lang)["words"].to_list())
                          for lang in ("zh", "en")},
        "words_total": int(samples["words"].sum()) if samples.height else 0,
    }
    write_metrics(result, metrics, timings)
    return result
