"""Figures of the evaluation (logged to MLflow by the evaluate stage)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mmpipeline.rank.gate import SLICES


def plot_systems(m: dict[str, dict[str, dict[str, float]]], pm: str, path: Path) -> None:
    """Bar chart of ``pm`` per system (x) and slice (bars) from system -> slice -> metric -> value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = list(m)
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(SLICES)
    for i, sl in enumerate(SLICES):
        ax.bar(np.arange(len(systems)) + i * width, [m[s].get(sl, {}).get(pm, np.nan) for s in systems], width, label=sl)
    ax.set_xticks(np.arange(len(systems)) + 0.4 - width / 2, systems, rotation=20)
    ax.set(title=f"held-out {pm} over the whole catalog", ylabel=pm)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
