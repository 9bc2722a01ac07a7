"""Sampler accuracy vs number of steps on Gaussian data with the analytic optimal model.

For x0 ~ N(mu, s^2) the optimal noise prediction is
``E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar)``. Each sampler
is driven by this oracle from ``--n`` standard-normal scalars, and the error of the produced
samples is reported as ``|mean - mu| + |std - s|`` (both parts are in the CSV).

Usage (from the repository root)::

    python bench/samplers.py [--out bench/results] [--schedule linear] [--n 20000]

Writes ``samplers.md`` (Markdown table), ``samplers.csv`` and ``samplers.png`` (log-log plot).
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import mind_diffusion  # noqa: E402,F401  (sets env defaults before mindspore is imported)
import numpy as np  # noqa: E402

from mind_diffusion.diffusion.samplers import SAMPLERS  # noqa: E402
from mind_diffusion.diffusion.schedule import DiffusionSchedule  # noqa: E402

STEPS = (5, 10, 15, 20, 25, 50, 100, 250, 1000)

# label -> (sampler name, options)
CONFIGS = {
    "ddpm (fixed_small)": ("ddpm", {}),
    "ddpm (fixed_large)": ("ddpm", {"variance_type": "fixed_large"}),
    "ddim (eta=0)": ("ddim", {}),
    "ddim (eta=1)": ("ddim", {"eta": 1.0}),
    "plms": ("plms", {}),
    "dpm_solver++ 2M (time_uniform)": ("dpm_solver", {}),
    "dpm_solver++ 2M (logSNR)": ("dpm_solver", {"skip_type": "logSNR"}),
}


def gaussian_oracle(schedule: DiffusionSchedule, mu: float, s: float):
    """The optimal eps-prediction model for N(mu, s^2) data."""
    def model_fn(x, t):
        x = x.astype(np.float64)
        ab = schedule.alpha_bar_at(np.asarray(t, dtype=np.float64))
        ab = ab.reshape((-1,) + (1,) * (x.ndim - 1))
        return np.sqrt(1.0 - ab) * (x - np.sqrt(ab) * mu) / (ab * s * s + 1.0 - ab)
    return model_fn


def run_benchmark(schedule_kind: str = "linear", n: int = 20000, mu: float = 0.5,
                  s: float = 0.3, seed: int = 0, steps=STEPS):
    """Return a list of result dicts (one per sampler configuration and step count)."""
    schedule = DiffusionSchedule.create(schedule_kind, 1000)
    model_fn = gaussian_oracle(schedule, mu, s)
    x_T = np.random.default_rng(seed).standard_normal(n)
    rows = []
    for label, (name, opts) in CONFIGS.items():
        for num_steps in steps:
            t0 = time.perf_counter()
            out = SAMPLERS[name](model_fn, x_T, schedule, num_steps,
                                 rng=np.random.default_rng(seed + 1), progress=False, **opts)
            elapsed = time.perf_counter() - t0
            mean_err = abs(float(out.mean()) - mu)
            std_err = abs(float(out.std()) - s)
            rows.append({"sampler": label, "steps": num_steps, "mean_err": mean_err,
                         "std_err": std_err, "error": mean_err + std_err, "seconds": elapsed})
    return rows


def markdown_table(rows, steps=STEPS) -> str:
    labels = list(dict.fromkeys(r["sampler"] for r in rows))
    by_key = {(r["sampler"], r["steps"]): r for r in rows}
    head = "| steps | " + " | ".join(labels) + " |"
    sep = "|---:|" + "---:|" * len(labels)
    lines = [head, sep]
    for num_steps in steps:
        cells = [f"{by_key[(lab, num_steps)]['error']:.4f}" for lab in labels]
        lines.append(f"| {num_steps} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for label in dict.fromkeys(r["sampler"] for r in rows):
        pts = [(r["steps"], max(r["error"], 1e-6)) for r in rows if r["sampler"] == label]
        ax.loglog(*zip(*pts), marker="o", label=label)
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("|mean - mu| + |std - s|")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"),
                        help="output directory (default: bench/results)")
    parser.add_argument("--schedule", default="linear",
                        help="beta schedule: linear, scaled_linear or cosine (default: linear)")
    parser.add_argument("--n", type=int, default=20000, help="number of scalar samples")
    parser.add_argument("--mu", type=float, default=0.5, help="data mean")
    parser.add_argument("--s", type=float, default=0.3, help="data standard deviation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 2 or args.s <= 0:
        parser.error("--n must be >= 2 and --s > 0")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = run_benchmark(args.schedule, args.n, args.mu, args.s, args.seed)
    total = time.perf_counter() - t0

    title = (f"Gaussian oracle, N({args.mu}, {args.s}^2), {args.schedule} schedule T=1000, "
             f"n={args.n}")
    table = markdown_table(rows)
    md = (f"# Sampler error vs steps\n\n{title}. Error = |mean - mu| + |std - s| of the samples "
          f"(sampling noise floor ~{args.s / np.sqrt(args.n):.4f}).\n\n{table}\n")
    (out_dir / "samplers.md").write_text(md)
    with open(out_dir / "samplers.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sampler", "steps", "mean_err", "std_err",
                                               "error", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out_dir / "samplers.png", title)
    print(md)
    print(f"wrote {out_dir / 'samplers.md'}, samplers.csv, samplers.png ({total:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
