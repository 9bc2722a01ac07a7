"""FID comparison run: for each configured generator, N images with a fixed seed, FID against a
reference set, and a report (fid.md, fid.csv, fid.png) with the Mind-Diffusion report's numbers
beside ours as labelled context.

    python scripts/fid_compare.py --config configs/fid/builtin-quick.yaml
    python scripts/fid_compare.py --config configs/fid/report-horse.yaml \
        references.horse.path=data/cifar10_horse_train generators.ddpm.model=runs/ddpm_cifar10
    python scripts/fid_compare.py --config configs/fid/builtin-quick.yaml --num_images 20 max_reference_images=40

Runs go to <output_dir>/<name>/run-NNN/ (the next free number; --out DIR: a new or empty folder):
config.yaml, generated/<row>/*.png, reference/<set>/*.png (built references), stats/*.npz
(pytorch-fid compatible), fid.md, fid.csv, fid.json, fid.png. Rows whose checkpoints or code are
missing are reported as "skipped: <reason>". Config keys: see mind_diffusion/evaluation/compare_config.py;
`key.sub=value` arguments override them.
"""
import argparse
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli


def main(argv=None):
    from mind_diffusion.runtime import add_runtime_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="comparison config, e.g. configs/fid/builtin-quick.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotlist)")
    p.add_argument("--num_images", type=int, default=None, help="N generated for every row (overrides the config)")
    p.add_argument("--out", default=None, help="run folder (must be new or empty); default: numbered run folder")
    p.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping them")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    add_runtime_args(p)
    args = p.parse_args(argv)

    def job():
        from mind_diffusion.evaluation.compare_config import load_compare_config
        from mind_diffusion.evaluation.fid_compare import new_run_dir, preflight, run_comparison
        from mind_diffusion.metrics.weights import resolve_weights
        from mind_diffusion.runtime import cli_options, init_runtime

        if args.out:  # before any work: a run never writes into another run or onto a file
            out = Path(args.out).expanduser()
            if out.exists() and not out.is_dir():
                raise ValueError(f"--out {out} is a file: name a new (or empty) folder for the run")
            if out.is_dir() and any(out.iterdir()):
                raise ValueError(f"--out {out} already exists and is not empty: nothing was overwritten; "
                                 f"choose a new --out (or omit it to get a numbered run folder)")
        cfg = load_compare_config(args.config, args.overrides)
        if args.num_images is not None:
            if args.num_images < 2:
                raise ValueError(f"--num_images must be >= 2 (FID needs at least 2 images), got {args.num_images}")
            cfg.num_images = args.num_images
            for g in cfg.generators.values():
                g.num_images = None
        if args.strict:
            cfg.fid.strict = True
        preflight(cfg)  # reference folders first: nothing is generated for a run that cannot finish
        resolve_weights(cfg.fid.weights)  # missing FID weights: say how to install them, before any work
        rt = init_runtime(args.device_target, args.mode, seed=int(cfg.seed), precision=args.precision,
                          **cli_options(args))
        run_dir = new_run_dir(cfg.output_dir, str(cfg.name), args.out)
        print(f"[fid_compare] run folder: {run_dir}", flush=True)
        dtype = None if rt.precision.is_fp32 else rt.precision.ms_dtype()
        result = run_comparison(cfg, run_dir=run_dir, compute_dtype=dtype, progress=not args.no_progress)
        print(result.files["md"].read_text(encoding="utf-8"))
        print(f"wrote {result.files['md']}, {result.files['csv'].name}, {result.files['png'].name} in {run_dir}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
