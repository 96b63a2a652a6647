"""Computing a costly Polars expression only on the rows it can change, on the streaming engine.

The prefilter steps of ``select`` (normalising, dedup keys, stated lengths) split a million-row pool into
parts by cheap row conditions and run each part's expression on its rows alone.
"""

from __future__ import annotations

import polars as pl


def row_frame(prompts: pl.Series, **flags: pl.Expr) -> pl.DataFrame:
    """A frame of ``prompts`` (column ``p``) with a row index ``i`` and the given columns."""
    frame = pl.DataFrame({"p": prompts}).with_row_index("i")
    return frame.lazy().with_columns(**flags).collect(engine="streaming").sort("i") if flags else frame


def by_part(frame: pl.DataFrame, parts: list[tuple[pl.Expr, pl.Expr]], *keep: str) -> pl.DataFrame:
    """``frame`` (with a row index ``i``) split by the row conditions of ``parts``, each part's expression
    computed on its rows only (an expensive step is not run on rows it would not change), with the columns
    ``keep``, in row order.

    Both helpers run on the streaming engine, which spreads row batches over all cores (the in-memory engine
    evaluates a string expression on one core) and never holds a whole intermediate column (such as the
    lowercased pool).
    """
    lazy = frame.lazy()
    parts_ = [lazy.filter(cond).select("i", expr, *keep) for cond, expr in parts]
    return pl.concat(parts_).collect(engine="streaming").sort("i")
