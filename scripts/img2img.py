"""Image to image (SDEdit) with a latent-diffusion model: the init image is encoded by the VAE,
noised to the step that ``--strength`` chooses (diffusers' rule: the last ``strength x steps``
steps of the schedule are run), and denoised under the prompt. Every txt2img.py flag works the
same (--sampler, --negative_prompt, --scale, --ddim_steps, --n_samples, --seed ...).

    python scripts/img2img.py --init_img scene.png --prompt "一个蓝色的圆形在左边" --strength 0.7
    python scripts/img2img.py --config configs/sd/v1-inference.yaml --ckpt_name sd-v1-5-ms.ckpt \\
        --init_img sketch.jpg --prompt "a castle on a hill, oil painting" --strength 0.6 --H 512 --W 768

The init image (PNG/JPG) is fitted to --H x --W (default: the config's size): --aug resize
stretches it (a note says so when the aspect differs), --aug cover scales and centre-crops.
Images go to <output_path>/samples/NNNNN.png (never overwriting), one grid per batch to
<output_path>/grids/NNNNN.png (init | results); every PNG records the init image's sha256,
strength and the other settings. Image k of a run uses seed + k.
"""
import argparse
import sys

from mind_diffusion.cli import run_cli


def parse_args(argv=None):
    from mind_diffusion.cli.ldm import add_ldm_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init_img", "--image", dest="init_img", required=True, help="init image (PNG or JPG)")
    p.add_argument("--strength", type=float, default=None,
                   help="how much of the schedule is redone, in (0, 1]: 0.6-0.8 keeps the layout and "
                        "changes what the prompt changes, 1 ignores the init image (default: the config's)")
    p.add_argument("--aug", default="resize", choices=["resize", "cover"],
                   help="fit the init image to --H x --W: stretch (resize) or scale and centre-crop (cover)")
    p.add_argument("--encode", default="mean", choices=["mean", "sample"],
                   help="VAE latent of the init image: posterior mean, or a sample seeded by --seed")
    return add_ldm_args(p).parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    def job():
        from mind_diffusion.cli.ldm import check_run, generate, start_run
        from mind_diffusion.utils.edit_inputs import load_edit_inputs, strength_error

        run = check_run(args, "img2img")  # nothing written, nothing loaded yet
        if args.strength is not None and strength_error(args.strength):
            raise ValueError(strength_error(args.strength))
        a = run.a
        inputs = load_edit_inputs(args.init_img, a["height"], a["width"], aug=args.aug)
        for note in inputs.notes:
            print(note)
        pipe = start_run(run, "img2img")
        eta = {"eta": args.ddim_eta} if a["sampler"] == "ddim" else {}
        generate(run, pipe, lambda prompt, n, seed: pipe.img2img(
            prompt, inputs.image, strength=args.strength, negative_prompt=a["negative_prompt"],
            num_inference_steps=a["num_inference_steps"], guidance_scale=a["guidance_scale"],
            sampler=a["sampler"], seed=seed, num_images_per_prompt=n, encode=args.encode, **eta), inputs)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
