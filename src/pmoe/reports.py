"""Results for people and machines: markdown tables, PNG plots (matplotlib, Agg), JSON, mean ± std."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pmoe.io import atomic_path  # noqa: E402


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(map(str, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def line_plot(path: str | Path, series: dict[str, tuple[list[float], list[float], list[float]]], xlabel: str,
              ylabel: str, title: str, logx: bool = False, hline: float | None = None) -> None:
    """PNG of one line per series: name -> (x, mean, std); std drawn as a band."""
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    drawn = {name: xms for name, xms in series.items() if xms[0]}  # a series may have no point (e.g. never reached)
    for name, (x, m, s) in drawn.items():
        ax.plot(x, m, marker="o", label=name)
        ax.fill_between(x, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], alpha=0.2)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    if logx and drawn:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
