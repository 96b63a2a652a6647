"""When is a model's text a complete answer? The one rule every training target passes (write, general, dpo_pairs).

A text is complete when it is not empty, is not a refusal, was not stopped by a content filter, and did not
stop on the token limit in mid-sentence. A preamble ("Sure, here is paragraph 3:") is not text: it is removed
(``strip_preamble``) before the rule looks at what is left. The rules are deliberately small and anchored at
the start of the text, where models put refusals and preambles, so an essay that says "I cannot stress
enough" in its fourth paragraph is not taken for a refusal.
"""

from __future__ import annotations

import re

from longwriter.failures import Reason

# A sentence (or a quotation, bracket, CJK sentence) ends here: a text cut by the token limit rarely does.
_SENTENCE_END = re.compile(r"[.!?。！？…\"'”’)\]）」』》]\s*$")

_REFUSAL_EN = re.compile(
    r"^\W*(?:(?:I'?m|I am) (?:so |very |really )?sorry\b|sorry,? (?:but )?I\b|I apologi[sz]e\b"
    r"|I(?: cannot| can ?not| can't| can’t| won't| won’t| will not| am unable to|'m unable to|’m unable to"
    r"| am not able to)"
    r" (?:help|assist|write|provide|comply|fulfil|fulfill|create|complete|generate|produce|do that|continue)"
    r"|as an AI\b|as a (?:large )?language model\b)",
    re.IGNORECASE)
_REFUSAL_ZH = re.compile(
    r"^\W*(?:(?:很|非常|十分)?抱歉|对不起|我(?:无法|不能|没办法|不可以)(?:帮|协助|提供|完成|写|撰写|满足|回答|继续|生成)"
    r"|作为一?个?(?:AI|人工智能|语言模型))")

# A first line that only announces the text ("Sure, here is paragraph 3:", "以下是第三段：").
_PREAMBLE_LINE = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|okay|ok|absolutely|great)\b[^\n]{0,80}"
    r"|(?:here(?: is|'s|’s| are)|below is)\b[^\n]{0,80}"
    r"|(?:好的|当然|没问题|以下是|下面是)[^\n]{0,40})[:：]\s*(?:\n|$)",
    re.IGNORECASE)
# The same announcement at the start of a line that goes on with the text ("Sure! Here is paragraph 2: The...").
_PREAMBLE_PREFIX = re.compile(
    r"^\s*(?:sure|certainly|of course|okay|absolutely)[,!.]?\s*here(?: is|'s|’s)[^:\n]{0,60}:\s+", re.IGNORECASE)

# The reasons a text is not a complete answer: failures-table reasons.
EMPTY, REFUSAL, FILTERED, CUT_OFF = Reason.EMPTY, Reason.REFUSAL, Reason.FILTERED, Reason.CUT_OFF


def strip_preamble(text: str) -> tuple[str, bool]:
    """``text`` without a leading preamble line or prefix; whether one was removed."""
    stripped = text.lstrip()
    m = _PREAMBLE_LINE.match(stripped) or _PREAMBLE_PREFIX.match(stripped)
    if m is None:
        return text.strip(), False
    return stripped[m.end():].strip(), True


def is_refusal(text: str) -> bool:
    """A refusal or an "as an AI" disclaimer at the start of the text, in English or Chinese."""
    head = strip_preamble(text)[0][:200]
    return bool(_REFUSAL_EN.match(head) or _REFUSAL_ZH.match(head))


def ends_sentence(text: str) -> bool:
    """The text ends a sentence (or a quotation or bracket around one)."""
    return bool(_SENTENCE_END.search(text))


# A sentence's end inside a text: Latin punctuation before a space or the end, CJK punctuation anywhere, with the
# closing quotes or brackets that follow it.
_SENTENCE_STOP = re.compile(r"(?:[.!?]+|[。！？…]+)[\"'”’)\]）」』》]*(?=\s|$)|[。！？…]+[\"'”’)\]）」』》]*")


def trim_to_sentence(text: str) -> str:
    """``text`` up to the end of its last complete sentence ("" when no sentence ends in it)."""
    ends = [m.end() for m in _SENTENCE_STOP.finditer(text)]
    return text[:ends[-1]].rstrip() if ends else ""


def incomplete_reason(text: str, finish_reason: str) -> Reason | None:
    """Why ``text`` (as the model returned it, ending with ``finish_reason``) is not a complete answer, or None.

    One of ``filtered`` (a content filter stopped it), ``empty`` (nothing but whitespace or a preamble),
    ``refusal``, ``cut_off`` (stopped on the token limit in mid-sentence).
    """
    if finish_reason == "content_filter":
        return FILTERED
    body = strip_preamble(text)[0]
    if not body:
        return EMPTY
    if is_refusal(body):
        return REFUSAL
    if finish_reason == "length" and not ends_sentence(body):
        return CUT_OFF
    return None
