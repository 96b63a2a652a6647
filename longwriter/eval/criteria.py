"""Stage ``criteria``: each answer scored against its request's own criteria (WritingBench's format).

A criteria file holds one request per line, as the public WritingBench release writes it: ``index``, ``domain1``
(and optionally ``domain2``), ``lang`` (optional: the request's script decides), ``query``, and ``checklist``, a
list of criteria, each with a ``name`` and a ``criteria_description`` (further fields, such as the release's
score-band descriptions ``"1-2"`` .. ``"9-10"``, are shown to the judge too). Every model of eval.models answers
every request (eval.sampling, at most ``criteria.max_tokens`` tokens); the judge then scores each answer against
each of its request's criteria, one integer from 1 to 10 with a reason (schema-constrained, re-asked like every
judgement). The figures: per model, the mean score over every (answer, criterion), and the means per domain
(``domain1``) and per criterion name.

Every (model, request) ends as an answer or a failures row (``llm_error``, ``unanswered`` for saved answers
without it), and every (answer, criterion) as a score or a failures row. ``criteria.enabled: false`` (the laptop
default: the 135M judge's scores are noise and the default run's time is spent) writes the empty tables and
says so in the metrics.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from longwriter.errors import InputError
from longwriter.eval.answers import EvalConfig
from longwriter.failures import Reason, failure_row, reason_counts, write_failures
from longwriter.files import jsonl_objects, write_metrics
from longwriter.judge import JudgeConfig, failure_reason, score_criterion
from longwriter.language import languages
from longwriter.llm import ClientSettings, LLMCallError, LLMClient, run_with_llm
from longwriter.llm.runner import run_each
from longwriter.schemas import CriteriaAnswers, CriteriaScores, empty, write_checked
from longwriter.wordcount import count_words

STAGE = "criteria"


@dataclass(frozen=True)
class CriteriaConfig:
    # off by default on a laptop (see the module's docstring); on: every request of the file, every criterion
    enabled: bool = False
    input: str = "data/eval/criteria.jsonl"
    # the first N requests of the file (null: all)
    requests: int | None = None
    # each answer's token limit (eval.sampling's other settings apply)
    max_tokens: int = 1024

    def __post_init__(self) -> None:
        if self.requests is not None and (isinstance(self.requests, bool) or not isinstance(self.requests, int)
                                          or self.requests < 1):
            raise ValueError(f"requests must be a positive integer or null, got {self.requests!r}")
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")


@dataclass(frozen=True)
class Request:
    index: int
    domain1: str
    domain2: str
    lang: str
    query: str
    criteria: tuple[tuple[str, str], ...]  # (name, what the judge is shown of it)


def _criterion_text(item: dict[str, Any]) -> str:
    """A checklist item as the judge reads it: its description, then any other field (score bands) by name."""
    lines = [f"{item['name']}: {item['criteria_description']}"]
    lines += [f"- {k}: {v}" for k, v in item.items() if k not in ("name", "criteria_description")
              and isinstance(v, str | int | float) and not isinstance(v, bool)]
    return "\n".join(lines)


def read_criteria(path: str | Path) -> list[Request]:
    """The requests of a criteria file; InputError names the file, the row and the field of what is wrong."""
    path = Path(path)
    requests: list[Request] = []
    seen: set[int] = set()
    for row, obj in jsonl_objects(path):
        for name, kind in (("index", int), ("domain1", str), ("query", str), ("checklist", list)):
            value = obj.get(name)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is str and not value.strip()):
                raise InputError(path, f"must be a {'non-empty string' if kind is str else kind.__name__}",
                                 row=row, column=name)
        if obj["index"] < 0 or obj["index"] in seen:
            raise InputError(path, "must be a non-negative integer, unique in the file", row=row, column="index")
        seen.add(obj["index"])
        criteria: list[tuple[str, str]] = []
        for i, item in enumerate(obj["checklist"]):
            if not (isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"].strip()
                    and isinstance(item.get("criteria_description"), str)):
                raise InputError(path, f"item {i + 1} needs a 'name' and a 'criteria_description' (strings)",
                                 row=row, column="checklist")
            criteria.append((item["name"].strip(), _criterion_text(item)))
        names = [n for n, _ in criteria]
        if not criteria or len(set(names)) != len(names):
            raise InputError(path, "needs at least one criterion, with distinct names", row=row, column="checklist")
        lang = obj["lang"] if obj.get("lang") in ("en", "zh") else str(languages(pl.Series([obj["query"]]))[0])
        requests.append(Request(obj["index"], obj["domain1"].strip(), str(obj.get("domain2") or "").strip(), lang,
                                obj["query"], tuple(criteria)))
    if not requests:
        raise InputError(path, "no requests")
    return requests


def _means(scores: pl.DataFrame, by: str) -> dict[str, float]:
    grouped = scores.group_by(by).agg(pl.col("score").mean().round(3)).sort(by)
    return dict(grouped.iter_rows())


def criteria_metrics(answers: pl.DataFrame, scores: pl.DataFrame, requests: list[Request],
                     models: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    asked = sum(len(r.criteria) for r in requests)
    for model in models:
        mine, answered = scores.filter(pl.col("model") == model), answers.filter(pl.col("model") == model)
        criteria_answered = sum(len(r.criteria) for r in requests if r.index in set(answered["index"].to_list()))
        out[model] = {
            "requests": len(requests), "answers": answered.height, "criteria": asked,
            "judged": mine.height, "judge_failed": criteria_answered - mine.height,
            # over every (answer, criterion) the judge scored, 1..10; an unanswered request has no score
            "mean_score": round(float(mine["score"].mean()), 3) if mine.height else None,
            "by_domain": _means(mine, "domain1"), "by_criterion": _means(mine, "criterion"),
        }
    return out


def run_criteria(cfg: CriteriaConfig, eval_cfg: EvalConfig, judge: JudgeConfig, settings: ClientSettings,
                 answers_out: str | Path, scores_out: str | Path, failures: str | Path, metrics: str | Path,
                 timings: str | Path | None = None) -> dict[str, Any]:
    """The whole stage (see the module's docstring)."""
    if not cfg.enabled:
        write_checked(empty(CriteriaAnswers), CriteriaAnswers, answers_out)
        write_checked(empty(CriteriaScores), CriteriaScores, scores_out)
        write_failures([], failures)
        result: dict[str, Any] = {"enabled": False}
        write_metrics(result, metrics, timings)
        return result
    requests = read_criteria(cfg.input)
    if cfg.requests is not None:
        requests = requests[:cfg.requests]
    sampling = dataclasses.replace(eval_cfg.sampling, max_tokens=cfg.max_tokens)
    answer_rows: list[dict[str, Any]] = []
    failure_rows: list[dict[str, Any]] = []
    answer_stats: dict[str, Any] = {}
    for model in eval_cfg.models:
        async def answer_all(llm: LLMClient, name: str = model.name) -> list[dict[str, Any]]:
            async def one(r: Request) -> dict[str, Any]:
                try:
                    c = await llm.complete([{"role": "user", "content": r.query}], sampling)
                except LLMCallError as e:
                    reason = Reason.UNANSWERED if str(e).startswith("unanswered:") else Reason.LLM_ERROR
                    return failure_row(STAGE, reason, str(e), instruction_id=f"{name}/{r.index}",
                                       attempts=e.attempts)
                return {"model": name, "index": r.index, "domain1": r.domain1, "domain2": r.domain2,
                        "lang": r.lang, "prompt": r.query, "text": c.text, "words": count_words(c.text),
                        "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens}
            return await run_each(requests, one, desc=f"criteria {name}", unit="answer")

        rows, stats = run_with_llm(model.spec, settings, answer_all)
        answer_stats[model.name] = stats.as_metrics()
        for row in rows:
            (failure_rows if "error" in row else answer_rows).append(row)
    answers = pl.DataFrame(answer_rows, schema=empty(CriteriaAnswers).schema).sort("model", "index")
    write_checked(answers, CriteriaAnswers, answers_out)

    by_index = {r.index: r for r in requests}
    jobs = [(a, name, text) for a in answers.iter_rows(named=True) for name, text in by_index[a["index"]].criteria]

    async def judge_all(llm: LLMClient) -> list[dict[str, Any]]:
        async def one(job: tuple[dict[str, Any], str, str]) -> dict[str, Any]:
            a, name, text = job
            result, attempts, truncated, error = await score_criterion(llm, a["prompt"], a["text"], text, judge)
            if result is None:
                return failure_row(STAGE, failure_reason(error or "no score"), error or "no score",
                                   instruction_id=f"{a['model']}/{a['index']}/{name}", attempts=attempts)
            return {"model": a["model"], "index": a["index"], "domain1": a["domain1"], "domain2": a["domain2"],
                    "criterion": name, "score": result[0], "reason": result[1], "attempts": attempts,
                    "truncated": truncated}
        return await run_each(jobs, one, desc="criteria judge", unit="criterion")

    judged, judge_stats = run_with_llm(judge.model, settings, judge_all) if jobs else ([], None)
    scores = pl.DataFrame([r for r in judged if "error" not in r],
                          schema=empty(CriteriaScores).schema).sort("model", "index", "criterion")
    failure_rows += [r for r in judged if "error" in r]
    write_checked(scores, CriteriaScores, scores_out)
    write_failures(failure_rows, failures)
    result = {"enabled": True, **criteria_metrics(answers, scores, requests, [m.name for m in eval_cfg.models]),
              "failures": reason_counts(failure_rows)}
    for name, stats in answer_stats.items():
        result[name]["llm"] = stats
    if judge_stats is not None:
        result["judge_llm"] = judge_stats.as_metrics()
    write_metrics(result, metrics, timings)
    return result
