"""``ask_until_usable``: the one ask -> parse -> re-ask loop (selector, planner, judge), against a scripted client:
what each request is, its sample index, the attempts counted and the outcome's error and reason."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from longwriter.llm import LLMCallError, Sampling
from longwriter.llm.client import Completion
from longwriter.llm.structured import REASK_TEMPERATURE_STEP, Unusable, ask_until_usable, reask

QUESTION = [{"role": "user", "content": "Reply with a number."}]
SAMPLING = Sampling(temperature=0.0, max_tokens=64)


class Scripted:
    """An LLMClient stand-in: each call returns (or raises) the next scripted item and records the request."""

    def __init__(self, *script: str | LLMCallError):
        self.script = list(script)
        self.calls: list[dict[str, Any]] = []

    async def complete(self, messages, sampling, *, schema=None, sample=0) -> Completion:
        self.calls.append({"messages": messages, "sampling": sampling, "schema": schema, "sample": sample})
        item = self.script.pop(0)
        if isinstance(item, LLMCallError):
            raise item
        return Completion(item, "stop", 1, 1, 0.0, False, 1)


def number(text: str) -> int:
    if not text.strip().isdigit():
        raise Unusable(f"{text!r} is not a number")
    return int(text)


def _run(llm: Scripted, **kwargs: Any):
    kwargs.setdefault("max_attempts", 3)
    return asyncio.run(ask_until_usable(llm, QUESTION, SAMPLING, number, **kwargs))  # type: ignore[arg-type]


def test_a_usable_first_reply_is_one_attempt_with_the_request_unchanged() -> None:
    llm = Scripted("42")
    outcome = _run(llm, schema={"type": "integer"})
    assert (outcome.value, outcome.attempts, outcome.error, outcome.reason) == (42, 1, None, None)
    assert llm.calls == [{"messages": QUESTION, "sampling": SAMPLING, "schema": {"type": "integer"}, "sample": 0}]


def test_each_unusable_reply_is_quoted_back_with_its_fault_on_the_next_sample() -> None:
    llm = Scripted("forty", "still no", "7")
    outcome = _run(llm)
    assert (outcome.value, outcome.attempts, outcome.error) == (7, 3, None)
    assert [c["sample"] for c in llm.calls] == [0, 1, 2]
    for attempt, (call, (reply, fault)) in enumerate(zip(llm.calls[1:], [("forty", "'forty' is not a number"),
                                                                          ("still no", "'still no' is not a number")],
                                                         strict=True), start=1):
        # the original request plus only the last reply: re-asks do not pile up
        assert (call["messages"], call["sampling"]) == reask(QUESTION, SAMPLING, reply, fault, attempt=attempt)
        assert call["sampling"].temperature == pytest.approx(REASK_TEMPERATURE_STEP * attempt)
    assert llm.calls[1]["messages"][-1]["content"] == ("Your reply above could not be used: 'forty' is not a number. "
                                                       "Answer the request again, in exactly the format it asks for.")


def test_replies_unusable_to_the_end_are_unusable_output() -> None:
    outcome = _run(Scripted("a", "b"), max_attempts=2, describe=lambda fault, reply: f"bad ({reply}): {fault}")
    assert (outcome.value, outcome.attempts, outcome.reason) == (None, 2, "unusable_output")
    assert outcome.error == "bad (b): 'b' is not a number"
    assert _run(Scripted("a"), max_attempts=1).error == "unusable output: 'a' is not a number"


def test_a_failed_call_ends_the_ask_as_llm_error_counting_it() -> None:
    outcome = _run(Scripted("x", LLMCallError("HTTP 500", attempts=4)))
    assert (outcome.value, outcome.attempts, outcome.error, outcome.reason) == (None, 2, "HTTP 500", "llm_error")


def test_retry_call_sends_the_same_attempt_again_rebuilt() -> None:
    shown = {"words": 100}
    builds = []

    def build() -> list[dict[str, str]]:
        builds.append(shown["words"])
        return [{"role": "user", "content": f"{shown['words']} words"}]

    def shorter(e: LLMCallError) -> bool:
        if "too long" in str(e) and shown["words"] > 25:
            shown["words"] //= 2
            return True
        return False

    llm = Scripted(LLMCallError("too long", 1), "nope", LLMCallError("too long", 1), "5")
    outcome = asyncio.run(ask_until_usable(llm, build, SAMPLING, number, max_attempts=3,  # type: ignore[arg-type]
                                           retry_call=shorter))
    assert (outcome.value, outcome.attempts) == (5, 2)  # a shortened resend is not an attempt
    assert builds == [100, 50, 50, 25]
    assert [c["sample"] for c in llm.calls] == [0, 0, 1, 1]
    # the re-ask is built on the request as now shown
    assert llm.calls[3]["messages"] == reask([{"role": "user", "content": "25 words"}], SAMPLING, "nope",
                                             "'nope' is not a number", attempt=1)[0]
    llm = Scripted(LLMCallError("too long", 1))
    gave_up = asyncio.run(ask_until_usable(llm, build, SAMPLING, number,  # type: ignore[arg-type]
                                           max_attempts=3, retry_call=shorter))
    assert (gave_up.attempts, gave_up.reason) == (1, "llm_error")


def test_other_exceptions_from_parse_propagate() -> None:
    def broken(text: str) -> int:
        raise KeyError(text)

    with pytest.raises(KeyError):
        llm = Scripted("1")
        asyncio.run(ask_until_usable(llm, QUESTION, SAMPLING, broken, max_attempts=2))  # type: ignore[arg-type]


def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        _run(Scripted(), max_attempts=0)


def test_reask_keeps_a_warmer_first_temperature() -> None:
    warm = dataclasses.replace(SAMPLING, temperature=0.9)
    _, sampling = reask(QUESTION, warm, "x", "fault", attempt=1)
    assert sampling.temperature == 0.9
