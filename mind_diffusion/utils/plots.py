"""Training-curve plots for packaged models (matplotlib, headless)."""
from __future__ import annotations

import csv
from pathlib import Path


def plot_loss(metrics_csv: str | Path, out_png: str | Path, ylabel: str = "noise MSE",
              title: str | None = None) -> Path:
    """Loss per logged step and its smoothed value from a trainer's ``metrics.csv`` (columns
    ``step``, ``loss``, ``loss_smooth``), log scale, to ``out_png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{metrics_csv} has no logged steps")
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [float(r["loss"]) for r in rows], lw=0.6, alpha=0.5, label="loss (logged step)")
    ax.plot(steps, [float(r["loss_smooth"]) for r in rows], lw=1.5, label="smoothed")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return Path(out_png)
