"""Full fine-tuning vs LoRA: memory, speed and output size of a training step, through the same
trainer (scripts/train_ldm.py's ``build_ldm_trainer``), on the tiny config and the built-in
shapes model (models/shapes_zh).

Each (model, mode) runs in its own subprocess, so its peak RSS is its own: build the trainer on a
small shapes-world export (cached latents off: the VAE encode is part of every step, as in the
original), train ``--steps`` steps (the first one compiles the graph), and report trainable
parameters, the median time of the steps after the first, the process's peak RSS and the size of
the exported file (full ``model.ckpt`` vs LoRA-only ``lora.ckpt``).

    python bench/lora_train.py                 # both models, writes bench/results/lora_train.md
    python bench/lora_train.py --quick         # tiny only, 4 steps, prints
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from _common import cpu_name  # noqa: E402

SHARED = Path(os.environ.get("MIND_DIFFUSION_SHARED", ROOT.parent / "shared"))
MODELS = {
    # name: (config, overrides, batch)
    "tiny": (ROOT / "configs" / "ldm" / "tiny-csv.yaml", [f"init.vocab={SHARED / 'reference' / 'vocab_zh.txt'}",
                                                          "data.image_size=32"], 4),
    "shapes_zh": (ROOT / "configs" / "shapes" / "ldm.yaml",
                  [f"init.checkpoint={ROOT / 'models' / 'shapes_zh' / 'model.ckpt'}",
                   f"init.vocab={ROOT / 'models' / 'shapes_zh' / 'vocab.txt'}", "init.vae_checkpoint=null",
                   "train.text_encoder_start_step=0", "train.ema_decay=0"], 8),
}
LORA = ["model.unet.enable_lora=true", "model.unet.lora_rank=4", "model.unet.lora_alpha=4"]


def child(model: str, mode: str, out: Path, steps: int, data: Path) -> dict:
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_train_config_defaults
    from mind_diffusion.ldm.training import build_ldm_trainer
    from mind_diffusion.runtime import init_runtime

    cfg_path, extra, batch = MODELS[model]
    over = [*extra, f"data.path={data}", f"train.output_dir={out}", f"train.steps={steps}", f"train.batch_size={batch}",
            "train.log_every=1", f"train.ckpt_every={steps}", "data.cache_latents=false", "data.caption_dropout=0.1",
            "train.loss_scale=none", *(LORA if mode == "lora" else [])]
    cfg = load_config(cfg_path, over, ldm_train_config_defaults())
    rt = init_runtime("CPU", "graph", seed=0)
    trainer, make = build_ldm_trainer(cfg, rt, progress=False)
    n_train = sum(int(p.size) for p in trainer.model.trainable_params())
    n_all = sum(int(p.size) for p in trainer.model.get_parameters())
    t0 = time.time()
    trainer.fit(make)
    rows = (out / "metrics.csv").read_text().strip().splitlines()[1:]
    times = [float(r.split(",")[-1]) for r in rows]
    per_step = [b - a for a, b in zip(times, times[1:])]
    export = out / ("lora.ckpt" if mode == "lora" else "model.ckpt")
    return {"model": model, "mode": mode, "trainable": n_train, "params": n_all, "batch": batch,
            "first_step_s": times[0], "step_s": statistics.median(per_step), "wall_s": time.time() - t0,
            "export_mb": export.stat().st_size / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(model: str, mode: str, steps: int, data: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, __file__, "--child", model, mode, tmp, str(steps), str(data)],
                           capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            raise SystemExit(f"{model}/{mode} failed:\n{r.stderr[-3000:]}")
        return json.loads(r.stdout.strip().splitlines()[-1])


def table(results: list[dict], steps: int) -> str:
    lines = [f"CPU: {cpu_name()}, {os.cpu_count()} cores; {steps} steps each (the first compiles); "
             f"1-minute load average during the runs {min(r['load'] for r in results):.1f}-"
             f"{max(r['load'] for r in results):.1f}", "",
             "| model | mode | trainable params | share | batch | step (median) | first step | peak RSS | exported file |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {'LoRA rank 4 (attention)' if r['mode'] == 'lora' else 'full fine-tune'} | "
                     f"{r['trainable']:,} | {r['trainable'] / r['params']:.2%} | {r['batch']} | {r['step_s']:.2f} s | "
                     f"{r['first_step_s']:.0f} s | {r['peak_rss_mb']:.0f} MB | {r['export_mb']:.2f} MB |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    if args.child:
        model, mode, out, steps, data = args.child
        print(json.dumps(child(model, mode, Path(out), int(steps), Path(data))))
        return 0
    from mind_diffusion.shapes.world import export_csv

    models = ["tiny"] if args.quick else args.models
    steps = 4 if args.quick else args.steps
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        export_csv(data, 32, progress=False)
        for model in models:
            for mode in ("lora", "full"):
                res = run(model, mode, steps, data)
                res["load"] = os.getloadavg()[0]
                results.append(res)
                print(json.dumps(res), flush=True)
                text = table(results, steps)  # rewritten after every row: a long run keeps what it measured
                if not args.quick:
                    out = Path(args.out)
                    out.mkdir(parents=True, exist_ok=True)
                    (out / "lora_train.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
