"""Word counting: the one rule every stage and benchmark uses.

The LongWriter evaluation counts one word per CJK ideograph (U+4E00-U+9FFF) plus one per Latin-letter word
(regex ``\\b[a-zA-Z]+\\b``). We reproduce those two regexes exactly, quirks included: Python's ``\\b`` is
Unicode-aware, so letters glued to a CJK character or a digit ("中文abc", "word2vec") are not counted,
and "don't" counts as two words. Matching the paper matters more than linguistic accuracy, since length
scores are compared with its published figures.
"""

from __future__ import annotations

import re

_CJK = re.compile(r"[\u4e00-\u9fff]")
_LATIN_WORD = re.compile(r"\b[a-zA-Z]+\b")
# The two patterns never match the same characters, so one alternation yields the same units in text order.
_WORD_UNIT = re.compile(r"[\u4e00-\u9fff]|\b[a-zA-Z]+\b")


def count_words(text: str) -> int:
    """Number of words in ``text`` by the paper's rule (CJK ideographs + Latin-letter words)."""
    return len(_CJK.findall(text)) + len(_LATIN_WORD.findall(text))


def word_units(text: str) -> list[str]:
    """The counted units of ``text`` in order (each CJK ideograph, each Latin word, lower-cased).

    ``len(word_units(t)) == count_words(t)`` always; used where the units themselves matter, e.g. n-gram
    repetition.
    """
    return [u.lower() for u in _WORD_UNIT.findall(text)]


def cut_by_units(text: str, parts: int) -> list[str]:
    """``text`` cut into ``parts`` pieces of (as near as can be) equal word units, at the same unit boundaries as
    ``word_units(text)[k * n // parts:]``; a piece keeps the text between units (spaces, punctuation) that
    precedes its next piece, so the pieces joined give ``text`` back."""
    starts = [m.start() for m in _WORD_UNIT.finditer(text)]
    cuts = [0] + [starts[k * len(starts) // parts] if k * len(starts) // parts < len(starts) else len(text)
                  for k in range(1, parts)] + [len(text)]
    return [text[cuts[k]:cuts[k + 1]] for k in range(parts)]


def cjk_count(text: str) -> int:
    """Number of CJK ideographs in ``text``."""
    return len(_CJK.findall(text))


def latin_word_count(text: str) -> int:
    """Number of Latin-letter words in ``text``."""
    return len(_LATIN_WORD.findall(text))
