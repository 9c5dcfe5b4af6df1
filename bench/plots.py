"""PNG plots of latency against offered load (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import RESULTS


def latency_plot(name: str, title: str, xlabel: str, series: dict[str, tuple[list[float], list[float]]],
                 *, hlines: dict[str, float] | None = None, ylabel: str = "latency (ms)",
                 logy: bool = True) -> Path | None:
    """One line per series (x: offered load, y: latency in ms); returns the PNG path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    styles: dict[str, Any] = {}
    for label, (xs, ys) in series.items():
        styles[label] = ax.plot(xs, ys, marker="o", label=label)[0]
    for label, y in (hlines or {}).items():
        ax.axhline(y, linestyle="--", linewidth=1, color="grey" if "bound" in label else "black",
                   label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path
