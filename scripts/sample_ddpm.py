"""Sample a class-conditional DDPM: N images per class into <output_dir>/<class>/NNNNN.png
(never overwriting) plus a grid (one row per class).

    python scripts/sample_ddpm.py --model models/ddpm_digits16 --num_per_class 8
    python scripts/sample_ddpm.py --model runs/ddpm/model_ema.ckpt --config runs/ddpm/config.yaml \
        --classes 7 --num_per_class 100 --sampler ddim --steps 50
"""
import argparse
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli  # noqa: E402


def parse_classes(text, num_classes):
    if text is None or text.strip() == "all":
        return list(range(num_classes))
    ids = [c.strip() for c in text.split(",") if c.strip()]
    if not ids:
        raise ValueError(f"--classes is empty: pass class ids like 0,3,7 or 'all' "
                         f"(this model has classes 0..{num_classes - 1})")
    try:
        return [int(c) for c in ids]
    except ValueError:
        raise ValueError(f"--classes must be comma-separated class ids like 0,3,7 (or 'all'), got {text!r}") from None


def check_folders(out, labels):
    """Every folder this run writes into is a folder (or missing): checked before sampling."""
    from mind_diffusion.utils.images import OutputPathError

    names = sorted({str(int(v)) for v in labels}) if labels is not None else ["samples"]
    for name in names + ["grids"]:
        f = out / name
        if f.exists() and not f.is_dir():
            raise OutputPathError(f"{f} exists and is not a folder: images go there; move it away or "
                                  f"choose another --output_dir")


def main(argv=None):
    from mind_diffusion.runtime import add_runtime_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model folder (config.yaml + model_ema.ckpt) or a .ckpt")
    p.add_argument("--config", default=None, help="model config YAML when --model is a .ckpt elsewhere")
    p.add_argument("--classes", default="all", help="comma-separated class ids, or 'all'")
    p.add_argument("--num_per_class", type=int, default=8)
    p.add_argument("--sampler", default=None, help="ddpm | ddim | plms | dpm_solver (default: the model config's)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model config's)")
    p.add_argument("--eta", type=float, default=None, help="DDIM eta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=100)
    p.add_argument("--output_dir", default="output/ddpm_samples")
    add_runtime_args(p)
    args = p.parse_args(argv)

    def job():
        import numpy as np

        from mind_diffusion.ddpm.pipeline import DDPMPipeline
        from mind_diffusion.runtime import cli_options, init_runtime
        from mind_diffusion.utils.images import check_output_dir, make_grid, next_index, save_class_images, save_png

        if args.num_per_class < 1:
            raise ValueError(f"--num_per_class must be >= 1, got {args.num_per_class}")
        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        out = check_output_dir(args.output_dir)
        rt = init_runtime(args.device_target, args.mode, seed=args.seed, precision=args.precision,
                          **cli_options(args))
        pipe = DDPMPipeline.from_pretrained(args.model, args.config, compute_dtype=rt.precision.ms_dtype())
        classes = parse_classes(args.classes, pipe.num_classes or 0) if pipe.num_classes else None
        labels = np.repeat(classes, args.num_per_class) if classes is not None else None
        check_folders(out, labels)
        opts = {"eta": args.eta} if args.eta is not None else {}
        settings = pipe.settings(args.sampler, args.steps, args.seed)
        written = []

        def write(start, batch):  # each batch as it finishes (atomic rename: no half files)
            written.extend(save_class_images(out, start, batch, labels, settings))

        images = pipe(classes, num_images_per_prompt=args.num_per_class,
                      num_inference_steps=args.steps, sampler=args.sampler, seed=args.seed,
                      batch_size=args.batch_size, on_batch=write, **opts).images
        names = (out / "classes.txt")
        grid_idx = next_index(out / "grids")
        nrow = args.num_per_class if labels is not None else int(np.ceil(np.sqrt(len(images))))
        grid = save_png(out / "grids" / f"{grid_idx:05d}.png", make_grid(images, nrow), {**settings, "classes": classes})
        if not names.exists() and classes is not None:
            names.write_text("\n".join(str(c) for c in range(pipe.num_classes)) + "\n")
        print(f"wrote {len(written)} images under {out}/<class>/ and grid {grid}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
