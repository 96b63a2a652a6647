"""Checks of param values for the config dataclasses' ``__post_init__``: each raises ValueError naming the key,
which ``config.build`` reports with the file and section (``params.yaml:plan.max_attempts: ...``)."""

from __future__ import annotations

from typing import Any


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def positive_int(name: str, value: Any, *, optional: bool = False) -> None:
    """``value`` is an integer >= 1 (or None when ``optional``)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or null' if optional else ''}, got {value!r}")


def positive(name: str, value: Any) -> None:
    """``value`` is a number > 0."""
    if not _number(value) or value <= 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")


def non_negative(name: str, value: Any, *, optional: bool = False) -> None:
    """``value`` is a number >= 0 (or None when ``optional``)."""
    if optional and value is None:
        return
    if not _number(value) or value < 0:
        raise ValueError(f"{name} must be a number >= 0{' or null' if optional else ''}, got {value!r}")


def within(name: str, value: Any, low: float, high: float, *, low_open: bool = False) -> None:
    """``value`` is a number in [low, high] (``(low, high]`` when ``low_open``)."""
    if not _number(value) or value > high or value < low or (low_open and value == low):
        raise ValueError(f"{name} must be within {'(' if low_open else '['}{low}, {high}], got {value!r}")
