"""Train GLIDE's third stage, the x4 SRGAN generator (256 -> 1024), on the shapes world
(L1 + adversarial; see mind_diffusion/glide/srgan_training.py).

    python scripts/train_srgan.py --config configs/glide/shapes-srgan.yaml
    python scripts/train_srgan.py --config configs/glide/shapes-srgan.yaml --resume auto --set train.steps=3000

Writes train.output_dir/srgan.ckpt (the official srgan.ckpt layout) and srgan.yaml (its model
config), metrics.csv, loss.png and checkpoints/. Evaluate with scripts/eval_srgan.py.
"""
import argparse
import sys

from mind_diffusion.cli import run_training

DEFAULT_CONFIG = "configs/glide/shapes-srgan.yaml"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML config (default {DEFAULT_CONFIG})")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. train.steps=3000 train.output_dir=runs/x")
    p.add_argument("--resume", default=None,
                   help="continue the run in train.output_dir: 'auto' (its newest checkpoint that reads) or a .ckpt path")
    p.add_argument("--overwrite", action="store_true",
                   help="train.output_dir holds another run: delete its checkpoints, log and exports, start over")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    from mind_diffusion.runtime import add_runtime_args

    add_runtime_args(p)
    args = p.parse_args(argv)

    def config():
        from mind_diffusion.config import load_config
        from mind_diffusion.glide.srgan_training import check_srgan_train_config, srgan_train_config_defaults

        cfg = load_config(args.config, args.set, srgan_train_config_defaults())
        check_srgan_train_config(cfg, resuming=bool(args.resume))
        return cfg

    def train(cfg, rt):
        from mind_diffusion.glide.srgan_training import train_srgan

        return train_srgan(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)

    return run_training(args, config, train)


if __name__ == "__main__":
    sys.exit(main())
