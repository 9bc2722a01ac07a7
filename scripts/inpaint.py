"""Inpainting: repaint the white part of --mask in --img under the prompt. The original
Wukong-Huahua inpaint.py flags (--prompt --img --mask --config --ckpt_name --ckpt_path, and its
--save_path --num_samples --sample_steps --guidance_scale --img_size --aug --mask_ratio), the
txt2img.py names (--output_path --n_samples --ddim_steps --scale --H --W --seed), plus
--negative_prompt, --sampler, --inpaint_mode, --mask_blur, --strength.

    bash scripts/run_inpaint.sh                      # the original's demo command
    python scripts/inpaint.py --prompt "一只红色的狐狸坐在长椅上" --img photo.png --mask mask.png
    python scripts/inpaint.py --config models/shapes_zh/config.yaml --ckpt_path models/shapes_zh \\
        --ckpt_name model.ckpt --img scene.png --mask right.png \\
        --prompt "一个红色的圆形在左边，一个蓝色的正方形在右边"

--inpaint_mode auto (default) runs the released inpainting model (its UNet takes 9 input
channels: latents, mask, masked-image latents) when the checkpoint is one, and blended latent
diffusion with any text-to-image model (4 channels; the known part is re-imposed at every step
and the pixels outside the mask are kept exactly); model / blend force one of them.
The mask (white = repaint) must have the image's size; both are fitted to --H x --W by --aug.
Images go to <output_path>/samples/NNNNN.png (never overwriting), one grid per batch to
<output_path>/grids/NNNNN.png (image | mask | results); every PNG records the image's and the
mask's sha256, the mode, strength and the other settings.
"""
import argparse
import sys

from mind_diffusion.cli import run_cli

INPAINT_CONFIG = "configs/wukong/inpaint-inference.yaml"
INPAINT_CKPT = "wukong-huahua-inpaint-ms.ckpt"
INPAINT_URL = "https://download.mindspore.cn/toolkits/minddiffusion/wukong-huahua/" + INPAINT_CKPT


def parse_args(argv=None):
    from mind_diffusion.cli.ldm import add_ldm_args
    from mind_diffusion.utils.edit_inputs import AUGS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img", "--image", dest="img", required=True, help="the image to edit (PNG or JPG)")
    p.add_argument("--mask", required=True, help="mask of the image's size, white = repaint (PNG or JPG)")
    p.add_argument("--inpaint_mode", default="auto", choices=["auto", "model", "blend"],
                   help="auto: the inpainting model when the UNet has 9 input channels, else blended latent "
                        "diffusion; model / blend force one")
    p.add_argument("--mask_blur", type=int, default=0,
                   help="blend mode: blur radius (pixels) of the mask edge where new and old pixels mix")
    p.add_argument("--strength", type=float, default=1.0,
                   help="fraction of the schedule redone inside the mask, in (0, 1] (1: from noise)")
    p.add_argument("--aug", default="resize", choices=list(AUGS),
                   help="fit image and mask to --H x --W: resize (stretch, the original's default), cover "
                        "(scale, centre-crop), crop / resizecrop (the original's windows around the mask)")
    p.add_argument("--mask_ratio", type=float, default=0.75, help="--aug resizecrop: mask extent / window side")
    p.add_argument("--img_size", type=int, default=None, help="the original's name: --H and --W at once")
    for alias, dest in (("--save_path", "output_path"), ("--num_samples", "n_samples"),
                        ("--sample_steps", "ddim_steps")):
        p.add_argument(alias, dest=dest, type=None if dest == "output_path" else int, default=argparse.SUPPRESS,
                       help=f"the original inpaint.py's name of --{dest}")
    args = add_ldm_args(p, default_config=INPAINT_CONFIG, default_ckpt=INPAINT_CKPT).parse_args(argv)
    if args.img_size is not None:
        args.H = args.H if args.H is not None else args.img_size
        args.W = args.W if args.W is not None else args.img_size
    return args


def main(argv=None):
    args = parse_args(argv)

    def job():
        from mind_diffusion.cli.ldm import blend_note, check_run, generate, start_run
        from mind_diffusion.utils.edit_inputs import load_edit_inputs, strength_error

        run = check_run(args, "inpaint", INPAINT_CONFIG, INPAINT_CKPT, INPAINT_URL, inpaint_mode=args.inpaint_mode,
                        builtin_note=" (it inpaints by blended latent diffusion)")
        if strength_error(args.strength):
            raise ValueError(strength_error(args.strength))
        if args.mask_blur < 0:
            raise ValueError(f"--mask_blur must be >= 0 pixels, got {args.mask_blur}")
        a = run.a
        inputs = load_edit_inputs(args.img, a["height"], a["width"], args.mask, aug=args.aug,
                                  mask_ratio=args.mask_ratio, init_flag="--img")
        for note in inputs.notes:
            print(note)
        note = blend_note(run.cfg, run.ckpt, args.inpaint_mode)
        if note:
            print(note)
        pipe = start_run(run, "inpaint")
        eta = {"eta": args.ddim_eta} if a["sampler"] == "ddim" else {}
        generate(run, pipe, lambda prompt, n, seed: pipe.inpaint(
            prompt, inputs.image, inputs.mask, mode=args.inpaint_mode, mask_blur=args.mask_blur,
            strength=args.strength, negative_prompt=a["negative_prompt"],
            num_inference_steps=a["num_inference_steps"], guidance_scale=a["guidance_scale"],
            sampler=a["sampler"], seed=seed, num_images_per_prompt=n, **eta), inputs)

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
