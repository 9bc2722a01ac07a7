"""Train the KL autoencoder (first stage) of a small latent-diffusion model from scratch on the
images of a CSV data folder (column `dir`; captions are not needed).

    python scripts/train_vae.py --config configs/ldm/tiny-vae.yaml data.path=my_pairs/ --device_target CPU

Writes train.output_dir/vae.ckpt with `first_stage_model.*` names: pass it to LDM training as
init.vae_checkpoint=.../vae.ckpt.
"""
import argparse
import sys

from mind_diffusion.cli import run_training


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (defaults: vae_train_config_defaults())")
    p.add_argument("--resume", default=None,
                   help="continue the run in train.output_dir: 'auto' (its newest checkpoint that reads) or a .ckpt path")
    p.add_argument("--overwrite", action="store_true",
                   help="train.output_dir holds another run: delete its checkpoints, log and models, start over")
    p.add_argument("--no_progress", action="store_true", help="plain log lines instead of a progress bar")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=1000 data.path=...")
    from mind_diffusion.runtime import add_runtime_args

    add_runtime_args(p)
    args = p.parse_args(argv)

    def config():
        from mind_diffusion.config import load_config
        from mind_diffusion.ldm.config import vae_train_config_defaults

        return load_config(args.config, args.overrides, vae_train_config_defaults())

    def train(cfg, rt):
        from mind_diffusion.ldm.vae_training import train_vae

        return train_vae(cfg, rt, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)

    return run_training(args, config, train)


if __name__ == "__main__":
    sys.exit(main())
