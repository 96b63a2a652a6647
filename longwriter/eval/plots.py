"""The evaluation's figures as PNG, for people who do not use DVC's renderer (the same data goes to CSV for
``dvc plots show`` and the templates in .dvc/plots)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from longwriter.files import atomic_path


def length_png(points: pl.DataFrame, path: str | Path, title: str, *, lines: bool, reach: float | None = None,
               maxima: dict[str, str] | None = None) -> None:
    """Required vs produced words, one series per model, with the y = x line of the words asked.

    ``points`` has columns model, required, produced; ``lines`` joins each model's points (the ruler curve)
    instead of scattering them (the LongBench-Write plot). ``reach``: also the y = reach x line a length's mean
    must reach (the ruler's). ``maxima``: per model, its max output length as shown ("300", or "≥ 1000" when
    censored), added to its legend entry; a censored one is also written beside its longest point.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    try:
        top = max(int(points["required"].max() or 1), int(points["produced"].max() or 1)) if points.height else 1
        ax.plot([1, top], [1, top], linestyle="--", color="gray", linewidth=1, label="produced = required")
        if reach is not None:
            ax.plot([1, top], [reach, reach * top], linestyle=":", color="gray", linewidth=1,
                    label=f"produced = {reach:g} x required (reached)")
        for model in sorted(points["model"].unique().to_list()):
            mine = points.filter(pl.col("model") == model).sort("required")
            style = {"marker": "o"} if lines else {"marker": "o", "linestyle": "none", "alpha": 0.7}
            shown = (maxima or {}).get(model)
            label = model if shown is None else f"{model} (max output length {shown})"
            (line,) = ax.plot(mine["required"].to_list(), mine["produced"].to_list(), label=label, **style)
            at = mine.filter(pl.col("required") == int(shown.lstrip("≥ "))) if shown and shown[0] == "≥" else None
            if at is not None and at.height:  # a lower bound: written at its point, not left to the legend
                ax.annotate(f"{model}: {shown}", (at["required"][0], at["produced"][0]), fontsize="small",
                            color=line.get_color(), xytext=(4, -12), textcoords="offset points")
        ax.set_xscale("symlog", linthresh=100)
        ax.set_yscale("symlog", linthresh=100)
        ax.set_xlabel("required words")
        ax.set_ylabel("produced words")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
