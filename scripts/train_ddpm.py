"""Train the class-conditional DDPM UNet (single process, msrun workers or rank-table ranks).

    python scripts/train_ddpm.py --config configs/ddpm/cifar10.yaml data.path=/data/cifar-10-python.tar.gz
    python scripts/train_ddpm.py --config configs/ddpm/digits16.yaml --resume auto
"""
import argparse
import sys

from mind_diffusion.cli import run_training


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (configs/ddpm/*.yaml)")
    p.add_argument("--resume", default=None,
                   help="continue the run in train.output_dir: 'auto' (its newest checkpoint that reads) or a .ckpt path")
    p.add_argument("--overwrite", action="store_true",
                   help="train.output_dir holds another run: delete its checkpoints, log and models, start over")
    p.add_argument("--init_from", default=None, help="start from these model weights (fresh optimizer)")
    p.add_argument("--no_progress", action="store_true", help="plain log lines instead of a progress bar")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=1000 data.path=...")
    from mind_diffusion.runtime import add_runtime_args

    add_runtime_args(p)
    args = p.parse_args(argv)

    def config():
        from mind_diffusion.config import load_config
        from mind_diffusion.ddpm.config import ddpm_config_defaults

        return load_config(args.config, args.overrides, ddpm_config_defaults())

    def train(cfg, rt):
        from mind_diffusion.ddpm.training import train_ddpm

        return train_ddpm(cfg, rt, resume=args.resume, init_from=args.init_from,
                          progress=not args.no_progress, overwrite=args.overwrite)

    return run_training(args, config, train)


if __name__ == "__main__":
    sys.exit(main())
