"""Data-parallel scaling of the trainers: training img/s for 1 and 2 workers on this machine,
and the efficiency img/s(N) / (N x img/s(1)).

Weak scaling, as mindone reports it: every worker keeps its batch (the global batch grows with the
workers). One worker is one plain ``scripts/train_<family>.py`` process; N workers are one msrun
launch through ``scripts/launch_train.py`` (the path users take). img/s comes from the run's
``metrics.csv`` (a row every step): images of the steps after ``--warmup`` divided by their wall
time, so graph compilation is left out.

Configs: ``ddpm-tiny`` (the tests' tiny UNet), ``ddpm-digits16`` (configs/ddpm/digits16.yaml, the
built-in digits model's recipe), ``ldm-tiny`` (configs/ldm/tiny-csv.yaml), ``ldm-shapes``
(configs/shapes/ldm.yaml, the built-in shapes model, fine-tuned from models/shapes_zh). The LDM runs
read a small export of the shapes world (made once in the output folder).

    python bench/scaling.py                                   # all four, 1 and 2 workers
    python bench/scaling.py --configs ddpm-tiny,ldm-tiny --steps 12

Writes ``<out>/scaling.md`` with the machine, its load average before and after, and the table.
On a machine with fewer cores than workers x threads, the workers share cores and the efficiency
says so; the Ascend figures to compare with are in the README.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import cpu_name

ROOT = Path(__file__).resolve().parents[1]

TINY_DDPM = ["model.img_channels=1", "model.image_size=8", "model.base_channels=16", "model.channel_mults=[1,2]",
             "model.num_res_blocks=1", "model.time_emb_dim=32", "model.num_groups=4", "model.dropout=0.0",
             "model.attention_resolutions=[1]"]
# name -> (trainer, config, per-worker batch, batch is global in the config?, extra overrides)
CONFIGS = {
    "ddpm-tiny": ("ddpm", "configs/ddpm/digits16.yaml", 8, True, TINY_DDPM),
    "ddpm-digits16": ("ddpm", "configs/ddpm/digits16.yaml", 32, True, []),
    "ldm-tiny": ("ldm", "configs/ldm/tiny-csv.yaml", 2, False, ["data.caption_dropout=0.0"]),
    "ldm-shapes": ("ldm", "configs/shapes/ldm.yaml", 4, False,
                   ["init.checkpoint=models/shapes_zh/model.ckpt", "init.vae_checkpoint=null",
                    "init.vocab=models/shapes_zh/vocab.txt", "data.cache_latents=false",
                    "train.text_encoder_start_step=0"]),
}


def shapes_data(folder: Path, n: int) -> Path:
    from mind_diffusion.shapes.world import build_vocab, export_csv

    if not (folder / "data.csv").is_file():
        export_csv(folder, n, progress=False, overwrite=True)
        build_vocab(folder / "vocab.txt")
    return folder


def images_per_second(metrics: Path, global_batch: int, warmup: int) -> tuple[float, int]:
    rows = [r for r in csv.DictReader(metrics.open()) if r["step"].isdigit()]
    rows = [r for r in rows if int(r["step"]) >= warmup]
    if len(rows) < 2:
        raise RuntimeError(f"{metrics}: fewer than 2 logged steps after the warm-up {warmup}")
    a, b = rows[0], rows[-1]
    steps = int(b["step"]) - int(a["step"])
    return steps * global_batch / max(float(b["time_s"]) - float(a["time_s"]), 1e-9), steps


def run(name: str, workers: int, steps: int, warmup: int, work: Path, data: Path, port: int) -> dict:
    trainer, config, batch, is_global, extra = CONFIGS[name]
    out = work / f"{name}-{workers}w"
    shutil.rmtree(out, ignore_errors=True)
    args = ["--config", config, "--device_target", "CPU", "--no_progress", *extra,
            f"train.batch_size={batch * workers if is_global else batch}", f"train.steps={steps}",
            "train.log_every=1", f"train.ckpt_every={steps + 1}", f"train.output_dir={out}"]
    if trainer == "ldm":
        args.append(f"data.path={data}")
        if name == "ldm-tiny":
            args.append(f"init.vocab={data / 'vocab.txt'}")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    if workers == 1:
        cmd = [sys.executable, str(ROOT / "scripts" / f"train_{trainer}.py"), *args]
    else:
        cmd = [sys.executable, str(ROOT / "scripts" / "launch_train.py"), "msrun", trainer, "--worker_num",
               str(workers), "--master_port", str(port), "--log_dir", str(work / f"{name}-{workers}w-logs"), "--",
               *args]
    start = time.time()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{name} x{workers} failed ({p.returncode}):\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}")
    ips, timed = images_per_second(out / "metrics.csv", batch * workers, warmup)
    return {"config": name, "workers": workers, "batch_per_worker": batch, "timed_steps": timed,
            "img_per_s": ips, "wall_s": time.time() - start}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {', '.join(CONFIGS)}")
    p.add_argument("--workers", default="1,2", help="worker counts (the first is the baseline)")
    p.add_argument("--steps", type=int, default=14, help="steps per run (log every step)")
    p.add_argument("--warmup", type=int, default=4, help="steps left out of the timing (compilation)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    bad = [n for n in names if n not in CONFIGS]
    if bad:
        p.error(f"unknown config {bad[0]!r}: use {', '.join(CONFIGS)}")
    counts = [int(w) for w in args.workers.split(",")]
    if args.steps < args.warmup + 2:
        p.error(f"--steps must be at least --warmup + 2 = {args.warmup + 2}")
    out = Path(args.out)
    work = out / "scaling_runs"
    work.mkdir(parents=True, exist_ok=True)
    data = shapes_data(work / "shapes_data", 64)
    load0 = os.getloadavg()
    from mind_diffusion.train.launch import free_port

    rows = []
    for name in names:
        base = None
        for n in counts:
            r = run(name, n, args.steps, args.warmup, work, data, free_port())
            base = base or r["img_per_s"] / n
            r["efficiency"] = r["img_per_s"] / (n * base)
            rows.append(r)
            print(f"{name:14s} {n} worker(s)  {r['img_per_s']:8.2f} img/s  efficiency {r['efficiency']:.2f}  "
                  f"({r['timed_steps']} timed steps, {r['wall_s']:.0f} s)", flush=True)
    load1 = os.getloadavg()
    lines = ["# Data-parallel scaling on this machine", "",
             f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}",
             f"- load average (1/5/15 min) before: {load0[0]:.2f} / {load0[1]:.2f} / {load0[2]:.2f}; after: "
             f"{load1[0]:.2f} / {load1[1]:.2f} / {load1[2]:.2f}",
             f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.steps} steps per run, the first "
             f"{args.warmup} left out; weak scaling (batch per worker fixed); 1 worker = one process, 2 = msrun", "",
             "| config | workers | batch / worker | img/s | efficiency |", "|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['workers']} | {r['batch_per_worker']} | {r['img_per_s']:.2f} | "
              f"{r['efficiency']:.2f} |" for r in rows]
    lines += ["", "Target on Ascend (mindone, SD-1.5, 910, MindSpore 2.1): 5.98 img/s on 1 card, 31.18 img/s on 8 "
              "(efficiency 0.65); LoRA 8.25 and 63.85 (0.97)."]
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'scaling.md'}")


if __name__ == "__main__":
    main()
