"""Prompt adherence of a shapes-world GLIDE (the built-in `models/glide_shapes/` or training runs'
exports) at each stage: the base model's 64 px images and, with --stages 256 / 1024, whether the
super-resolution and SRGAN stages keep what the base drew (the scorer's verdicts unchanged).

    python scripts/eval_glide_shapes.py --model models/glide_shapes --out output/glide_eval
    python scripts/eval_glide_shapes.py --model models/glide_shapes --stages 64 \\
        --gen_ckpt runs/glide-shapes-base/glide_gen_ema.ckpt --per_prompt 4

For the held-out combinations (never drawn in training) and seen ones (`shapes.world.eval_prompts`),
`--per_prompt` images per prompt (image j of a split has seed --seed + j) are scored at every stage.
Writes `adherence.md` (table), `adherence.csv` (one row per image) and `grid_<split>_<size>.png`.

`--first renders` measures the later stages alone: the 64 px images are the world's own renders of
--n_heldout / --n_seen scenes (256 px renders reduced with the training data's center_crop_arr),
captioned, so "same verdicts as 64 px" says how often the SR (and SRGAN) stage keeps a correct image
correct, whatever the base model draws (no base checkpoint is read).

`--renders_from T` measures what the base's steps below t = T keep of a true image: the base starts at
the step of its grid nearest T from the prompts' own scenes rendered at 64 px (the training data's
rendering) and noised to that step's level, instead of from noise (the base stage's img2img,
`GlidePipeline.run_base(init=..., start_step=...)`). A shape kept from T = 68 and lost from T = 237 is
lost by the steps between them.
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
    p.add_argument("--first", default="model", choices=("model", "renders"),
                   help="the 64 px images: the base model's (default) or the world's renders (SR / SRGAN alone)")
    p.add_argument("--renders_from", type=int, default=None, metavar="T",
                   help="start the base at its grid step nearest t = T from the prompts' scenes rendered "
                        "at 64 px and noised to that level (what the steps below T keep of a true image)")
    p.add_argument("--out", default="output/glide_shapes_eval", help="output folder (created)")
    p.add_argument("--per_prompt", type=int, default=4)
    p.add_argument("--n_heldout", type=int, default=16, help="held-out prompts (16: each held-out combination)")
    p.add_argument("--n_seen", type=int, default=16, help="seen (training-combination) prompts")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--batch", type=int, default=8, help="images per pipeline call")
    p.add_argument("--set", nargs="*", action="extend", default=[], help="config overrides, e.g. sampling.guidance_scale=3")
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
        renders = args.first == "renders"
        if args.renders_from is not None and (renders or not 0 < args.renders_from < 1000):
            raise ValueError(f"--renders_from is a timestep in (0, 1000) where the base model starts "
                             f"(not with --first renders), got {args.renders_from}")
        if renders and args.stages < 256:
            raise ValueError("--first renders evaluates the SR / SRGAN stages: use --stages 256 or 1024")
        rt = init_runtime(args.device_target, args.mode, seed=0, precision=args.precision, **cli_options(args))
        # with --first renders the base network is never called: it is built without weights
        pipe = GlidePipeline.from_pretrained(cfg, None if renders else files["gen"],
                                             files["super"] if args.stages >= 256 else None,
                                             files["srgan"] if args.stages >= 1024 else None, allow_random=renders,
                                             tokenizer=model / cfg.tokenizer.sp_model, stages=args.stages,
                                             compute_dtype=rt.precision.ms_dtype())
        out = check_output_dir(args.out)
        s = cfg.sampling
        settings = {"sampler": str(s.sampler), "steps": int(s.num_inference_steps),
                    "scale": float(s.guidance_scale), "uncond": str(s.uncond), "super_res_steps": int(s.super_res_steps),
                    "stages": args.stages, "per_prompt": args.per_prompt, "seed": args.seed,
                    "checkpoints": {k: str(v) for k, v in files.items()}, "sha256": pipe.checkpoint_hashes()}
        if "base_expert" in pipe.ckpt_paths:  # the base's low-noise expert and its switch step
            settings["checkpoints"]["gen_expert"] = pipe.ckpt_paths["base_expert"]
            settings["base_expert_below"] = pipe.expert_below

        def run(prompts, seed):
            res = pipe(prompts, seed=seed, num_images_per_prompt=1, stages=args.stages, progress=False)
            return {size: res[size] for size in (64, 256, 1024) if size <= args.stages}

        lows: list = []  # --first renders / --renders_from: the renders, in the prompts' order
        start_step = None  # --renders_from: the base's grid step nearest T
        if args.renders_from is not None:
            import numpy as np

            from mind_diffusion.diffusion.samplers import sampler_levels

            ts = np.asarray(sampler_levels(str(s.sampler), pipe.schedule("base"), int(s.num_inference_steps))[0],
                            np.float64)
            start_step = max(1, int(np.argmin(np.abs(ts - args.renders_from))))
            settings["renders_from_t"] = int(ts[start_step])

        def run_from(prompts, seed):
            import numpy as np

            from mind_diffusion.utils.images import to_uint8

            init = np.stack([lows.pop(0) for _ in prompts]).astype(np.float32) / 127.5 - 1.0
            steps, sampler = int(s.num_inference_steps), str(s.sampler)
            tok, mask = pipe.tokenize(list(prompts), int(pipe.base_cfg["text_ctx"]))
            x = pipe.run_base(tok, mask, seed=seed, steps=steps, scale=float(s.guidance_scale), uncond=str(s.uncond),
                              sampler=sampler, progress=False, init=init.transpose(0, 3, 1, 2), start_step=start_step)
            return later_stages(prompts, seed, x, {64: to_uint8(x)})

        def later_stages(prompts, seed, x, out):
            """The SR (and SRGAN) stages from the 64 px images x (B, 3, H, W) in [-1, 1], into out."""
            from mind_diffusion.utils.images import to_uint8

            if args.stages >= 256:
                tok, mask = pipe.tokenize(list(prompts), int(pipe.sr_cfg["text_ctx"]))
                x = pipe.run_super_res(x, tok, mask, seed=seed, steps=int(settings["super_res_steps"]),
                                       progress=False, strength=float(cfg.sampling.super_res_strength))
                out[256] = to_uint8(x)
                if args.stages >= 1024:
                    out[1024] = to_uint8(pipe.run_srgan(x, progress=False))
            return out

        def scene_prompts(split, n):
            from mind_diffusion.shapes.world import ShapesWorld

            world = ShapesWorld(image_size=int(cfg.model.base.image_size), seed=0, antialias=True, split=split)
            pairs = world.eval_scenes(n)  # the scenes of eval_prompts(split, n), in its order
            for scene, _ in pairs:
                lows.extend([world.render(scene)] * args.per_prompt)
            return [cap for _, cap in pairs]

        def run_renders(prompts, seed):
            import numpy as np

            low = np.stack([lows.pop(0) for _ in prompts])
            x = (low.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)
            return later_stages(prompts, seed, x, {64: low})   # --first renders needs --stages >= 256

        def render_prompts(split, n):
            from mind_diffusion.glide.training import center_crop_arr
            from mind_diffusion.shapes.world import ShapesWorld

            # the SR stage's training pairs: renders at its size, reduced to the base size
            world = ShapesWorld(image_size=int(cfg.model.sr.image_size), seed=args.seed, antialias=True, split=split)
            caps = []
            for i in range(n):
                img, cap, _ = world.sample(i)
                for _ in range(args.per_prompt):
                    lows.append(center_crop_arr(img, int(cfg.model.base.image_size)))
                caps.append(cap)
            return caps

        settings["first"] = args.first
        settings["super_res_strength"] = float(cfg.sampling.super_res_strength)
        for kind in ("base", "sr"):  # a chain trained with diffusion.snr_scale (the default 1 is not written)
            if pipe.snr_scale(kind) != 1.0:
                settings[f"{kind}_snr_scale"] = pipe.snr_scale(kind)
        table, all_rows = {}, []
        for split, n in (("heldout", args.n_heldout), ("train", args.n_seen)):
            if n <= 0:
                continue
            if renders:
                prompts, runner = render_prompts(split, n), run_renders
            elif args.renders_from is not None:
                prompts, runner = scene_prompts(split, n), run_from
            else:
                prompts, runner = eval_prompts(split, n), run
            rows, images = evaluate_stages(runner, prompts, args.per_prompt, args.seed, args.batch)
            for r in rows:
                r["split"] = split
            all_rows += rows
            name = "held-out combinations" if split == "heldout" else "seen combinations"
            name += " (renders at 64 px)" if renders else ""
            name += f" (from their renders noised to t = {settings.get('renders_from_t')})" \
                if args.renders_from is not None else ""
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
