"""Reading JSON out of model output, whether or not the backend enforced a schema, and asking again when a
reply cannot be used: ``ask_until_usable`` is the one ask -> parse -> re-ask loop of the selector, the planner
and the judge."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from longwriter.failures import Reason
from longwriter.llm.client import LLMCallError
from longwriter.llm.spec import Sampling
from longwriter.prompts import render_prompt

if TYPE_CHECKING:
    from longwriter.llm.client import LLMClient

T = TypeVar("T")

# the temperature a re-ask adds per attempt (capped at 1.0): a greedy request sent again returns its failure again
REASK_TEMPERATURE_STEP = 0.4
# how much of the unusable reply is quoted back (a runaway reply would crowd the context)
REASK_QUOTE_CHARS = 1500

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def extract_json(text: str) -> Any | None:
    """The first JSON object in ``text`` (bare, in a code fence, or inside prose); None if there is none."""
    candidates = [text.strip()] + [m.strip() for m in _FENCE.findall(text)]
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            pass
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        try:
            obj, _ = decoder.raw_decode(text, start)
            return obj
        except json.JSONDecodeError:
            continue
    return None


def reask(messages: list[dict[str, str]], sampling: Sampling, reply: str, error: str,
          attempt: int) -> tuple[list[dict[str, str]], Sampling]:
    """The request after ``attempt`` unusable replies (1 for the first re-ask): the last reply and what was wrong
    with it quoted back, at a temperature raised by ``REASK_TEMPERATURE_STEP`` per attempt. The first request is
    never changed, so its cached answer stays valid; only re-asks differ from what was sent before."""
    quoted = reply if len(reply) <= REASK_QUOTE_CHARS else reply[:REASK_QUOTE_CHARS] + " [...]"
    follow_up = render_prompt("reask", error=error)
    temperature = max(sampling.temperature, min(1.0, REASK_TEMPERATURE_STEP * attempt))
    return ([*messages, {"role": "assistant", "content": quoted}, {"role": "user", "content": follow_up}],
            dataclasses.replace(sampling, temperature=temperature))


class Unusable(ValueError):
    """A reply that does not give what was asked (no JSON, a missing or out-of-range field...). Its message says
    what is wrong, in words the re-ask quotes back to the model."""


@dataclass(frozen=True)
class AskOutcome(Generic[T]):
    """What ``ask_until_usable`` got: the parsed value, or None with the error and its failures-table reason."""

    value: T | None
    attempts: int  # requests that got a reply or failed for good (a request shortened and sent again not counted)
    error: str | None = None
    reason: Reason | None = None  # LLM_ERROR or UNUSABLE_OUTPUT


Messages = list[dict[str, str]]


async def ask_until_usable(llm: LLMClient, messages: Messages | Callable[[], Messages], sampling: Sampling,
                           parse: Callable[[str], T], *, max_attempts: int, schema: dict[str, Any] | None = None,
                           describe: Callable[[str, str], str] | None = None,
                           retry_call: Callable[[LLMCallError], bool] | None = None) -> AskOutcome[T]:
    """Ask, parse the reply, and re-ask (``reask``) after each unusable one, up to ``max_attempts`` requests.

    ``parse`` turns a reply's text into the value or raises ``Unusable``; its message is quoted back in the
    re-ask. Attempt ``i`` (0-based) is sent with ``sample=i`` (its own seed); the first request is exactly
    ``messages`` with ``sampling``, re-ask ``i`` the same request plus the last reply and its fault
    (``reask(..., attempt=i)``). ``messages`` may be a function, called for every request, when what is shown can
    change between requests: ``retry_call`` sees each failed call and, by returning True, has the same attempt
    sent again (after, say, shortening what the function builds) instead of ending the ask with ``llm_error``.
    ``describe(fault, reply_text)`` words the outcome's error for an unusable reply (default
    ``"unusable output: <fault>"``).
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    build = messages if callable(messages) else (lambda: messages)
    error, sample, unusable = "no attempt made", 0, None
    while sample < max_attempts:
        request, request_sampling = build(), sampling
        if unusable is not None:  # the last reply and its fault quoted back, warmer: not the same request again
            request, request_sampling = reask(request, sampling, *unusable, attempt=sample)
        try:
            reply = await llm.complete(request, request_sampling, schema=schema, sample=sample)
        except LLMCallError as e:
            if retry_call is not None and retry_call(e):
                continue
            return AskOutcome(None, sample + 1, str(e), Reason.LLM_ERROR)
        sample += 1
        try:
            return AskOutcome(parse(reply.text), sample)
        except Unusable as e:
            error = describe(str(e), reply.text) if describe is not None else f"unusable output: {e}"
            unusable = (reply.text, str(e))
    return AskOutcome(None, max_attempts, error, Reason.UNUSABLE_OUTPUT)
