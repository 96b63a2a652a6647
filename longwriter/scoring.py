"""LongBench-Write's scores: the length score S_l, the quality score S_q from judge ratings, and S.

All scores are on 0-100. Word counts come from ``longwriter.wordcount`` (the paper's counter), so a score
computed here matches one computed on the same text by the paper's scripts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

# LongBench-Write's length buckets, by required words: [0,500), [500,2000), [2000,4000), [4000,20000]. The last
# one is closed, as in the public release's evaluation (its 20,000-word requests count there: 26/36/31/27 of 120).
BUCKETS: tuple[tuple[int, int, str], ...] = (
    (0, 500, "0-500"), (500, 2000, "500-2k"), (2000, 4000, "2k-4k"), (4000, 20000, "4k-20k"))
BEYOND_BUCKETS = "20k+"  # above 20,000: not in the paper's set; kept apart rather than folded into the last bucket


def length_score(required: int, produced: int) -> float:
    """S_l of one answer: 100 when ``produced == required``, falling linearly to 0 at 4x over or 1/3 under.

    S_l = 100 * max(0, 1 - (l'/l - 1) / 3) if l' > l, else 100 * max(0, 1 - (l/l' - 1) / 2); an empty answer
    (l' = 0) scores 0, the limit of the second branch.
    """
    if required <= 0:
        raise ValueError(f"required words must be positive, got {required}")
    if produced < 0:
        raise ValueError(f"produced words cannot be negative, got {produced}")
    if produced > required:
        return 100.0 * max(0.0, 1.0 - (produced / required - 1.0) / 3.0)
    if produced == 0:
        return 0.0
    return 100.0 * max(0.0, 1.0 - (required / produced - 1.0) / 2.0)


def range_length_score(low: int, high: int, produced: int) -> float:
    """S_l against a word range (``longwriter.length_target``: a prompt that states no length): 100 anywhere in
    [low, high], else ``length_score`` against the bound missed. A stated length L is the range [L, L]."""
    if not 0 < low <= high:
        raise ValueError(f"a word range needs 0 < low <= high, got [{low}, {high}]")
    if produced > high:
        return length_score(high, produced)
    return length_score(low, produced) if produced < low else 100.0


def bucket_of(required: int) -> str:
    """The LongBench-Write bucket label of a required length."""
    for lo, hi, label in BUCKETS:
        if lo <= required < hi or (required == hi and label == BUCKETS[-1][2]):
            return label
    return BEYOND_BUCKETS


def dimension_score(ratings: Iterable[int]) -> float | None:
    """One quality dimension on 0-100: (mean 1-5 rating - 1) * 25; None when nothing was rated."""
    values = list(ratings)
    if not values:
        return None
    if any(not 1 <= v <= 5 for v in values):
        raise ValueError("judge ratings must be within 1..5")
    return (sum(values) / len(values) - 1.0) * 25.0


def quality_score(per_dimension: Mapping[str, float | None]) -> float | None:
    """S_q: the mean of the dimension scores (None if any dimension has no rating)."""
    values = list(per_dimension.values())
    if not values or any(v is None for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def overall(length: float | None, quality: float | None) -> float | None:
    """S = (S_l + S_q) / 2."""
    if length is None or quality is None:
        return None
    return (length + quality) / 2.0


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def rounded(value: float | None, digits: int = 2) -> float | None:
    return None if value is None or math.isnan(value) else round(value, digits)
