"""Text to image with Taichu-GLIDE: base 64 px -> super-resolution 256 px -> SRGAN 1024 px.
The original ``src/txt2img.py`` flags, plus --prompt, --seed, --stages, --uncond, --config,
--set and the runtime flags (--device_target, --mode, --precision).

    python scripts/glide_txt2img.py --ckpt_path models/glide --prompts_file configs/glide/prompts.txt
    python scripts/glide_txt2img.py --prompt "一只可爱的猫坐在草地上" --pics_generated 2 --stages 256

--ckpt_path holds glide_gen.ckpt, glide_super_res.ckpt, srgan.ckpt and cog-pretrain.model
(https://download.mindspore.cn/toolkits/minddiffusion/Taichu-GLIDE/); only the checkpoints of
the requested --stages are needed. Without --config, --ckpt_path and file flags, missing
official files make the built-in shapes-world GLIDE (models/glide_shapes, or $GLIDE_BUILTIN)
stand in, with its own config; one line says so (mind_diffusion/glide/builtin.py). For each
prompt, image k (seed + k) is written per stage to
<output_path>/samples/NNNNN-<prompt>-<size>.png (never overwriting; the prompt part of the name
is sanitised), and the original's side-by-side strip per stage to <output_path>/strips/. Every
PNG carries the prompt, every setting and the checkpoint hashes in its metadata. One image is
regenerated alone with --seed <its seed> --pics_generated 1.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from mind_diffusion.cli import run_cli  # noqa: E402
from mind_diffusion.utils.prompts import slug  # noqa: E402

DEFAULT_CONFIG = "configs/glide/infer.yaml"


def str2bool(value) -> bool:
    s = str(value).strip().lower()
    if s in ("true", "t", "yes", "y", "1", "on"):
        return True
    if s in ("false", "f", "no", "n", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def parse_args(argv=None):
    from mind_diffusion.runtime import add_runtime_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts_file", default=None,
                   help="UTF-8 text file, one prompt per line (default: configs/glide/prompts.txt)")
    p.add_argument("--prompt", default=None, help="one prompt (instead of --prompts_file)")
    p.add_argument("--ckpt_path", default=None,
                   help="folder of the checkpoints and tokenizer model (default: models/glide; given, "
                        "its files must be there: no built-in stand-in)")
    p.add_argument("--gen_ckpt", default=None, help="base model checkpoint in --ckpt_path (glide_gen.ckpt)")
    p.add_argument("--super_ckpt", default=None,
                   help="super-resolution checkpoint in --ckpt_path (glide_super_res.ckpt)")
    p.add_argument("--srgan_ckpt", default=None, help="SRGAN checkpoint in --ckpt_path (srgan.ckpt)")
    p.add_argument("--tokenizer_model", default=None,
                   help="SentencePiece model in --ckpt_path (cog-pretrain.model); with "
                        "--is_chinese false the folder of encoder.json / vocab.bpe")
    p.add_argument("--is_chinese", type=str2bool, default=None,
                   help="true (default): Chinese SentencePiece tokenizer; false: GPT-2 BPE")
    p.add_argument("--num_inference_steps", "--denoise_steps", dest="num_inference_steps",
                   type=int, default=None, help="base sampling steps (default 60)")
    p.add_argument("--super_res_steps", "--super_res_step", dest="super_res_steps", type=int,
                   default=None, help="super-resolution steps: 27 only (the 'fast27' schedule)")
    p.add_argument("--super_res_strength", type=float, default=None,
                   help="super-resolution start: 1 = from noise (the original); below 1 from the enlarged "
                        "64 px image noised to that fraction of the 'fast27' steps (default: the config's)")
    p.add_argument("--num_images_per_prompt", "--pics_generated", dest="num_images_per_prompt",
                   type=int, default=None, help="images per prompt (default 8)")
    p.add_argument("--guidance_scale", "--scale", dest="guidance_scale", type=float, default=None,
                   help="classifier-free guidance scale of the base model (default 5)")
    p.add_argument("--sampler", default=None,
                   help="base-stage sampler: ddpm (ancestral, the original; default), ddim, plms "
                        "or dpm_solver")
    p.add_argument("--negative_prompt", default=None,
                   help="text to steer away from (replaces the unconditional branch)")
    p.add_argument("--uncond", default=None, choices=["random", "empty"],
                   help="unconditional branch: random tokens (Taichu-GLIDE, default) or the empty "
                        "prompt (OpenAI)")
    p.add_argument("--stages", type=int, default=None, choices=[64, 256, 1024],
                   help="last stage to run: 64, 256 or 1024 (default)")
    p.add_argument("--seed", type=int, default=None, help="base seed; image k uses seed + k (default 0)")
    p.add_argument("--output_path", default="output/glide", help="output folder (created if missing)")
    p.add_argument("--config", default=None, help=f"GLIDE inference config YAML (default {DEFAULT_CONFIG})")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--official_set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for a Taichu-GLIDE config only, not the built-in's "
                        "(run_glide_infer.sh passes the original run_infer.sh settings this way)")
    p.add_argument("--skip_strip", action="store_true", help="do not write the side-by-side strips")
    p.add_argument("--model_config_path", default=None, help=argparse.SUPPRESS)  # unused in the original
    p.add_argument("--data_path", default=None, help=argparse.SUPPRESS)  # unused in the original
    add_runtime_args(p)
    return p.parse_args(argv)


def read_prompts(path) -> list:
    from mind_diffusion.utils.prompts import read_prompts_file

    return read_prompts_file(path, "pass --prompts_file PATH or --prompt TEXT")


def main(argv=None):
    args = parse_args(argv)

    def job():
        import warnings

        from mind_diffusion.glide.builtin import FILE_KEYS, load_glide_source
        from mind_diffusion.glide.pipeline import GlidePipeline
        from mind_diffusion.text.factory import build_glide_tokenizer
        from mind_diffusion.text.sentencepiece_tokenizer import TokenTruncationWarning
        from mind_diffusion.utils.images import check_output_dir, free_path, next_index, save_png
        from mind_diffusion.utils.resources import IMAGES_PER_CALL, chunks

        warnings.simplefilter("always", TokenTruncationWarning)
        warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"

        src = load_glide_source(args.config, args.set, ckpt_path=args.ckpt_path, stages=args.stages,
                                names={k: getattr(args, k) for k in FILE_KEYS}, is_chinese=args.is_chinese,
                                official_overrides=args.official_set)
        if src.notice:
            print(src.notice, flush=True)
        cfg, is_chinese = src.cfg, src.is_chinese
        smp = cfg.sampling
        call = {k: getattr(args, k) for k in (
            "negative_prompt", "num_images_per_prompt", "num_inference_steps", "guidance_scale",
            "seed", "sampler", "super_res_steps", "stages", "uncond", "super_res_strength")}
        # every check and default before any checkpoint is read; the pipeline owns them
        a = GlidePipeline.check_inputs(cfg, "-", **call)
        stages, seed = a["stages"], a["seed"]
        if args.prompt is not None:
            prompts = [args.prompt.strip()]
            if not prompts[0]:
                raise ValueError("the prompt is empty: describe the image, e.g. \"一张画着柯基的油画\"")
        else:
            pf = args.prompts_file or str(smp.prompts_file)
            if args.prompts_file is None and not Path(pf).is_file() and (ROOT / pf).is_file():
                pf = str(ROOT / pf)
            prompts = read_prompts(pf)

        tok_path, ckpts = src.checked_files(stages)
        tokenizer = build_glide_tokenizer(tok_path, is_chinese)
        out = check_output_dir(args.output_path, subfolders=("samples", "strips"))

        from mind_diffusion.runtime import cli_options, init_runtime

        # the compile-cache key: what decides the graphs (the config, the stages, the batch of each call),
        # not the prompt, seed, sampler, steps, guidance scale or output folder, which reach the graphs as
        # tensor inputs or stay in numpy (tests/test_compile_cache.py checks a cached run against a fresh one)
        key = {"task": "glide_txt2img", "config": cfg, "stages": stages,
               "batches": [n for _, n in chunks(a["num_images_per_prompt"], IMAGES_PER_CALL)]}
        rt = init_runtime(args.device_target, args.mode, seed=seed, precision=args.precision,
                          cache_key=key, **cli_options(args))
        t0 = time.time()
        pipe = GlidePipeline.from_pretrained(cfg, ckpts.get(64), ckpts.get(256), ckpts.get(1024),
                                             tokenizer=tokenizer, stages=stages,
                                             compute_dtype=rt.precision.ms_dtype())
        print(f"loaded the {stages} px pipeline ({', '.join(str(p.name) for p in ckpts.values())}) "
              f"in {time.time() - t0:.1f} s")
        run_info = {"pics_generated": a["num_images_per_prompt"], "is_chinese": is_chinese,
                    "device": rt.device_target, "mode": rt.mode,
                    "precision": rt.precision.compute}
        if Path(tok_path).is_file():
            from mind_diffusion.checkpoint.io import file_sha256

            run_info["tokenizer_sha256"] = file_sha256(tok_path)
        samples, strips = out / "samples", out / "strips"
        written = []
        for prompt in prompts:
            name = slug(prompt)
            first = next_index(samples)
            strip_idx = next_index(strips)

            def write(stage, images, off=0, prompt=prompt, name=name, first=first, strip_idx=strip_idx):
                import numpy as np

                size = images.shape[1]
                settings = pipe.settings(
                    prompt=prompt, seed=seed, stage=stage, size=size, sampler=a["sampler"],
                    num_inference_steps=a["num_inference_steps"], negative_prompt=a["negative_prompt"],
                    super_res_steps=a["super_res_steps"], guidance_scale=a["guidance_scale"],
                    uncond=a["uncond"], super_res_strength=a["super_res_strength"])
                settings.update(run_info)
                for k, img in enumerate(images, off):
                    written.append(save_png(free_path(samples, first + k, f"-{name}-{size}"), img,
                                            {**settings, "seed": seed + k, "image": k}))
                if not args.skip_strip:
                    save_png(free_path(strips, strip_idx, f"-{name}-{size}"), np.concatenate(list(images), axis=1),
                             {**settings, "seeds": f"{seed + off}..{seed + off + len(images) - 1}"})
                print(f"stage {stage}: wrote {len(images)} images of {size}x{size} for {prompt[:30]!r}",
                      flush=True)

            t0 = time.time()  # in chunks (image k keeps seed + k), each written as it finishes
            for off, n in chunks(a["num_images_per_prompt"], IMAGES_PER_CALL):
                pipe(prompt, on_stage=lambda st, im, off=off: write(st, im, off),
                     **{**call, "seed": seed + off, "num_images_per_prompt": n})
            print(f"the infer time of a prompt is {time.time() - t0:.2f} s")
        tmp = out / ".infer_result.json.tmp"
        tmp.write_text(json.dumps({"infer_result": "success"}))
        os.replace(tmp, out / "infer_result.json")
        print(f"wrote {len(written)} images to {samples}" + ("" if args.skip_strip else f" and strips to {strips}"))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
