"""Train a latent-diffusion (Wukong-Huahua-shaped) text-to-image model on CSV image-text pairs:
fine-tune the released model with the original recipe, or train a small model from scratch.

    python scripts/train_ldm.py --config configs/wukong/train-finetune.yaml data.path=dataset/
    python scripts/train_ldm.py --config configs/ldm/tiny-csv.yaml data.path=my_pairs/ --device_target CPU
    python scripts/train_ldm.py --config configs/wukong/train-finetune.yaml --resume auto

data.path holds *.csv files with columns `dir` (image path relative to data.path) and `text`.
Outputs in train.output_dir: model.ckpt + model.yaml + vocab (load with scripts/txt2img.py or
LDMPipeline.from_pretrained), metrics.csv, checkpoints/ (for --resume).
"""
import argparse
import sys

from mind_diffusion.cli import run_training


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (configs/wukong/train-finetune.yaml, "
                                                   "configs/ldm/*.yaml)")
    p.add_argument("--resume", default=None,
                   help="continue the run in train.output_dir: 'auto' (its newest checkpoint that reads) or a .ckpt path")
    p.add_argument("--overwrite", action="store_true",
                   help="train.output_dir holds another run: delete its checkpoints, log and models, start over")
    p.add_argument("--no_progress", action="store_true", help="plain log lines instead of a progress bar")
    p.add_argument("--strict", action="store_true",
                   help="refuse the data when any image in the CSV cannot be read (default: skip such "
                        "images and say how many)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=1000 data.path=...")
    from mind_diffusion.runtime import add_runtime_args

    add_runtime_args(p)
    args = p.parse_args(argv)

    def config():
        from mind_diffusion.config import load_config
        from mind_diffusion.ldm.config import ldm_train_config_defaults

        return load_config(args.config, args.overrides, ldm_train_config_defaults())

    def train(cfg, rt):
        from mind_diffusion.ldm.training import train_ldm

        return train_ldm(cfg, rt, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite,
                         strict=args.strict)

    return run_training(args, config, train)


if __name__ == "__main__":
    sys.exit(main())
