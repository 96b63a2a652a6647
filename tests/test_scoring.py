"""LongBench-Write's length score against hand-computed values, and the quality aggregation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from longwriter.scoring import dimension_score, length_score, overall, quality_score


@pytest.mark.parametrize(("required", "produced", "expected"), [
    (1000, 1000, 100.0),        # l' = l
    (1000, 4000, 0.0),          # l' = 4l: 1 - (4 - 1)/3 = 0
    (999, 333, 0.0),            # l' = l/3: 1 - (3 - 1)/2 = 0
    (1000, 0, 0.0),             # nothing written
    (1000, 2000, 100 * (1 - 1 / 3)),
    (1000, 2500, 50.0),         # 1 - 1.5/3
    (1000, 500, 50.0),          # 1 - (2 - 1)/2
    (1000, 800, 87.5),          # 1 - 0.25/2
    (1000, 5000, 0.0),          # beyond 4x stays 0
    (900, 200, 0.0),            # below l/3 stays 0
    (1, 1, 100.0),
])
def test_length_score_hand_computed(required, produced, expected):
    assert length_score(required, produced) == pytest.approx(expected)


def test_length_score_just_inside_the_boundaries_is_positive():
    assert 0 < length_score(3000, 11_999) < 0.04
    assert 0 < length_score(3000, 1001) < 0.2


@given(st.integers(1, 50_000), st.integers(0, 200_000))
def test_length_score_is_within_0_100_and_peaks_at_the_target(required, produced):
    s = length_score(required, produced)
    assert 0.0 <= s <= 100.0
    assert (s == 100.0) == (produced == required)


@given(st.integers(1, 10_000), st.integers(0, 50_000))
def test_length_score_falls_away_from_the_target(required, produced):
    if produced == required:
        return
    closer = produced + 1 if produced < required else produced - 1
    assert length_score(required, closer) >= length_score(required, produced)


def test_length_score_rejects_bad_input():
    with pytest.raises(ValueError):
        length_score(0, 10)
    with pytest.raises(ValueError):
        length_score(10, -1)


def test_quality_aggregation():
    assert dimension_score([5, 5]) == 100.0
    assert dimension_score([1, 1, 1]) == 0.0
    assert dimension_score([3, 4]) == pytest.approx(62.5)
    assert dimension_score([]) is None
    with pytest.raises(ValueError):
        dimension_score([0, 3])
    dims = {"a": 50.0, "b": 100.0, "c": 0.0, "d": 25.0, "e": 75.0, "f": 50.0}
    assert quality_score(dims) == pytest.approx(50.0)
    assert quality_score({**dims, "f": None}) is None
    assert overall(80.0, 40.0) == 60.0
    assert overall(None, 40.0) is None
