"""Text to image with Wukong-Huahua (or a converted Stable Diffusion v1.x): the original
``txt2img.py`` flags, plus --sampler, --negative_prompt, --device_target, --mode.

    python scripts/txt2img.py --prompt "城市夜景 赛博朋克" --dpm_solver --ddim_steps 15
    python scripts/txt2img.py --data_path prompts/ --prompt list.txt --n_samples 2
    python scripts/txt2img.py --config configs/sd/v1-inference.yaml \
        --ckpt_name sd-v1-5-ms.ckpt --prompt "a red fox in the snow, oil painting"
    python scripts/txt2img.py --lora output/txt2img_lora/wkhh_txt2img_lora-12_1224.ckpt:0.8 \
        --lora style.safetensors --prompt "城市夜景 赛博朋克"

Images go to <output_path>/samples/NNNNN.png (never overwriting), one grid per prompt batch to
<output_path>/grids/NNNNN.png; every PNG carries prompt, negative prompt, sampler, steps,
scale, seed, size and checkpoint hash in its 'parameters' text chunk. Image k of a run uses
seed + k, so any single image can be regenerated with --seed <its seed> --n_samples 1.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from mind_diffusion.cli import run_cli  # noqa: E402

DEFAULT_CONFIG = "configs/wukong/v1-inference-chinese.yaml"


def read_prompts(data_path: str, name: str) -> list:
    from mind_diffusion.utils.prompts import read_prompts_file

    return read_prompts_file(Path(data_path) / name, "--data_path is the folder, --prompt the file name inside it")


BUILTIN_DIR = ROOT / "models" / "shapes_zh"


def resolve_model(args):
    """(config path, checkpoint path or None = from the config, uses the built-in model).

    With the default --config / --ckpt_name and no official checkpoint in --ckpt_path, fall back
    to the built-in shapes model in models/shapes_zh/ (when it is installed) and say so."""
    cfg_path = Path(args.config)
    if not cfg_path.is_file() and (ROOT / cfg_path).is_file():
        cfg_path = ROOT / cfg_path
    if not cfg_path.is_file():
        raise FileNotFoundError(f"config not found: {args.config}")
    official = Path(args.ckpt_path).expanduser() / (args.ckpt_name or "wukong-huahua-ms.ckpt")
    default_model = args.config == DEFAULT_CONFIG and args.ckpt_name is None
    builtin_cfg = BUILTIN_DIR / "config.yaml"
    if default_model and not official.is_file() and builtin_cfg.is_file():
        from mind_diffusion.config import read_yaml

        name = str(read_yaml(builtin_cfg).checkpoint.name)
        print(f"note: {official} not found, so this uses the built-in shapes model "
              f"({BUILTIN_DIR.relative_to(ROOT)}/), which only knows the shapes world. For the "
              f"official Wukong-Huahua model put wukong-huahua-ms.ckpt and vocab_zh.txt into "
              f"{args.ckpt_path}/ (see README).")
        return builtin_cfg, BUILTIN_DIR / name, True
    if default_model and not official.is_file():
        from mind_diffusion.checkpoint.io import CheckpointError

        raise CheckpointError(
            f"no model to run: neither the official checkpoint {official} nor the built-in shapes model "
            f"({BUILTIN_DIR}/config.yaml) is there. Put wukong-huahua-ms.ckpt into {args.ckpt_path}/ (download: "
            f"https://download.mindspore.cn/toolkits/minddiffusion/wukong-huahua/wukong-huahua-ms.ckpt), or "
            f"restore the built-in model with 'git checkout -- models/shapes_zh', or pass --ckpt_path/--ckpt_name")
    return cfg_path, None, False


def warn_outside_world(prompts):
    from mind_diffusion.shapes.world import is_world_prompt

    for pr in prompts:
        if not is_world_prompt(pr):
            print(f"warning: the built-in model only knows the shapes world (shapes, colours, "
                  f"places, e.g. 一个红色的圆形在左边); {pr!r} will still generate, but expect "
                  f"shapes", file=sys.stderr)


def parse_args(argv=None):
    from mind_diffusion.runtime import add_runtime_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", default=None,
                   help="the prompt, or the prompts file name inside --data_path "
                        "(default: the model's, e.g. 狗 绘画 写实风格)")
    p.add_argument("--data_path", default="", help="folder of a prompts file (one prompt per line)")
    p.add_argument("--negative_prompt", default=None,
                   help="text for the unconditional branch (default: the config's, \"\")")
    p.add_argument("--output_path", default="output")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="model config YAML")
    p.add_argument("--ckpt_path", default=str(ROOT / "models"), help="folder of the checkpoint (default: models/)")
    p.add_argument("--ckpt_name", default=None,
                   help="checkpoint file in --ckpt_path (default: the config's, wukong-huahua-ms.ckpt)")
    p.add_argument("--vocab", default=None,
                   help="tokenizer vocabulary (default: the config's file next to the checkpoint)")
    p.add_argument("--n_samples", "--num_images_per_prompt", dest="n_samples", type=int, default=None,
                   help="images per prompt per iteration (default 8; 1 on CPU)")
    p.add_argument("--n_iter", type=int, default=None, help="iterations (default 2; 1 on CPU)")
    p.add_argument("--H", "--height", dest="H", type=int, default=None, help="image height (default: the config's, 512)")
    p.add_argument("--W", "--width", dest="W", type=int, default=None, help="image width (default: the config's, 512)")
    p.add_argument("--scale", "--guidance_scale", dest="scale", type=float, default=None,
                   help="classifier-free guidance scale, 1 = off (default: the config's, 7.5)")
    p.add_argument("--ddim_steps", "--num_inference_steps", dest="ddim_steps", type=int, default=None, help="sampling steps (default: the config's, 15)")
    p.add_argument("--ddim_eta", type=float, default=0.0, help="DDIM eta (sampler ddim only)")
    p.add_argument("--dpm_solver", action="store_true", help="DPM-Solver++ (2M) instead of PLMS")
    p.add_argument("--sampler", default=None, choices=["dpm_solver", "plms", "ddim", "ddpm"],
                   help="sampler (default: the config's; Wukong: dpm_solver as its run_txt2img.sh)")
    p.add_argument("--fixed_code", action="store_true",
                   help="same start noise for every iteration (seed reused)")
    p.add_argument("--seed", type=int, default=None, help="base seed (default: the config's, 42)")
    p.add_argument("--skip_save", action="store_true", help="do not write the single images")
    p.add_argument("--skip_grid", action="store_true", help="do not write grids")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--force_memory", action="store_true",
                   help="run even when the memory estimate of one call exceeds the free memory")
    add_runtime_args(p)
    from mind_diffusion.ldm.lora import add_lora_args

    add_lora_args(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    def job():
        import warnings

        from mind_diffusion.ldm.pipeline import LDMPipeline, PromptWarning
        from mind_diffusion.runtime import init_runtime
        from mind_diffusion.utils.images import check_output_dir, make_grid, next_index, save_png

        warnings.simplefilter("always", PromptWarning)
        warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
        from mind_diffusion.config import load_config
        from mind_diffusion.ldm.config import ldm_config_defaults

        cfg_path, ckpt, builtin = resolve_model(args)
        cfg = load_config(cfg_path, args.set, ldm_config_defaults())
        if ckpt is None:
            ckpt = Path(args.ckpt_path).expanduser() / (args.ckpt_name or str(cfg.checkpoint.name))
        sampler = args.sampler or ("dpm_solver" if args.dpm_solver else None)
        if args.sampler and args.dpm_solver and args.sampler != "dpm_solver":
            raise ValueError(f"--dpm_solver conflicts with --sampler {args.sampler}: pass one of them")
        prompt_arg = args.prompt if args.prompt is not None else str(cfg.sampling.default_prompt)
        prompts = read_prompts(args.data_path, prompt_arg) if args.data_path else [prompt_arg]
        for name in ("n_samples", "n_iter"):
            v = getattr(args, name)
            if v is not None and v < 1:
                raise ValueError(f"--{name} must be >= 1, got {v}")
        # every check and default lives in the pipeline; done before the checkpoint is read
        a = LDMPipeline.check_inputs(
            cfg, prompts, negative_prompt=args.negative_prompt, height=args.H, width=args.W,
            num_inference_steps=args.ddim_steps, guidance_scale=args.scale, sampler=sampler,
            seed=args.seed, flags={"num_inference_steps": "--ddim_steps", "guidance_scale": "--scale"})
        sampler, H, W, base_seed = a["sampler"], a["height"], a["width"], a["seed"]
        steps, scale = a["num_inference_steps"], a["guidance_scale"]
        if args.ddim_eta != 0.0 and sampler != "ddim":
            raise ValueError(f"--ddim_eta applies to --sampler ddim only (got sampler {sampler})")
        LDMPipeline.check_checkpoint(cfg, ckpt)
        from mind_diffusion.ldm.lora import apply_lora_specs, lora_specs_from_args

        loras = lora_specs_from_args(args)
        if builtin:
            warn_outside_world(prompts)
        out = check_output_dir(args.output_path, subfolders=("samples", "grids"))
        rt = init_runtime(args.device_target, args.mode, seed=base_seed, precision=args.precision)
        on_cpu = rt.device_target == "CPU"
        n_samples = args.n_samples or (1 if on_cpu else 8)
        n_iter = args.n_iter or (1 if on_cpu else 2)
        if on_cpu and (args.n_samples is None or args.n_iter is None):
            print(f"CPU run: {n_samples} image(s) x {n_iter} iteration(s) per prompt "
                  f"(pass --n_samples / --n_iter for more)")
        if not args.force_memory:  # one call holds n_samples images at H x W
            from mind_diffusion.ldm.model import size_multiple
            from mind_diffusion.utils.resources import ldm_memory_check

            ldm_memory_check(cfg.model, n_samples, H, W, rt.device_target, size_multiple(cfg.model),
                             Path(ckpt).stat().st_size)
        t0 = time.time()
        pipe = LDMPipeline.from_pretrained(cfg_path, ckpt, vocab=args.vocab, overrides=args.set,
                                           compute_dtype=rt.precision.ms_dtype())
        print(f"loaded {ckpt} in {time.time() - t0:.1f} s")
        apply_lora_specs(pipe, loras, args.lora_mode)
        samples_dir = out / "samples"
        written = []
        for prompt in prompts:
            for it in range(n_iter):
                seed = base_seed if args.fixed_code else base_seed + it * n_samples
                t0 = time.time()
                images = pipe(prompt, negative_prompt=a["negative_prompt"], num_images=n_samples,
                              height=H, width=W, num_inference_steps=steps,
                              guidance_scale=scale, sampler=sampler, seed=seed,
                              **({"eta": args.ddim_eta} if sampler == "ddim" else {})).images
                print(f"the infer time of a batch is {time.time() - t0:.2f} s")
                settings = pipe.settings(prompt=prompt, negative_prompt=a["negative_prompt"],
                                         sampler=sampler, steps=steps, scale=scale,
                                         seed=seed, height=H, width=W)
                if not args.skip_save:
                    for k, img in enumerate(images):
                        idx = next_index(samples_dir)
                        written.append(save_png(samples_dir / f"{idx:05d}.png", img,
                                                {**settings, "seed": seed + k}))
                if not args.skip_grid:
                    g = next_index(out / "grids")
                    save_png(out / "grids" / f"{g:05d}.png", make_grid(images, min(n_samples, 4)),
                             {**settings, "seeds": f"{seed}..{seed + n_samples - 1}"})
        print(f"wrote {len(written)} images to {samples_dir}" + ("" if args.skip_grid else f" and grids to {out / 'grids'}"))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
