"""Per-item LLM work run concurrently under one progress bar.

Every stage that sends one request (or one small chain of requests) per item runs the items through
``run_each``: all of them are started at once and the client bounds how many requests are in flight
(``ClientSettings.max_concurrency``, the spec's rate limits), so nothing here limits concurrency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def progress_bar(total: int, desc: str, unit: str) -> tqdm:
    """The pipeline's progress bar: drawn on a terminal, silent when output goes to a file or a pipe."""
    return tqdm(total=total, desc=desc, unit=unit, disable=None)


async def run_each(items: Iterable[T], work: Callable[[T], Awaitable[R]], *, desc: str | None = None,
                   unit: str = "it", bar: tqdm | None = None,
                   postfix: Callable[[], dict[str, Any]] | None = None) -> list[R]:
    """``work(item)`` for every item, concurrently; the results in the items' order.

    ``desc``: a bar of one step per item with this label (and ``unit``); ``bar``: advance this open bar instead
    (one spanning several calls); neither: no bar (the caller reports progress itself, or runs under another
    tool's bar). ``postfix``: figures to show after the bar, read as each item finishes (running token counts).
    The first exception a ``work`` raises propagates, as from ``asyncio.gather``.
    """
    items = list(items)
    if bar is None and desc is not None:
        with progress_bar(len(items), desc, unit) as own:
            return await run_each(items, work, bar=own, postfix=postfix)

    async def one(item: T) -> R:
        result = await work(item)
        if bar is not None:
            bar.update(1)
            if postfix is not None:
                bar.set_postfix(postfix(), refresh=False)
        return result

    return list(await asyncio.gather(*(one(item) for item in items)))
