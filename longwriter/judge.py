"""The LLM judge: LongBench-Write's six-dimension quality rating, and pairwise comparison of two answers.

The judge's reply is constrained by a JSON schema and then checked in code (a grammar may let an out-of-range
integer through, a backend without structured output may wrap the JSON in prose). The request and the answer
travel as data between tags named with a hash of their content: an answer that tells the judge what to do,
what scale to use or which format to answer in is still only text being rated, and it cannot close its own
tag. Whatever the text says, the result is six integers in 1..5 or a recorded failure.

``judge.prompt_file`` replaces that prompt for ratings with a user's template (e.g. the public LongWriter
release's judge prompt, imported with ``dvc import-url``): ``$INST$`` and ``$RESPONSE$`` are replaced by the
request and the answer, and the result is sent verbatim as one user message, with ``judge.prompt_sampling`` and
no JSON schema (the template says what to reply), as in the paper. The reply is parsed, range-checked and
re-asked exactly as the default prompt's.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import polars as pl

from longwriter.errors import InputError
from longwriter.failures import Reason
from longwriter.llm import ClientSettings, LLMCallError, LLMClient, ModelSpec, Sampling, run_with_llm
from longwriter.llm.runner import run_each
from longwriter.llm.structured import Unusable, ask_until_usable, extract_json
from longwriter.prompts import render_prompt
from longwriter.wordcount import count_words

T = TypeVar("T")

DIMENSIONS = ("relevance", "accuracy", "coherence", "clarity", "breadth_and_depth", "reading_experience")

RATING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"analysis": {"type": "string"},
                   **{d: {"type": "integer", "enum": [1, 2, 3, 4, 5]} for d in DIMENSIONS}},
    "required": ["analysis", *DIMENSIONS],
    "additionalProperties": False,
}

PAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"analysis": {"type": "string"}, "better": {"type": "string", "enum": ["A", "B", "tie"]}},
    "required": ["analysis", "better"],
    "additionalProperties": False,
}

# a request's own criterion (the WritingBench format, ``longwriter.eval.criteria``): one integer in 1..10
CRITERION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": "string"}, "score": {"type": "integer", "enum": list(range(1, 11))}},
    "required": ["reason", "score"],
    "additionalProperties": False,
}

# a prompt's length target (``longwriter.length_target``): a word range
TARGET_MAX_WORDS = 100000
TARGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reason": {"type": "string"},
                   "min_words": {"type": "integer", "minimum": 1, "maximum": TARGET_MAX_WORDS},
                   "max_words": {"type": "integer", "minimum": 1, "maximum": TARGET_MAX_WORDS}},
    "required": ["reason", "min_words", "max_words"],
    "additionalProperties": False,
}


@dataclass(frozen=True)
class JudgeConfig:
    """The ``judge`` section: the model that rates answers, shared by longbench, compare and DPO pairs."""

    model: ModelSpec = field(default_factory=ModelSpec)
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.0, top_p=1.0, max_tokens=768))
    # an unusable reply is asked again (quoted back with its fault, warmer) up to this many times in all, then
    # recorded as a failure
    max_attempts: int = 3
    # answers longer than this are shown to the judge as head and tail (flagged); None: always whole
    max_answer_words: int | None = None
    # a rating prompt template (placeholders ``PLACEHOLDERS``) sent as one user message instead of the default
    # prompt, with ``prompt_sampling`` (the paper's: temperature 0.5) and no schema; None: the default prompt
    prompt_file: str | None = None
    prompt_sampling: Sampling = field(default_factory=lambda: Sampling(temperature=0.5, top_p=1.0, max_tokens=1024))

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if self.max_answer_words is not None and self.max_answer_words < 10:
            raise ValueError("max_answer_words must be >= 10 (or null)")


class UnusableJudgement(Unusable):
    """The judge's reply does not give what was asked (no JSON, a missing or out-of-range score...)."""


@dataclass(frozen=True)
class Rating:
    scores: dict[str, int]
    analysis: str


@dataclass(frozen=True)
class RatingOutcome:
    rating: Rating | None
    attempts: int
    truncated: bool
    error: str | None = None

    @property
    def reason(self) -> Reason | None:
        """The failures-table reason when there is no rating."""
        return None if self.error is None else failure_reason(self.error)


_UNUSABLE = "unusable judgement"


def failure_reason(error: str) -> Reason:
    """The failures-table reason of a judge error: replies that never parsed, or a call that failed."""
    return Reason.UNUSABLE_OUTPUT if error.startswith(_UNUSABLE) else Reason.LLM_ERROR


def _key(name: str) -> str:
    return re.sub(r"[^a-z]+", "_", name.lower()).strip("_")


def _integer(value: Any) -> int | None:
    """A reply's integer as a backend without a schema may write it (7, 7.0, "7"); None for anything else (a
    bool, 7.5, "seven", "²": str.isdigit would take it)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+\s*", value):
        return int(value)
    return value if isinstance(value, int) else None


def _score(value: Any, name: str) -> int:
    if (number := _integer(value)) is None:
        raise UnusableJudgement(f"score '{name}' is not an integer: {str(value)[:40]!r}")
    value = number
    if not 1 <= value <= 5:
        raise UnusableJudgement(f"score '{name}' is {value}, outside 1..5")
    return value


def parse_rating(text: str) -> Rating:
    """The six scores from a judge's reply; keys may be the schema's or the paper's ("Breadth and Depth")."""
    obj = extract_json(text)
    if not isinstance(obj, dict):
        raise UnusableJudgement("the reply holds no JSON object")
    found = {_key(k): v for k, v in obj.items() if isinstance(k, str)}
    missing = [d for d in DIMENSIONS if d not in found]
    if missing:
        raise UnusableJudgement(f"missing score(s): {', '.join(missing)}")
    analysis = found.get("analysis")
    return Rating({d: _score(found[d], d) for d in DIMENSIONS}, analysis if isinstance(analysis, str) else "")


def parse_criterion(text: str) -> tuple[int, str]:
    """A criterion's score (1..10) and reason from a judge's reply."""
    obj = extract_json(text)
    if not isinstance(obj, dict):
        raise UnusableJudgement("the reply holds no JSON object")
    found = {_key(k): v for k, v in obj.items() if isinstance(k, str)}
    if "score" not in found:
        raise UnusableJudgement("missing score")
    value = _integer(found["score"])
    if value is None or not 1 <= value <= 10:
        raise UnusableJudgement(f"score must be an integer from 1 to 10, got {str(found['score'])[:40]!r}")
    reason = found.get("reason")
    return value, reason if isinstance(reason, str) else ""


def parse_target(text: str) -> tuple[int, int]:
    """A length target's word range (min_words, max_words) from a judge's reply."""
    obj = extract_json(text)
    if not isinstance(obj, dict):
        raise UnusableJudgement("the reply holds no JSON object")
    found = {_key(k): v for k, v in obj.items() if isinstance(k, str)}
    bounds = []
    for name in ("min_words", "max_words"):
        value = _integer(found.get(name))
        if value is None or not 1 <= value <= TARGET_MAX_WORDS:
            raise UnusableJudgement(f"{name} must be an integer from 1 to {TARGET_MAX_WORDS}, got "
                                    f"{str(found.get(name))[:40]!r}")
        bounds.append(value)
    if bounds[0] > bounds[1]:
        raise UnusableJudgement(f"min_words {bounds[0]} is above max_words {bounds[1]}")
    return bounds[0], bounds[1]


def parse_verdict(text: str) -> Literal["A", "B", "tie"]:
    """The pairwise verdict from a judge's reply."""
    obj = extract_json(text)
    if not isinstance(obj, dict):
        raise UnusableJudgement("the reply holds no JSON object")
    found = {_key(k): v for k, v in obj.items() if isinstance(k, str)}
    better = found.get("better")
    if not isinstance(better, str) or better.strip().lower() not in {"a", "b", "tie"}:
        raise UnusableJudgement(f"'better' must be \"A\", \"B\" or \"tie\", got {str(better)[:40]!r}")
    verdict = better.strip().lower()
    return "tie" if verdict == "tie" else verdict.upper()  # type: ignore[return-value]


def shorten(answer: str, max_words: int | None) -> tuple[str, bool]:
    """``answer`` cut to about ``max_words`` words (two thirds head, one third tail); whether it was cut."""
    words = count_words(answer)
    if max_words is None or words <= max_words:
        return answer, False
    keep = max_words / words
    head, tail = int(len(answer) * keep * 2 / 3), int(len(answer) * keep / 3)
    omitted = words - count_words(answer[:head]) - count_words(answer[len(answer) - tail:])
    return f"{answer[:head]}\n\n[... {omitted} words omitted ...]\n\n{answer[len(answer) - tail:]}", True


def _nonce(*texts: str) -> str:
    # derived from the content (so requests stay cacheable) and impossible for the content to contain
    digest = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    return digest[:16]


def _tagged(name: str, nonce: str, text: str) -> str:
    return f"<{name}-{nonce}>\n{text}\n</{name}-{nonce}>"


def _data_rule(nonce: str) -> str:
    return render_prompt("judge_data_rule", nonce=nonce)


def rating_messages(request: str, answer: str) -> list[dict[str, str]]:
    """The judge's prompt for one answer (the answer already shortened if need be)."""
    nonce = _nonce(request, answer)
    system = render_prompt("judge_rating", data_rule=_data_rule(nonce))
    user = render_prompt("judge_rating_user", request=_tagged("request", nonce, request),
                         response=_tagged("response", nonce, answer))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def part_messages(request: str, before: str, part: str) -> list[dict[str, str]]:
    """The judge's prompt for one part of a long answer, read after the text that precedes it."""
    nonce = _nonce(request, before, part)
    system = render_prompt("judge_part", rating_prompt=render_prompt("judge_rating", data_rule=_data_rule(nonce)))
    context = _tagged("text-before", nonce, before) if before else render_prompt("judge_part_beginning")
    user = render_prompt("judge_part_user", request=_tagged("request", nonce, request), context=context,
                         part=_tagged("part", nonce, part))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def criterion_messages(request: str, answer: str, criterion: str) -> list[dict[str, str]]:
    """The judge's prompt scoring one answer against one of its request's criteria (the criterion is the
    benchmark file's, not the answer's: it goes in the instructions, the request and the answer are data)."""
    nonce = _nonce(request, answer)
    system = render_prompt("judge_criterion", criterion=criterion, data_rule=_data_rule(nonce))
    user = render_prompt("judge_criterion_user", request=_tagged("request", nonce, request),
                         response=_tagged("response", nonce, answer))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def target_messages(request: str) -> list[dict[str, str]]:
    """The judge's prompt asking the word range an answer to ``request`` needs (``longwriter.length_target``)."""
    nonce = _nonce(request)
    system = render_prompt("judge_length_target", data_rule=_data_rule(nonce))
    user = render_prompt("judge_length_target_user", request=_tagged("request", nonce, request))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def pair_messages(request: str, first: str, second: str) -> list[dict[str, str]]:
    """The judge's prompt comparing ``first`` (shown as A) with ``second`` (B)."""
    nonce = _nonce(request, first, second)
    system = render_prompt("judge_pairwise", data_rule=_data_rule(nonce))
    user = render_prompt("judge_pairwise_user", request=_tagged("request", nonce, request),
                         response_a=_tagged("response-A", nonce, first),
                         response_b=_tagged("response-B", nonce, second))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# what a rating template holds in place of the request and of the answer (the public release's names)
REQUEST_PLACEHOLDER, RESPONSE_PLACEHOLDER = "$INST$", "$RESPONSE$"
PLACEHOLDERS = (REQUEST_PLACEHOLDER, RESPONSE_PLACEHOLDER)
_PLACEHOLDER = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


def read_prompt_template(path: str | Path) -> str:
    """The rating template at ``path`` (``judge.prompt_file``), checked to hold both placeholders."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, "file not found (judge.prompt_file)") from None
    except UnicodeDecodeError as e:
        raise InputError(path, f"not valid UTF-8 (judge.prompt_file): byte {e.start}") from None
    except OSError as e:
        raise InputError(path, f"cannot read the judge prompt template: {e.strerror}") from None
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise InputError(path, f"the judge prompt template (judge.prompt_file) lacks the placeholder(s) "
                               f"{' and '.join(missing)}: {REQUEST_PLACEHOLDER} stands for the request, "
                               f"{RESPONSE_PLACEHOLDER} for the response")
    return text


def template_messages(template: str, request: str, answer: str) -> list[dict[str, str]]:
    """The template with its placeholders replaced, in one pass (a placeholder inside the request or the answer
    stays as written; nothing else in the template, braces included, is touched), as one user message."""
    values = {REQUEST_PLACEHOLDER: request, RESPONSE_PLACEHOLDER: answer}
    return [{"role": "user", "content": _PLACEHOLDER.sub(lambda m: values[m.group(0)], template)}]


def _schema(llm: LLMClient, schema: dict[str, Any] | None) -> dict[str, Any] | None:
    return schema if llm.endpoint.structured_output != "none" else None


def _too_long(e: LLMCallError) -> bool:
    # OpenAI, vLLM and llama.cpp's server all word a context overflow this way (HTTP 400)
    return "maximum context length" in str(e).lower()


async def _ask(llm: LLMClient, cfg: JudgeConfig, schema: dict[str, Any] | None, parse: Callable[[str], T],
               answers: list[str], build: Callable[[list[str]], list[dict[str, str]]],
               first_sampling: Sampling | None = None) -> tuple[T | None, int, bool, str | None]:
    """Ask until the reply parses: result, attempts, whether answers were shortened, error.

    Answers too long for the judge's context are shown shorter (halved until they fit, flagged) rather than
    failing: the backend's own error says when, whatever its tokenizer. ``first_sampling``: the first request's
    sampling (``cfg.sampling`` when None); re-asks raise its temperature.
    """
    state: dict[str, Any] = {"limit": cfg.max_answer_words, "shown": []}

    def request() -> list[dict[str, str]]:  # built again for every request: the answers may have been shortened
        state["shown"] = [shorten(a, state["limit"]) for a in answers]
        return build([text for text, _ in state["shown"]])

    def shorter(e: LLMCallError) -> bool:
        longest = max(count_words(text) for text, _ in state["shown"])
        if _too_long(e) and longest > 64:
            state["limit"] = longest // 2
            return True
        return False

    outcome = await ask_until_usable(llm, request, first_sampling or cfg.sampling, parse,
                                     max_attempts=cfg.max_attempts, schema=_schema(llm, schema),
                                     describe=lambda fault, _: f"{_UNUSABLE}: {fault}", retry_call=shorter)
    truncated = any(cut for _, cut in state["shown"])
    return outcome.value, outcome.attempts, truncated, outcome.error


async def rate(llm: LLMClient, request: str, answer: str, cfg: JudgeConfig,
               template: str | None = None) -> RatingOutcome:
    """Rate one answer; an unusable reply is asked again (``reask``), up to ``max_attempts`` in all.

    With ``cfg.prompt_file`` the rating prompt is that template (``template``: its text, already read by
    ``read_prompt_template``; read here when None)."""
    if cfg.prompt_file is None:
        rating, attempts, truncated, error = await _ask(
            llm, cfg, RATING_SCHEMA, parse_rating, [answer], lambda shown: rating_messages(request, shown[0]))
    else:
        text = template if template is not None else read_prompt_template(cfg.prompt_file)
        rating, attempts, truncated, error = await _ask(
            llm, cfg, None, parse_rating, [answer], lambda shown: template_messages(text, request, shown[0]),
            first_sampling=cfg.prompt_sampling)
    return RatingOutcome(rating, attempts, truncated, error)


async def rate_part(llm: LLMClient, request: str, before: str, part: str, cfg: JudgeConfig) -> RatingOutcome:
    """Rate one part of an answer given the text before it (``segments.judge``); re-asked as ``rate`` is."""
    rating, attempts, truncated, error = await _ask(
        llm, cfg, RATING_SCHEMA, parse_rating, [before, part], lambda shown: part_messages(request, *shown))
    return RatingOutcome(rating, attempts, truncated, error)


async def score_criterion(llm: LLMClient, request: str, answer: str, criterion: str,
                          cfg: JudgeConfig) -> tuple[tuple[int, str] | None, int, bool, str | None]:
    """One answer scored against one criterion: (score, reason), attempts, whether the answer was shortened,
    error; re-asked as ``rate`` is."""
    return await _ask(llm, cfg, CRITERION_SCHEMA, parse_criterion, [answer],
                      lambda shown: criterion_messages(request, shown[0], criterion))


async def length_target(llm: LLMClient, request: str, cfg: JudgeConfig
                        ) -> tuple[tuple[int, int] | None, int, str | None]:
    """The word range (min, max) an answer to ``request`` needs, in the judge's view: range, attempts, error;
    re-asked as ``rate`` is (a request too long for the judge's context is shown shortened)."""
    result, attempts, _, error = await _ask(llm, cfg, TARGET_SCHEMA, parse_target, [request],
                                            lambda shown: target_messages(shown[0]))
    return result, attempts, error


async def verdict(llm: LLMClient, request: str, first: str, second: str,
                  cfg: JudgeConfig) -> tuple[Literal["A", "B", "tie"] | None, int, str | None]:
    """Which of two answers is better (``first`` shown as A): verdict, attempts, error."""
    result, attempts, _, error = await _ask(
        llm, cfg, PAIR_SCHEMA, parse_verdict, [first, second],
        lambda shown: pair_messages(request, shown[0], shown[1]))
    return result, attempts, error


def judge_answers(answers: pl.DataFrame, judge: JudgeConfig, settings: ClientSettings, desc: str
                  ) -> tuple[list[RatingOutcome], dict[str, Any]]:
    """Rate every answer (row order kept); also returns the judge's call stats as metrics."""
    rows = list(answers.iter_rows(named=True))
    # a bad template is refused before any model is started
    template = read_prompt_template(judge.prompt_file) if judge.prompt_file is not None else None

    async def work(llm: LLMClient) -> list[RatingOutcome]:
        return await run_each(rows, lambda row: rate(llm, row["prompt"], row["text"], judge, template),
                              desc=desc, unit="answer")

    outcomes, stats = run_with_llm(judge.model, settings, work)
    return outcomes, stats.as_metrics()
