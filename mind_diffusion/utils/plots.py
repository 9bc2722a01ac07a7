"""Training-curve plots for packaged models (matplotlib, headless)."""
from __future__ import annotations

import csv
from pathlib import Path


def _pyplot_and_rows(metrics_csv):
    """(matplotlib.pyplot with the headless backend, the rows of ``metrics_csv``, their steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ValueError(f"{metrics_csv} has no logged steps")
    return plt, rows, [int(r["step"]) for r in rows]


def plot_loss(metrics_csv: str | Path, out_png: str | Path, ylabel: str = "noise MSE",
              title: str | None = None) -> Path:
    """Loss per logged step and its smoothed value from a trainer's ``metrics.csv`` (columns
    ``step``, ``loss``, ``loss_smooth``), log scale, to ``out_png``."""
    plt, rows, steps = _pyplot_and_rows(metrics_csv)
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


def plot_curves(metrics_csv: str | Path, out_png: str | Path, columns, title: str | None = None,
                log: bool = True) -> Path:
    """One line per column of a ``metrics.csv`` (x: its ``step`` column), each with its own
    y-axis panel (log scale unless ``log=False``, or when a column has values <= 0), to ``out_png``."""
    plt, rows, steps = _pyplot_and_rows(metrics_csv)
    fig, axes = plt.subplots(1, len(columns), figsize=(3.6 * len(columns), 3.2), squeeze=False)
    for ax, col in zip(axes[0], columns):
        ys = [float(r[col]) for r in rows]
        ax.plot(steps, ys, lw=1.0)
        ax.set_xlabel("step")
        ax.set_title(col)
        if log and min(ys) > 0:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return Path(out_png)
