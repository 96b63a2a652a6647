"""Reading JSON out of model output, whether or not the backend enforced a schema, and asking again when a
reply cannot be used."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from longwriter.llm.spec import Sampling

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
    follow_up = (f"Your reply above could not be used: {error}. Answer the request again, in exactly the format "
                 "it asks for.")
    temperature = max(sampling.temperature, min(1.0, REASK_TEMPERATURE_STEP * attempt))
    return ([*messages, {"role": "assistant", "content": quoted}, {"role": "user", "content": follow_up}],
            dataclasses.replace(sampling, temperature=temperature))
