"""Repetition in a text: how much of it repeats itself, and where an answer falls into a loop.

Small models often stop writing and start repeating: a paragraph, a sentence or a phrase over and over until
the token limit. Such an answer has many words by the paper's count, but only the words before the loop are
writing. Every measure here works on the paper's word units (``longwriter.wordcount.word_units``: one per CJK
ideograph, one per Latin-letter word, lower-cased), so Chinese and English texts are measured alike and the
word index of a loop start is directly comparable with ``count_words``.

Loop start, precisely. Take the word units u_0 .. u_{N-1} and their n-grams g_i = (u_i .. u_{i+n-1}),
i = 0 .. N-n. The n-gram g_i is a *repeat* when the same n-gram occurs at an earlier position j < i. Give each
n-gram from position p to the end +1/2 when it is a repeat and -1/2 when it is new; the tail from p is
*dominated by repeats* when that sum is positive (more than half of its n-grams repeat earlier text). The loop
starts at the position p whose tail has the largest sum (the latest such p when several tie): the tail then
begins with a repeat, and stretching it to an earlier p would add more new n-grams than repeats. The answer
*degenerates* when that tail holds at least ``min_loop_words`` words; otherwise it has no loop (a closing
sentence that quotes the opening one, a refrain sung once more, is not a loop).

A loop of an exact copy (period C) is found at the start of its second copy: the first copy is new text and
counts as written, every later copy is repeats. A loop whose copies differ a little (a changed word, another
number: digits are no word units) is found as long as fewer than half of each copy's n-grams are new.
"""

from __future__ import annotations

from collections import Counter

from longwriter.wordcount import word_units

# n-gram length of the loop measure, in word units (words, or CJK characters)
LOOP_N = 4
# a repeated tail shorter than this is not a loop (a refrain, a closing sentence that echoes the opening)
MIN_LOOP_WORDS = 50


def repetition(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (0: none, near 1: one phrase over and over)."""
    units = word_units(text)
    if len(units) < n + 1:
        return 0.0
    grams = Counter(tuple(units[i:i + n]) for i in range(len(units) - n + 1))
    total = sum(grams.values())
    return round(1 - len(grams) / total, 4)


def _loop_start_units(units: list[str], n: int, min_loop_words: int) -> int | None:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    count = len(units) - n + 1
    if count < 2:
        return None
    seen: set[tuple[str, ...]] = set()
    repeat: list[bool] = []
    for i in range(count):
        gram = tuple(units[i:i + n])
        repeat.append(gram in seen)
        seen.add(gram)
    # suffix sums in half-units: +1 for a repeat, -1 for a new n-gram (the +-1/2 of the rule, doubled)
    best, best_at, total = 0, None, 0
    for i in range(count - 1, -1, -1):
        total += 1 if repeat[i] else -1
        if total > best:  # strictly larger: on a tie the later start (found first, going backwards) stays
            best, best_at = total, i
    if best_at is None or len(units) - best_at < min_loop_words:
        return None
    return best_at


def loop_start(text: str, n: int = LOOP_N, min_loop_words: int = MIN_LOOP_WORDS) -> int | None:
    """The word index at which ``text`` falls into a loop (see the module's rule), or None when it does not.

    The index counts word units (``count_words``'s words): ``loop_start(t)`` words are written before the loop.
    """
    return _loop_start_units(word_units(text), n, min_loop_words)


def degeneration(text: str, n: int = LOOP_N, min_loop_words: int = MIN_LOOP_WORDS) -> tuple[int, bool]:
    """``(effective_words, degenerate)`` of ``text``: the words written before it falls into a loop (all of them,
    ``count_words``, when it does not), and whether it does."""
    units = word_units(text)
    start = _loop_start_units(units, n, min_loop_words)
    return (len(units), False) if start is None else (start, True)
