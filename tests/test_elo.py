"""Bradley-Terry Elo against hand-worked tables, bootstrap intervals and position bias."""

from __future__ import annotations

import math

import polars as pl
import pytest

from longwriter.eval.elo import bradley_terry, elo_ratings


def test_two_models_three_wins_in_four_is_190_points():
    games = [("a", "b", 1.0)] * 3 + [("a", "b", 0.0)]
    elo = bradley_terry(games, ["a", "b"])
    gap = 400 * math.log10(3)  # p_a / p_b = 3
    assert elo["a"] == pytest.approx(1000 + gap / 2) and elo["b"] == pytest.approx(1000 - gap / 2)


def test_three_models_recover_the_strengths_that_made_the_table():
    # strengths 4 : 2 : 1; each pair's win share is exactly what Bradley-Terry predicts, so the fit is exact
    games = ([("a", "b", 1.0)] * 2 + [("a", "b", 0.0)]          # 4 / (4 + 2) = 2/3
             + [("b", "c", 1.0)] * 2 + [("c", "b", 1.0)]        # 2 / (2 + 1) = 2/3, one game in the other order
             + [("a", "c", 1.0)] * 4 + [("a", "c", 0.0)])       # 4 / (4 + 1) = 4/5
    elo = bradley_terry(games, ["a", "b", "c"])
    # geometric mean of 4, 2, 1 is 2: a = +log10(2), b = 0, c = -log10(2), times 400
    assert elo["a"] == pytest.approx(1000 + 400 * math.log10(2), abs=1e-6)
    assert elo["b"] == pytest.approx(1000, abs=1e-6)
    assert elo["c"] == pytest.approx(1000 - 400 * math.log10(2), abs=1e-6)


def test_a_tie_is_half_a_win_each():
    games = [("a", "b", 1.0), ("a", "b", 0.5), ("b", "a", 0.5), ("a", "b", 0.0)]
    assert bradley_terry(games, ["a", "b"]) == {"a": pytest.approx(1000), "b": pytest.approx(1000)}


def test_a_model_that_won_nothing_has_no_finite_rating():
    elo = bradley_terry([("a", "b", 1.0), ("a", "b", 1.0)], ["a", "b", "c"])
    assert elo["b"] is None and elo["c"] is None and elo["a"] == pytest.approx(1000)


def _table(rows: list[tuple[str, str, int, str | None, str | None]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["model_a", "model_b", "index", "a_first", "b_first"], orient="row")


def test_ratings_intervals_and_position_bias_from_a_comparisons_table():
    # sft beats base in both orders on 6 requests, loses both on 2, splits (each wins when shown first) on 4
    rows = ([("sft", "base", i, "a", "a") for i in range(6)] + [("sft", "base", i, "b", "b") for i in range(6, 8)]
            + [("sft", "base", i, "a", "b") for i in range(8, 12)] + [("sft", "base", 12, None, "tie")])
    result = elo_ratings(_table(rows), ["sft", "base"], bootstrap=300, seed=1)
    sft, base = result["ratings"]["sft"], result["ratings"]["base"]
    # games: 12 + 0 + 4 = 16 wins for sft, 0 + 4 + 4 = 8 for base, plus one tie: (16.5) : (8.5)
    gap = 400 * math.log10(16.5 / 8.5)
    assert sft["elo"] == pytest.approx(1000 + gap / 2, abs=0.1)
    assert base["elo"] == pytest.approx(1000 - gap / 2, abs=0.1)
    assert sft["games"] == base["games"] == 25
    assert sft["ci_low"] < sft["elo"] < sft["ci_high"] and base["ci_low"] < base["elo"] < base["ci_high"]
    assert result == elo_ratings(_table(rows), ["sft", "base"], bootstrap=300, seed=1)  # seeded
    # decisive verdicts: 24; the answer shown first won 6 (sft first, sft won), 2 (base first, base won) and
    # 4 + 4 on the split requests
    bias = result["position_bias"]
    assert bias["decisive"] == 24 and bias["first_shown_win_share"] == pytest.approx((6 + 2 + 8) / 24, abs=1e-4)


def test_no_games_no_ratings():
    result = elo_ratings(_table([("a", "b", 0, None, None)]), ["a", "b"])
    assert result["ratings"]["a"] == {"elo": None, "ci_low": None, "ci_high": None, "games": 0}
    assert result["position_bias"] == {"decisive": 0, "first_shown_win_share": None}


def test_an_anchor_is_1000_and_a_models_rating_against_it_ignores_the_others():
    """compare.reference: every model plays the reference answers only; anchored there, a model's rating is its
    strength against them, the same whichever other models are rated beside it."""
    # a beats ref 3 games in 4 (both orders of 2 requests), c splits with ref
    a_rows = [("a", "ref", 0, "a", "a"), ("a", "ref", 1, "a", "b")]
    c_rows = [("c", "ref", 0, "a", "b"), ("c", "ref", 1, "b", "a")]
    alone = elo_ratings(_table(a_rows), ["a", "ref"], bootstrap=50, seed=0, anchor="ref")
    both = elo_ratings(_table(a_rows + c_rows), ["a", "c", "ref"], bootstrap=50, seed=0, anchor="ref")
    for result in (alone, both):
        assert result["anchor"] == "ref" and result["ratings"]["ref"]["elo"] == 1000.0
        assert result["ratings"]["a"]["elo"] == pytest.approx(1000 + 400 * math.log10(3), abs=0.1)
    assert both["ratings"]["c"]["elo"] == pytest.approx(1000, abs=0.1)
    assert both["ratings"]["ref"]["ci_low"] == both["ratings"]["ref"]["ci_high"] == 1000.0
    unanchored = elo_ratings(_table(a_rows), ["a", "ref"], bootstrap=0)
    assert unanchored["anchor"] is None and unanchored["ratings"]["ref"]["elo"] != 1000.0
