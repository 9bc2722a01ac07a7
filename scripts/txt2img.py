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

from mind_diffusion.cli import run_cli


def parse_args(argv=None):
    from mind_diffusion.cli.ldm import add_ldm_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_ldm_args(p).parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    def job():
        from mind_diffusion.cli.ldm import check_run, generate, start_run

        run = check_run(args, "txt2img")  # nothing written, nothing loaded yet
        pipe = start_run(run, "txt2img")
        a = run.a
        eta = {"eta": args.ddim_eta} if a["sampler"] == "ddim" else {}
        generate(run, pipe, lambda prompt, n, seed: pipe(
            prompt, negative_prompt=a["negative_prompt"], num_images=n, height=a["height"], width=a["width"],
            num_inference_steps=a["num_inference_steps"], guidance_scale=a["guidance_scale"],
            sampler=a["sampler"], seed=seed, **eta))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
