"""Peak host memory of one LDM pipeline call vs image size and batch (CPU, built-in shapes model).

Each configuration runs in a fresh subprocess (graph mode, fp32, the model's default guidance,
so the UNet sees 2 x batch rows) that loads models/shapes_zh, runs one call with ``--steps``
sampling steps and reports its peak resident set (VmHWM from /proc/self/status). ``decode``
rows run the whole call (UNet + VAE decode); ``latent`` rows stop at the latents
(``output_type="latent"``), which splits the per-pixel cost between the UNet and the VAE.
A least-squares fit ``peak = base + (a_unet + a_vae) x batch x H x W`` (a_unet from the latent
rows, a_vae from the difference) is printed with its error; mind_diffusion/utils/resources.py
carries the fitted numbers.

Usage (from the repository root; about 3-5 minutes on 2 cores)::

    python bench/sampling_memory.py [--out bench/results] [--sizes 64 128 192] [--batches 1 2 4]

Writes ``sampling_memory.csv`` (kind, height, width, batch, steps, peak_bytes, seconds).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from pathlib import Path
import mind_diffusion
from mind_diffusion.runtime import init_runtime
from mind_diffusion.ldm.pipeline import LDMPipeline
kind, size, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
root = Path(sys.argv[5])
init_runtime("CPU", "graph", seed=0, precision="fp32", verbose=False)
pipe = LDMPipeline.from_pretrained(root / "models/shapes_zh/config.yaml", root / "models/shapes_zh/model.ckpt")
t0 = time.time()
out = pipe("一个红色的圆形在左边", num_images_per_prompt=batch, height=size, width=size,
           num_inference_steps=steps, seed=0, progress=False,
           output_type="latent" if kind == "latent" else "uint8")
dt = time.time() - t0
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
print(json.dumps({"peak_bytes": int(hwm.split()[1]) * 1024, "seconds": dt}))
"""


def measure(kind: str, size: int, batch: int, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    r = subprocess.run([sys.executable, "-c", CHILD, kind, str(size), str(batch), str(steps), str(ROOT)],
                       capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"{kind} {size}px x{batch} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def fit(rows: list) -> dict:
    """Least squares: peak = base + a * batch * H * W, separately for the latent and the decode
    rows; returns base, a_unet (latent rows), a_vae (decode slope - latent slope) and the
    largest absolute residual of each fit."""
    import numpy as np

    res = {}
    for kind in ("latent", "decode"):
        sel = [r for r in rows if r["kind"] == kind]
        if not sel:
            continue
        x = np.array([r["batch"] * r["height"] * r["width"] for r in sel], float)
        y = np.array([r["peak_bytes"] for r in sel], float)
        A = np.stack([np.ones_like(x), x], 1)
        (b, a), *_ = np.linalg.lstsq(A, y, rcond=None)
        err = np.abs(A @ [b, a] - y)
        res[kind] = {"base": b, "slope": a, "max_err": float(err.max()), "rel_err": float((err / y).max())}
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 192])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--kinds", nargs="+", default=["decode", "latent"], choices=["decode", "latent"])
    args = p.parse_args(argv)
    rows = []
    print(f"{'kind':>7} {'size':>5} {'batch':>5} {'peak MiB':>9} {'call s':>7}")
    for kind in args.kinds:
        for size in args.sizes:
            for batch in args.batches:
                m = measure(kind, size, batch, args.steps)
                rows.append({"kind": kind, "height": size, "width": size, "batch": batch,
                             "steps": args.steps, **m})
                print(f"{kind:>7} {size:>5} {batch:>5} {m['peak_bytes'] / 2**20:>9.1f} {m['seconds']:>7.2f}",
                      flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sampling_memory.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["kind", "height", "width", "batch", "steps", "peak_bytes", "seconds"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "seconds": f"{r['seconds']:.3f}"})
    for kind, f_ in fit(rows).items():
        print(f"fit {kind}: peak = {f_['base'] / 2**20:.1f} MiB + {f_['slope']:.1f} B x batch x H x W; "
              f"max error {f_['max_err'] / 2**20:.1f} MiB ({100 * f_['rel_err']:.1f} %)")
    print(f"wrote {out / 'sampling_memory.csv'}")


if __name__ == "__main__":
    t0 = time.time()
    main()
    print(f"total {time.time() - t0:.0f} s")
