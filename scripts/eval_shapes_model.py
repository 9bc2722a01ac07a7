"""Prompt adherence of a shapes-world text-to-image model (the built-in `models/shapes_zh/` or a
training run's export), measured with the shapes scorer at the model's default sampler settings.

    python scripts/eval_shapes_model.py --model models/shapes_zh --out output/shapes_eval
    python scripts/eval_shapes_model.py --model runs/shapes-ldm --ckpt model_ema.ckpt --per_prompt 2

For each split (held-out combinations, never drawn in training, and seen ones) it generates
`--per_prompt` images for each of the fixed prompts of `shapes.world.eval_prompts` (one shape
each), scores colour / shape / position, and writes `adherence.md` (table), `adherence.csv` (one
row per image) and `grid_<split>.png` (samples with their prompts) into --out.
"""
import argparse
import csv
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli
from mind_diffusion.evaluation.adherence import KEYS, evaluate, label_grid, markdown, rates


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/shapes_zh", help="model folder (config.yaml) or train_ldm.py output_dir (model.yaml), with the checkpoint")
    p.add_argument("--ckpt", default=None, help="checkpoint file name inside --model (default: from the config)")
    p.add_argument("--out", default="output/shapes_eval", help="output folder (created)")
    p.add_argument("--per_prompt", type=int, default=4, help="images per prompt (default 4)")
    p.add_argument("--n_heldout", type=int, default=16, help="held-out prompts (16 = every held-out combination once)")
    p.add_argument("--n_seen", type=int, default=16, help="seen (training-combination) prompts")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    p.add_argument("--scale", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--sampler", default=None)
    from mind_diffusion.runtime import add_runtime_args

    add_runtime_args(p)
    args = p.parse_args(argv)

    def job():
        from mind_diffusion.ldm.pipeline import LDMPipeline
        from mind_diffusion.runtime import cli_options, init_runtime
        from mind_diffusion.shapes.world import eval_prompts
        from mind_diffusion.utils.images import check_output_dir

        if args.per_prompt < 1:
            raise ValueError(f"--per_prompt must be >= 1, got {args.per_prompt}")
        model = Path(args.model)
        # a train_ldm.py output_dir holds model.yaml (inference) beside config.yaml (its training config)
        cfg = next((model / n for n in ("model.yaml", "config.yaml") if (model / n).is_file()), None)
        if cfg is None:
            raise FileNotFoundError(f"{model} holds no config.yaml / model.yaml (a shapes model folder or a "
                                    f"train_ldm.py output_dir)")
        from mind_diffusion.config import load_config
        from mind_diffusion.ldm.config import ldm_config_defaults

        c = load_config(cfg, [], ldm_config_defaults())
        ckpt = model / (args.ckpt or c.checkpoint.name)
        if not ckpt.is_file():
            have = ", ".join(sorted(q.name for q in model.glob("*.ckpt"))) or "none"
            raise FileNotFoundError(f"checkpoint not found: {ckpt} (--ckpt is a file name inside --model; "
                                    f"checkpoints there: {have})")
        rt = init_runtime(args.device_target, args.mode, seed=0, precision=args.precision,
                          **cli_options(args))
        pipe = LDMPipeline.from_pretrained(cfg, ckpt, compute_dtype=rt.precision.ms_dtype())
        out = check_output_dir(args.out)
        kw = {k: v for k, v in (("num_inference_steps", args.steps), ("guidance_scale", args.scale),
                                ("sampler", args.sampler)) if v is not None}
        a = LDMPipeline.check_inputs(pipe.cfg, "-", **kw)
        settings = {"sampler": a["sampler"], "steps": a["num_inference_steps"],
                    "scale": a["guidance_scale"], "size": f"{a['width']}x{a['height']}",
                    "per_prompt": args.per_prompt, "seed": args.seed,
                    "checkpoint": str(ckpt), "checkpoint_sha256": pipe.ckpt_hash}
        table, all_rows = {}, []
        for split, n in (("heldout", args.n_heldout), ("train", args.n_seen)):
            if n <= 0:
                continue
            prompts = eval_prompts(split, n)

            def run(ps, seed, progress, _kw=kw):
                return pipe(ps, seed=seed, progress=False, **_kw).images

            rows, images = evaluate(run, prompts, args.per_prompt, args.seed)
            for r in rows:
                r["split"] = split
            all_rows += rows
            name = "held-out combinations" if split == "heldout" else "seen combinations"
            table[name] = rates(rows)
            print(f"{name}: " + ", ".join(f"{k} {table[name][k]:.1%}" for k in KEYS), flush=True)
            label_grid(images, [r["prompt"] for r in rows]).save(out / f"grid_{split}.png")
        (out / "adherence.md").write_text(markdown(table, settings), encoding="utf-8")
        with open(out / "adherence.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["split", "prompt", "seed", *KEYS, "detected"])
            w.writeheader()
            w.writerows(all_rows)
        print(f"wrote {out / 'adherence.md'}, adherence.csv and grid PNGs")
        return table

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
