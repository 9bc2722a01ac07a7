"""Package the built-in shapes-world GLIDE from its three training runs: fp16 copies of the chosen
exports under the released names (glide_gen.ckpt, glide_super_res.ckpt, srgan.ckpt), the tokenizer
model, the inference config, the training logs and loss curves.

    python scripts/package_glide_shapes.py --base runs/glide-shapes-base --sr runs/glide-shapes-sr \\
        --srgan runs/glide-shapes-srgan --out models/glide_shapes

Each stage is packaged on its own: give any of --base / --sr / --srgan (at least one) and only those
files are written, so a stage that is trained can ship before the others, and a stage already in --out
stays as it is (`package.json` keeps the records of the stages not repackaged):

    python scripts/package_glide_shapes.py --sr runs/glide-shapes-sr --out models/glide_shapes

--base_expert adds the base's low-noise expert (glide_gen_expert.ckpt: the tensors its training changed, the base
in --out under them; the config's checkpoint.gen_expert_ckpt and diffusion.base_expert_below name it and its switch step).
--base_expert_v1 adds the logs and curves of the expert's first phase when --base_expert is its second (the expert
with attention added at the 32 px level, configs/glide/shapes-base-expert-attn.yaml).
--base_v3 and --base_v4 add the logs and curves of the shipped base's first two phases (no checkpoints: the base's
export is the third phase, trained from them); --base32 and --base32_text those of the earlier recipe's two 32 px phases. --ckpt picks the base / SR export (glide_gen_ema.ckpt and glide_super_res_ema.ckpt by default: the
EMA weights; `raw` for glide_gen.ckpt / glide_super_res.ckpt). The inference config is
--config (default: models/glide_shapes/config.yaml, the shipped one) unless --out already holds it.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", help="the base model's training run (train.output_dir)")
    p.add_argument("--base32", help="the base model's 32 px first phase (train.output_dir): its log and loss "
                                    "curve are copied beside the base's (metrics_base32.csv, loss_base32.png)")
    p.add_argument("--base32_text", help="the base model's second 32 px phase (noisy steps weighted up): "
                                         "metrics_base32_text.csv, loss_base32_text.png")
    p.add_argument("--base_v3", help="the shipped base's first phase (shapes-base-v3.yaml, train.output_dir): "
                                     "metrics_base_v3.csv, loss_base_v3.png")
    p.add_argument("--base_expert_v1", help="the expert's first phase (shapes-base-expert.yaml, train.output_dir) when "
                                            "--base_expert is its second: metrics_base_expert_v1.csv, loss_base_expert_v1.png")
    p.add_argument("--base_v4", help="the shipped base's second phase (shapes-base-v4.yaml, train.output_dir): "
                                     "metrics_base_v4.csv, loss_base_v4.png")
    p.add_argument("--base_expert", help="the base's low-noise expert: a training run started from the base in --out "
                                         "(after --base, if given) with t drawn below diffusion.base_expert_below "
                                         "only; its tensors that differ from that base go to glide_gen_expert.ckpt")
    p.add_argument("--sr", help="the super-resolution model's training run")
    p.add_argument("--srgan", help="the SRGAN's training run (holding srgan.ckpt)")
    p.add_argument("--out", required=True, help="model folder to write (created)")
    p.add_argument("--ckpt", choices=("ema", "raw"), default="ema", help="which base / SR export to ship")
    p.add_argument("--config", default=str(ROOT / "models" / "glide_shapes" / "config.yaml"),
                   help="the inference config to put in --out")
    p.add_argument("--tokenizer", default=str(ROOT / "models" / "glide_shapes" / "shapes-sp.model"))
    args = p.parse_args(argv)
    if not (args.base or args.base_expert or args.sr or args.srgan):
        p.error("nothing to package: give at least one of --base, --base_expert, --sr, --srgan (a training run folder)")

    def job():
        from mind_diffusion.glide.packaging import EXPERT_FILE, package_expert, package_stage

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        suffix = "_ema" if args.ckpt == "ema" else ""
        runs = {"base": args.base, "sr": args.sr, "srgan": args.srgan}
        stages = tuple((kind, Path(runs[kind]) / src, name) for kind, src, name in (
            ("base", f"glide_gen{suffix}.ckpt", "glide_gen.ckpt"),
            ("sr", f"glide_super_res{suffix}.ckpt", "glide_super_res.ckpt"),
            ("srgan", "srgan.ckpt", "srgan.ckpt")) if runs[kind])
        expert_src = Path(args.base_expert) / f"glide_gen{suffix}.ckpt" if args.base_expert else None
        for kind, src, _ in (*stages, *((("base expert", expert_src, None),) if expert_src else ())):
            if not src.is_file():
                raise FileNotFoundError(f"{src} not found: finish the {kind} training first "
                                        f"(bash scripts/train_glide_shapes.sh)")
        # the base's 32 px phases ship their logs only: (flag, run, tag, curve label)
        phases = (("--base32", args.base32, "base32", "mse + vb"),
                  ("--base32_text", args.base32_text, "base32_text", "weighted mse + vb"),
                  ("--base_v3", args.base_v3, "base_v3", "weighted mse + vb"),
                  ("--base_v4", args.base_v4, "base_v4", "weighted mse + vb"),
                  ("--base_expert_v1", args.base_expert_v1, "base_expert_v1", "weighted mse + vb"))
        for flag, run, _, _ in phases:
            if run and not (Path(run) / "metrics.csv").is_file():
                raise FileNotFoundError(f"{Path(run) / 'metrics.csv'} not found ({flag}: an earlier phase's training run)")
        record = out / "package.json"
        try:
            report = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        except ValueError:
            print(f"warning: {record} is not JSON; it is rewritten with this run's stages only", flush=True)
            report = {}
        for kind, src, name in stages:
            report[name] = {"from": str(src), **package_stage(src, out / name, kind)}
            print(f"{name}: {report[name]['bytes'] / 1e6:.2f} MB fp16 (max relative rounding "
                  f"{report[name]['fp16_rel_error']:.1e}) from {src}", flush=True)
        if expert_src is not None:
            report[EXPERT_FILE] = {"from": str(expert_src), **package_expert(expert_src, out / "glide_gen.ckpt",
                                                                            out / EXPERT_FILE)}
            print(f"{EXPERT_FILE}: {report[EXPERT_FILE]['bytes'] / 1e6:.2f} MB fp16, "
                  f"{report[EXPERT_FILE]['tensors']} tensors that differ from {out / 'glide_gen.ckpt'}", flush=True)
        for src, name in ((Path(args.tokenizer), "shapes-sp.model"), (Path(args.config), "config.yaml")):
            dst = out / name
            if not dst.exists() or dst.resolve() != src.resolve():
                if not src.is_file():
                    raise FileNotFoundError(f"{src} not found (--{'tokenizer' if name.endswith('model') else 'config'})")
                shutil.copyfile(src, dst)
        from mind_diffusion.utils.plots import plot_loss

        for run, tag, what in (*((run, tag, what) for _, run, tag, what in phases), (runs["base"], "base", "mse + vb"),
                               (args.base_expert, "base_expert", "mse + vb"), (runs["sr"], "sr", "mse + vb"),
                               (runs["srgan"], "srgan", None)):
            if not run:
                continue
            run = Path(run)
            if (run / "metrics.csv").is_file():
                shutil.copyfile(run / "metrics.csv", out / f"metrics_{tag}.csv")
                if what:
                    plot_loss(run / "metrics.csv", out / f"loss_{tag}.png", ylabel=what)
            for png in run.glob("loss*.png"):  # the SRGAN trainer's own curves
                shutil.copyfile(png, out / f"{png.stem}_{tag}.png")
        record.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        total = sum(r["bytes"] for r in report.values())
        written = [name for _, _, name in stages] + ([EXPERT_FILE] if expert_src else [])
        print(f"wrote {out}: {', '.join(written)}; the checkpoints package.json "
              f"records come to {total / 1e6:.1f} MB in all")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
