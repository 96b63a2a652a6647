"""Rank correlations: Spearman's rho and Kendall's tau-b, for a second judge against the first (``agreement``)
and a length predictor against the lengths prompts state (``length_target``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho (average ranks for ties); None when either side is constant or there are < 2 pairs."""
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    frame = pl.DataFrame({"a": a, "b": b})
    return float(frame.select(pl.corr("a", "b", method="spearman")).item())


def kendall_tau_b(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b (tie-corrected); None when either side is constant. O(n^2): a few hundred answers at most,
    and polars has no Kendall (scipy would be a dependency for this one function)."""
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    x, y = np.asarray(a), np.asarray(b)
    dx, dy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    upper = np.triu_indices(len(x), k=1)
    dx, dy = dx[upper], dy[upper]
    concordant_minus_discordant = float((dx * dy).sum())
    untied_x, untied_y = float((dx != 0).sum()), float((dy != 0).sum())
    return concordant_minus_discordant / (untied_x * untied_y) ** 0.5
