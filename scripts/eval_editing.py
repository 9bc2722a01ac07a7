"""Image editing on the built-in shapes model (or a shapes training run's export), measured with
the shapes scorer: img2img recolouring at several strengths and inpainting a second shape into
the empty half of a scene (cases: mind_diffusion/shapes/editing.py).

    python scripts/eval_editing.py --out output/editing_eval
    python scripts/eval_editing.py --n_img2img 4 --n_inpaint 4 --strengths 0.7 --out /tmp/quick

Writes into --out: editing.md (tables and settings), editing_img2img.csv / editing_inpaint.csv
(one row per image: seed, prompt, the scorer's reading, PSNR), editing_img2img.png (rows: init |
results at each strength) and editing_inpaint.png (rows: init | mask | result). Refuses to
replace an earlier run's files in --out unless --overwrite.
"""
import argparse
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
FILES = ("editing.md", "editing_img2img.csv", "editing_inpaint.csv", "editing_img2img.png", "editing_inpaint.png")


def parse_args(argv=None):
    from mind_diffusion.runtime import add_runtime_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "models" / "shapes_zh"), help="model folder (config.yaml, checkpoint)")
    p.add_argument("--ckpt", default=None, help="checkpoint file name in --model (default: the config's)")
    p.add_argument("--out", default="output/editing_eval", help="folder for the tables and pictures")
    p.add_argument("--n_img2img", type=int, default=24, help="img2img cases (each at every strength)")
    p.add_argument("--n_inpaint", type=int, default=24, help="inpainting cases")
    p.add_argument("--strengths", type=float, nargs="+", default=[0.6, 0.7, 0.8], help="img2img strengths")
    p.add_argument("--per_case", type=int, default=1, help="images per case")
    p.add_argument("--batch", type=int, default=16, help="cases per pipeline call")
    p.add_argument("--seed", type=int, default=1000, help="base seed (case i, image j: seed + i * per_case + j)")
    p.add_argument("--sampler", default=None, help="sampler (default: the model's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--scale", type=float, default=None, help="guidance scale (default: the model's)")
    p.add_argument("--inpaint_mode", default="blend", choices=["auto", "model", "blend"])
    p.add_argument("--mask_blur", type=int, default=0)
    p.add_argument("--inpaint_strength", type=float, default=1.0, help="inpainting strength (< 1: start from the noised init)")
    p.add_argument("--resample_steps", type=int, default=0, help="blend mode: RePaint resampling rounds per step")
    p.add_argument("--jump", type=int, default=1, help="blend mode: levels each resampling round goes back")
    p.add_argument("--inpaint_prompt", default="pair", choices=["pair", "single"],
                   help="inpainting prompt: the caption of the two-shape scene, or one naming only the new shape")
    p.add_argument("--txt2img_reference", action="store_true",
                   help="add a row: the inpainting prompts drawn by text-to-image (no init image), read the same way")
    p.add_argument("--n_picture", type=int, default=6, help="cases shown in each picture")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run's files in --out")
    add_runtime_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    def job():
        from mind_diffusion.evaluation import editing as ev
        from mind_diffusion.ldm.pipeline import LDMPipeline
        from mind_diffusion.runtime import cli_options, init_runtime
        from mind_diffusion.shapes.editing import img2img_cases, inpaint_cases
        from mind_diffusion.utils.edit_inputs import strength_error
        from mind_diffusion.utils.images import OutputPathError, check_output_dir, save_png

        model = Path(args.model)
        if not (model / "config.yaml").is_file():
            raise FileNotFoundError(f"no config.yaml in --model {model}: pass a shapes model folder")
        for s in args.strengths:
            if strength_error(s):
                raise ValueError(strength_error(s))
        if strength_error(args.inpaint_strength, "--inpaint_strength"):
            raise ValueError(strength_error(args.inpaint_strength, "--inpaint_strength"))
        for name in ("n_img2img", "n_inpaint", "per_case", "batch", "n_picture"):
            if getattr(args, name) < (0 if name.startswith("n_i") else 1):
                raise ValueError(f"--{name} must be >= {0 if name.startswith('n_i') else 1}, got {getattr(args, name)}")
        out = Path(args.out)
        old = [f for f in FILES if (out / f).exists()]
        if old and not args.overwrite:
            raise OutputPathError(f"{out} already holds an editing run ({', '.join(old)}); pass --overwrite to "
                                  f"replace it, or choose another --out")
        check_output_dir(out, create=False)
        rt = init_runtime(args.device_target, args.mode, seed=args.seed, precision=args.precision,
                          **cli_options(args))
        from mind_diffusion.config import read_yaml

        ckpt = model / (args.ckpt or str(read_yaml(model / "config.yaml").checkpoint.name))
        pipe = LDMPipeline.from_pretrained(model / "config.yaml", ckpt, compute_dtype=rt.precision.ms_dtype())
        kw = {k: v for k, v in (("sampler", args.sampler), ("num_inference_steps", args.steps),
                                ("guidance_scale", args.scale)) if v is not None}
        rs = {"resample_steps": args.resample_steps, "jump": args.jump} if args.resample_steps else {}
        rs.update({"strength": args.inpaint_strength} if args.inpaint_strength != 1.0 else {})
        size = int(pipe.cfg.sampling.height)
        i2i = img2img_cases(args.n_img2img, image_size=size)
        inp = inpaint_cases(args.n_inpaint, image_size=size, prompt=args.inpaint_prompt)
        i2i_rows, i2i_imgs = ev.run_img2img(pipe, i2i, args.strengths, args.per_case, args.seed, args.batch, **kw)
        inp_rows, inp_imgs = ev.run_inpaint(pipe, inp, args.per_case, args.seed, args.inpaint_mode,
                                            args.mask_blur, args.batch, **kw, **rs)
        if args.txt2img_reference and inp:
            inp_rows += ev.run_txt2img_reference(pipe, inp, args.seed, args.batch, **kw)
        s = pipe.cfg.sampling
        shown = model.resolve().relative_to(ROOT) if model.resolve().is_relative_to(ROOT) else model
        settings = {"model": str(shown), "checkpoint_sha256": pipe.ckpt_hash, "sampler": args.sampler or str(s.sampler),
                    "steps": args.steps or int(s.num_inference_steps), "scale": args.scale or float(s.guidance_scale),
                    "seed": args.seed, "per_case": args.per_case, "inpaint_mode": args.inpaint_mode,
                    "mask_blur": args.mask_blur, "inpaint_prompt": args.inpaint_prompt, **rs, "size": f"{size}x{size}"}
        check_output_dir(out)
        (out / "editing.md").write_text(ev.tables(i2i_rows, inp_rows, settings), encoding="utf-8")
        k = args.n_picture
        if i2i_rows:
            ev.write_csv(i2i_rows, out / "editing_img2img.csv")
            rows = [[c.image] + [i2i_imgs[s][c.index] for s in args.strengths] for c in i2i[:k]]
            save_png(out / "editing_img2img.png", ev.picture(rows),
                     {**settings, "columns": "init | " + " | ".join(f"strength {s}" for s in args.strengths),
                      "prompts": [c.prompt for c in i2i[:k]]})
        if inp_rows:
            ev.write_csv(inp_rows, out / "editing_inpaint.csv")
            save_png(out / "editing_inpaint.png", ev.picture([[c.image, c.mask, inp_imgs[c.index]] for c in inp[:k]]),
                     {**settings, "columns": "init | mask | result", "prompts": [c.prompt for c in inp[:k]]})
        print((out / "editing.md").read_text(encoding="utf-8"))
        print(f"wrote {', '.join(f for f in FILES if (out / f).exists())} to {out}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
