"""Teach the built-in shapes model a shape it never saw (十字形, a cross) and measure what it learnt.

    python scripts/shapes_personalize.py data --out data/cross        # 5 instance images, 200 class images
    python scripts/run_db_train.py ... --train_config configs/shapes/lora.yaml   # (see README "Personalisation")
    python scripts/shapes_personalize.py eval --model models/shapes_zh --lora runs/lora-cross/lora.ckpt --out out/lora
    python scripts/shapes_personalize.py eval --model runs/db-cross --out out/db --heldout

`eval` generates --per_prompt images for every prompt that combines the token with a colour and a
place the cross was never shown in, scores them with the shapes scorer (shape = a cross), and writes
new_shape.md (table), new_shape.csv and grid_new_shape.png into --out; --seen adds a row (and
grid_seen.png) for the instance images' own colour x place pairs (learned vs carried over); --heldout
adds the model's original held-out / seen adherence table (scripts/eval_shapes_model.py's prompts and
seeds), with adherence.csv (what every image was read as) and grid_heldout.png / grid_train.png.
--token is the text the instance captions put where the shape word goes (e.g. sks, or sks形 with the
class word).
"""
import argparse
import csv
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli


def data(args):
    from mind_diffusion.shapes.personalize import write_class_images, write_class_prompts, write_instances
    from mind_diffusion.utils.images import check_output_dir

    import numpy as np
    from PIL import Image
    from mind_diffusion.evaluation.adherence import label_grid

    out = check_output_dir(args.out)
    paths = write_instances(out / "instances", token=args.token)
    label_grid([np.asarray(Image.open(p)) for p in paths], [p.with_suffix(".txt").read_text(encoding="utf-8").strip()
                                                          for p in paths], ncol=len(paths)).save(out / "instances.png")
    write_class_images(out / "world", n=args.n_class)
    write_class_prompts(out / "class_prompts.txt")
    print(f"wrote {len(paths)} instance images to {out / 'instances'}, {args.n_class} class images to "
          f"{out / 'world'} and {out / 'class_prompts.txt'}")


def model_files(args):
    """(config, checkpoint) of --model / --ckpt, each checked to exist."""
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults

    model = Path(args.model)
    cfg = next((model / n for n in ("model.yaml", "config.yaml") if (model / n).is_file()), None)
    if cfg is None:
        raise FileNotFoundError(f"{model} holds no config.yaml / model.yaml (a shapes model folder or a training "
                                f"output_dir)")
    ckpt = model / (args.ckpt or str(load_config(cfg, [], ldm_config_defaults()).checkpoint.name))
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt} (--ckpt is a file name inside --model)")
    return cfg, ckpt


def load_pipe(args, rt, cfg, ckpt):
    """The pipeline of ``cfg`` / ``ckpt`` (from :func:`model_files`) with the --lora files applied."""
    from mind_diffusion.ldm.pipeline import LDMPipeline

    pipe = LDMPipeline.from_pretrained(cfg, ckpt, compute_dtype=rt.precision.ms_dtype())
    for spec in args.lora:
        from mind_diffusion.ldm.lora import parse_lora_arg

        path, weight = parse_lora_arg(spec)
        pipe.load_lora(path, weight)
    return pipe


def sampling_settings(args, cfg_path) -> dict:
    """The sampler, steps and guidance scale every table runs with: the flags, else the model's config;
    a bad value is one line before anything is loaded or written."""
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.ldm.pipeline import LDMPipeline

    cfg = load_config(cfg_path, [], ldm_config_defaults())
    s = cfg.sampling
    sampling = {"sampler": args.sampler or str(s.sampler),
                "num_inference_steps": args.steps if args.steps is not None else int(s.num_inference_steps),
                "guidance_scale": args.scale if args.scale is not None else float(s.guidance_scale)}
    LDMPipeline.check_inputs(cfg, "x", **sampling, flags={"sampler": "--sampler", "num_inference_steps": "--steps",
                                                          "guidance_scale": "--scale"})
    return sampling


def evaluate(args):
    from mind_diffusion.evaluation.adherence import KEYS, evaluate as eval_adherence, label_grid, markdown, rates

    from mind_diffusion.runtime import cli_options, init_runtime
    from mind_diffusion.shapes.personalize import evaluate_new_shape
    from mind_diffusion.utils.images import check_output_dir

    if args.per_prompt < 1:
        raise ValueError(f"--per_prompt must be >= 1, got {args.per_prompt}")
    cfg_path, ckpt = model_files(args)
    sampling = sampling_settings(args, cfg_path)
    rt = init_runtime(args.device_target, args.mode, seed=0, precision=args.precision, **cli_options(args))
    pipe = load_pipe(args, rt, cfg_path, ckpt)
    out = check_output_dir(args.out)

    negative = {"negative_prompt": args.negative_prompt} if args.negative_prompt else {}

    def generate(prompts, seed, progress=False):
        return pipe(prompts, seed=seed, progress=False, **negative, **sampling).images

    settings = {"model": str(ckpt), "lora": list(args.lora), "token": args.token, "per_prompt": args.per_prompt,
                "seed": args.seed, "sampler": sampling["sampler"], "steps": sampling["num_inference_steps"],
                "scale": sampling["guidance_scale"], **negative}
    rows, images = evaluate_new_shape(generate, args.token, args.per_prompt, args.seed)
    table = {"new shape, unseen colour x place": rates(rows)}
    if args.seen:
        seen_rows, seen_images = evaluate_new_shape(generate, args.token, args.per_prompt, args.seed, seen=True)
        table["new shape, the instances' colour x place"] = rates(seen_rows)
        label_grid(seen_images, [r["prompt"] for r in seen_rows], ncol=args.per_prompt).save(out / "grid_seen.png")
    if args.heldout:
        from mind_diffusion.shapes.world import eval_prompts

        splits = (("heldout", "held-out combinations"), ("train", "seen combinations"))
        adherence_rows = []
        for split, name in splits[:1 if args.no_seen else 2]:
            r, imgs = eval_adherence(generate, eval_prompts(split, 16), 4, 1000)
            table[name] = rates(r)
            adherence_rows += [{"split": split, **row} for row in r]
            label_grid(imgs, [row["prompt"] for row in r], ncol=8).save(out / f"grid_{split}.png")
        with open(out / "adherence.csv", "w", newline="", encoding="utf-8") as fh:  # what each image was read as
            w = csv.DictWriter(fh, fieldnames=list(adherence_rows[0]))
            w.writeheader()
            w.writerows(adherence_rows)
    for name, r in table.items():
        print(f"{name}: " + ", ".join(f"{k} {r[k]:.1%}" for k in KEYS), flush=True)
    (out / "new_shape.md").write_text(markdown(table, settings), encoding="utf-8")
    with open(out / "new_shape.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["prompt", "seed", *KEYS, "detected"])
        w.writeheader()
        w.writerows(rows)
    label_grid(images, [r["prompt"] for r in rows], ncol=args.per_prompt * 2).save(out / "grid_new_shape.png")
    print(f"wrote {out / 'new_shape.md'}, new_shape.csv and grid_new_shape.png"
          + (", adherence.csv and grid_heldout.png" if args.heldout else ""))
    return table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="write the instance images, class images and class prompts")
    d.add_argument("--out", default="data/cross")
    d.add_argument("--token", default="sks")
    d.add_argument("--n_class", type=int, default=200)
    e = sub.add_parser("eval", help="score a model (or base + LoRA) on the new shape")
    e.add_argument("--model", default="models/shapes_zh", help="model folder or training output_dir")
    e.add_argument("--ckpt", default=None, help="checkpoint file name inside --model")
    e.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]", help="LoRA file(s) to apply")
    e.add_argument("--token", default="sks")
    e.add_argument("--out", default="output/new_shape_eval")
    e.add_argument("--per_prompt", type=int, default=4)
    e.add_argument("--seed", type=int, default=2000)
    e.add_argument("--seen", action="store_true", help="also the instances' own colour x place prompts "
                   "(how well the instances were learned; grid_seen.png)")
    e.add_argument("--heldout", action="store_true", help="also the original held-out / seen adherence table")
    e.add_argument("--sampler", default=None, help="sampler (default: the model's)")
    e.add_argument("--steps", type=int, default=None, help="sampler steps (default: the model's)")
    e.add_argument("--scale", type=float, default=None, help="guidance scale (default: the model's; applies "
                   "to every table, the held-out one included)")
    e.add_argument("--negative_prompt", default=None,
                   help="negative prompt for every image (default: none, the empty caption), e.g. 星形")
    e.add_argument("--no_seen", action="store_true", help="with --heldout: the held-out row only")
    from mind_diffusion.runtime import add_runtime_args

    add_runtime_args(e)
    args = p.parse_args(argv)
    return run_cli(lambda: data(args) if args.cmd == "data" else evaluate(args))


if __name__ == "__main__":
    sys.exit(main())
