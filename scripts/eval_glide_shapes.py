"""Prompt adherence of a shapes-world GLIDE (the built-in `models/glide_shapes/` or training runs'
exports) at each stage: the base model's 64 px images and, with --stages 256 / 1024, whether the
super-resolution and SRGAN stages keep what the base drew (the scorer's verdicts unchanged).

    python scripts/eval_glide_shapes.py --model models/glide_shapes --out output/glide_eval
    python scripts/eval_glide_shapes.py --model models/glide_shapes --stages 64 \\
        --gen_ckpt runs/glide-shapes-base/glide_gen_ema.ckpt --per_prompt 4

For the held-out combinations (never drawn in training) and seen ones (`shapes.world.eval_prompts`),
`--per_prompt` images per prompt (image j of a split has seed --seed + j) are scored at every stage.
Writes `adherence.md` (table), `adherence.csv` (one row per image) and `grid_<split>_<size>.png`.
"""
import argparse
import csv
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli
from mind_diffusion.evaluation.adherence import evaluate_stages, label_grid, stage_markdown, stage_rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/glide_shapes", help="folder with config.yaml, the checkpoints "
                                                                  "and the tokenizer model")
    p.add_argument("--gen_ckpt", default=None, help="base checkpoint (default: the config's, in --model)")
    p.add_argument("--super_ckpt", default=None, help="SR checkpoint (default: the config's, in --model)")
    p.add_argument("--srgan_ckpt", default=None, help="SRGAN checkpoint (default: the config's, in --model)")
    p.add_argument("--stages", type=int, default=1024, choices=(64, 256, 1024))
    p.add_argument("--out", default="output/glide_shapes_eval", help="output folder (created)")
    p.add_argument("--per_prompt", type=int, default=4)
    p.add_argument("--n_heldout", type=int, default=16, help="held-out prompts (16: each held-out combination)")
    p.add_argument("--n_seen", type=int, default=16, help="seen (training-combination) prompts")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8, help="images per pipeline call")
    p.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. sampling.guidance_scale=3")
    from mind_diffusion.runtime import add_runtime_args

    add_runtime_args(p)
    args = p.parse_args(argv)

    def job():
        from mind_diffusion.glide.pipeline import GlidePipeline
        from mind_diffusion.runtime import cli_options, init_runtime
        from mind_diffusion.shapes.world import eval_prompts
        from mind_diffusion.utils.images import check_output_dir

        if args.per_prompt < 1:
            raise ValueError(f"--per_prompt must be >= 1, got {args.per_prompt}")
        model = Path(args.model)
        if not (model / "config.yaml").is_file():
            raise FileNotFoundError(f"{model} holds no config.yaml (a built-in GLIDE folder such as "
                                    f"models/glide_shapes)")
        cfg = GlidePipeline.load_config(model / "config.yaml", args.set)
        c = cfg.checkpoint
        files = {"gen": args.gen_ckpt or model / c.gen_ckpt, "super": args.super_ckpt or model / c.super_ckpt,
                 "srgan": args.srgan_ckpt or model / c.srgan_ckpt}
        rt = init_runtime(args.device_target, args.mode, seed=0, precision=args.precision, **cli_options(args))
        pipe = GlidePipeline.from_pretrained(cfg, files["gen"], files["super"] if args.stages >= 256 else None,
                                             files["srgan"] if args.stages >= 1024 else None,
                                             tokenizer=model / cfg.tokenizer.sp_model, stages=args.stages,
                                             compute_dtype=rt.precision.ms_dtype())
        out = check_output_dir(args.out)
        s = cfg.sampling
        settings = {"sampler": str(s.sampler), "steps": int(s.num_inference_steps),
                    "scale": float(s.guidance_scale), "uncond": str(s.uncond), "super_res_steps": int(s.super_res_steps),
                    "stages": args.stages, "per_prompt": args.per_prompt, "seed": args.seed,
                    "checkpoints": {k: str(v) for k, v in files.items()}, "sha256": pipe.checkpoint_hashes()}

        def run(prompts, seed):
            res = pipe(prompts, seed=seed, num_images_per_prompt=1, stages=args.stages, progress=False)
            return {size: res[size] for size in (64, 256, 1024) if size <= args.stages}

        table, all_rows = {}, []
        for split, n in (("heldout", args.n_heldout), ("train", args.n_seen)):
            if n <= 0:
                continue
            rows, images = evaluate_stages(run, eval_prompts(split, n), args.per_prompt, args.seed, args.batch)
            for r in rows:
                r["split"] = split
            all_rows += rows
            name = "held-out combinations" if split == "heldout" else "seen combinations"
            table[name] = stage_rates(rows)
            for size, r in table[name].items():
                print(f"{name} @ {size}px: " + ", ".join(f"{k} {v:.1%}" for k, v in r.items() if k != "n"), flush=True)
            for size, imgs in images.items():
                small = [im[::max(1, im.shape[0] // 128), ::max(1, im.shape[0] // 128)] for im in imgs]  # <= 128 px cells
                label_grid(small, [r["prompt"] for r in rows]).save(out / f"grid_{split}_{size}.png")
        (out / "adherence.md").write_text(stage_markdown(table, settings), encoding="utf-8")
        with open(out / "adherence.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["split", *[k for k in all_rows[0] if k != "split"]])
            w.writeheader()
            w.writerows(all_rows)
        print(f"wrote {out / 'adherence.md'}, adherence.csv and grid PNGs")
        return table

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
