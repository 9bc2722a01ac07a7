"""Evaluate an SRGAN x4 generator against bicubic upsampling on held-out shapes-world scenes:
PSNR and edge sharpness (see mind_diffusion/glide/srgan_training.py), as a Markdown and a CSV
table, plus a side-by-side crop PNG.

    python scripts/eval_srgan.py --model_dir models/glide_shapes --out runs/srgan_eval
    python scripts/eval_srgan.py --model_dir runs/glide_srgan --num_scenes 8

--model_dir holds srgan.ckpt and srgan.yaml (a finished training run, or models/glide_shapes).
"""
import argparse
import sys

from mind_diffusion.cli import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default="models/glide_shapes", help="folder with srgan.ckpt + srgan.yaml")
    p.add_argument("--out", default=None, help="output folder (default: --model_dir)")
    p.add_argument("--num_scenes", type=int, default=32, help="held-out scenes to evaluate (default 32)")
    p.add_argument("--world_seed", type=int, default=0, help="seed of the held-out world (default 0)")
    p.add_argument("--hr_size", type=int, default=1024, help="render size (default 1024)")
    p.add_argument("--downsample", default="bicubic", choices=("bicubic", "area"),
                   help="how the LR input is made from the render (as in training)")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    from mind_diffusion.runtime import add_runtime_args

    add_runtime_args(p)
    args = p.parse_args(argv)

    def job():
        from mind_diffusion.glide.srgan_training import eval_table, load_exported_srgan, write_eval
        from mind_diffusion.runtime import cli_options, init_runtime
        from mind_diffusion.train.validate import check_number

        check_number(args.num_scenes, "--num_scenes", 1, None, integer=True)
        check_number(args.world_seed, "--world_seed", 0, None, integer=True)
        check_number(args.hr_size, "--hr_size", 16, None, integer=True)
        init_runtime(args.device_target, args.mode, precision=args.precision, **cli_options(args))
        gen = load_exported_srgan(args.model_dir)
        if args.hr_size % gen.upscale_factor:
            raise ValueError(f"--hr_size {args.hr_size} must be a multiple of the upscale factor "
                             f"{gen.upscale_factor}")
        res = write_eval(gen, args.out or args.model_dir, args.num_scenes, args.world_seed, args.hr_size,
                         args.downsample, progress=not args.no_progress, source=str(args.model_dir))
        print(eval_table(res["rows"]))
        print(f"[mind_diffusion] wrote {res['md']}, {res['csv']}, {res['png']}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
