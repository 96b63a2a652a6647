"""Elo ratings from pairwise judgements: a Bradley-Terry fit with bootstrap confidence intervals.

Each verdict of ``compare`` is a game between the two models it saw (both orders of every pair are asked, so each
request gives two games): a win is 1, a tie half a win to each side. Bradley-Terry strengths p maximise the
likelihood of the games (P(i beats j) = p_i / (p_i + p_j)), found with Hunter's (2004) MM iteration; the Elo
rating is 1000 + 400 log10(p_i / the geometric mean of p), the scale on which a 400-point gap means 10:1 odds.
The confidence interval resamples requests (a request's games stay together) with replacement. A model that won
no game has no finite rating: it is reported as None, as is an interval that includes such a resample.

With an ``anchor`` (``compare.reference``: Arena-Write's protocol, every model against one fixed set of reference
answers) the scale is shifted so that the anchor is 1000 in the fit and in every resample: a model's rating is then
its strength against the references, comparable across runs that rate other models beside it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import polars as pl

# (first model, second model, first model's score: 1 win, 0.5 tie, 0 loss)
Game = tuple[str, str, float]

_ITERATIONS = 10_000
_TOLERANCE = 1e-12


def bradley_terry(games: Sequence[Game], models: Sequence[str]) -> dict[str, float | None]:
    """Elo ratings of ``models`` from ``games``; None for a model without a win (or without a game)."""
    wins = dict.fromkeys(models, 0.0)
    played: dict[tuple[str, str], float] = {}
    for a, b, score in games:
        wins[a] += score
        wins[b] += 1.0 - score
        key = (a, b) if a < b else (b, a)
        played[key] = played.get(key, 0.0) + 1.0
    rated = [m for m in models if wins[m] > 0]
    strength = dict.fromkeys(rated, 1.0)
    for _ in range(_ITERATIONS):
        new = {}
        for m in rated:
            denominator = sum(n / (strength[m] + strength[o]) for (x, y), n in played.items()
                              for o in ((y,) if x == m else (x,) if y == m else ()) if o in strength)
            new[m] = wins[m] / denominator if denominator else strength[m]
        scale = math.exp(sum(math.log(v) for v in new.values()) / len(new)) if new else 1.0
        new = {m: v / scale for m, v in new.items()}
        change = max((abs(new[m] - strength[m]) / strength[m] for m in rated), default=0.0)
        strength = new
        if change < _TOLERANCE:
            break
    return {m: 1000.0 + 400.0 * math.log10(strength[m]) if m in strength else None for m in models}


def games_of(table: pl.DataFrame) -> dict[tuple[str, str, int], list[Game]]:
    """The games of a ``Comparisons`` table, grouped by request (model_a, model_b, index)."""
    points = {"a": 1.0, "tie": 0.5, "b": 0.0}
    grouped: dict[tuple[str, str, int], list[Game]] = {}
    for row in table.iter_rows(named=True):
        games = [(row["model_a"], row["model_b"], points[v]) for v in (row["a_first"], row["b_first"])
                 if v is not None]
        if games:
            grouped[(row["model_a"], row["model_b"], row["index"])] = games
    return grouped


def anchored(ratings: dict[str, float | None], anchor: str | None) -> dict[str, float | None]:
    """``ratings`` shifted so that ``anchor`` is 1000 (unchanged without an anchor; all None when the anchor has
    no finite rating: nothing can be placed against it)."""
    if anchor is None:
        return ratings
    base = ratings.get(anchor)
    return {m: None if v is None or base is None else v - base + 1000.0 for m, v in ratings.items()}


def elo_ratings(table: pl.DataFrame, models: Sequence[str], bootstrap: int = 200, seed: int = 0,
                level: float = 0.95, anchor: str | None = None) -> dict[str, Any]:
    """Per model: Elo, its bootstrap interval at ``level`` and games played; plus the judge's position bias
    (the share of decisive verdicts won by the answer shown first). ``anchor``: the model fixed at 1000."""
    grouped = games_of(table)
    keys = sorted(grouped)
    all_games = [g for k in keys for g in grouped[k]]
    point = anchored(bradley_terry(all_games, models), anchor)
    rng = random.Random(seed)
    samples: dict[str, list[float | None]] = {m: [] for m in models}
    for _ in range(bootstrap if keys else 0):
        drawn = [g for k in rng.choices(keys, k=len(keys)) for g in grouped[k]]
        for m, value in anchored(bradley_terry(drawn, models), anchor).items():
            samples[m].append(value)
    tail = (1.0 - level) / 2

    def interval(values: list[float | None]) -> tuple[float | None, float | None]:
        if not values or any(v is None for v in values):
            return None, None
        ordered = sorted(v for v in values if v is not None)
        lo, hi = ordered[int(tail * (len(ordered) - 1))], ordered[math.ceil((1 - tail) * (len(ordered) - 1))]
        return round(lo, 1), round(hi, 1)

    ratings = {}
    for m in models:
        lo, hi = interval(samples[m])
        ratings[m] = {"elo": round(point[m], 1) if point[m] is not None else None, "ci_low": lo, "ci_high": hi,
                      "games": sum(1 for a, b, _ in all_games if m in (a, b))}
    first_wins = decisive = 0
    for row in table.iter_rows(named=True):
        # a_first: model_a was shown first; b_first: model_b was
        for verdict, first in ((row["a_first"], "a"), (row["b_first"], "b")):
            if verdict in ("a", "b"):
                decisive += 1
                first_wins += verdict == first
    return {"ratings": ratings, "bootstrap": bootstrap, "level": level, "anchor": anchor,
            "position_bias": {"decisive": decisive,
                              "first_shown_win_share": round(first_wins / decisive, 4) if decisive else None}}
