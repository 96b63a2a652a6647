"""run_each: results in the items' order whatever order they finish in, one bar step per item, errors propagate."""

from __future__ import annotations

import asyncio
import io

import pytest
from tqdm import tqdm

from longwriter.llm.runner import progress_bar, run_each


async def _late_first(n: int) -> int:
    await asyncio.sleep(0.01 * (5 - n))  # the first item finishes last
    return n * 10


def test_results_in_input_order_and_run_concurrently() -> None:
    running, most = 0, 0

    async def work(n: int) -> int:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            return await _late_first(n)
        finally:
            running -= 1

    assert asyncio.run(run_each(range(5), work, desc="t", unit="x")) == [0, 10, 20, 30, 40]
    assert most == 5  # every item started at once: the client bounds the requests in flight


def test_no_items() -> None:
    assert asyncio.run(run_each([], _late_first, desc="t", unit="x")) == []


def test_an_open_bar_advances_once_per_item() -> None:
    with tqdm(total=7, file=io.StringIO()) as bar:
        asyncio.run(run_each(iter([1, 2, 3]), _late_first, bar=bar))
        asyncio.run(run_each([4], _late_first, bar=bar, postfix=lambda: {"tokens": 5}))
        assert bar.n == 4


def test_no_bar_without_desc_or_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    import longwriter.llm.runner as runner

    opened: list[int] = []
    monkeypatch.setattr(runner, "progress_bar", lambda total, *a: opened.append(total) or progress_bar(total, *a))
    assert asyncio.run(run_each([1, 2], _late_first)) == [10, 20]
    assert opened == []
    asyncio.run(run_each([1, 2], _late_first, desc="t"))
    assert opened == [2]


def test_an_error_propagates() -> None:
    async def work(n: int) -> int:
        if n == 2:
            raise KeyError("two")
        return await _late_first(n)

    with pytest.raises(KeyError, match="two"):
        asyncio.run(run_each([1, 2, 3], work, desc="t", unit="x"))
