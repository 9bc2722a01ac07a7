"""Train Taichu-GLIDE: the base model (64 px) or the 64 -> 256 super-resolution model, fine-tuned
from the released checkpoints or from scratch. The original's flags (src/train_txt2img.py) work:

    python scripts/train_glide.py --pretrained_model_path models/glide --pretrained_model glide_gen.ckpt \\
        --cog_model cog-pretrain.model --model_config model_configs/model_config.json \\
        --data_path dataset/ --image_caption_path_file image_caption_path_file.txt \\
        --batch_size 10 --epochs 10 --start_learning_rate 1e-4 --end_learning_rate 1e-9 --output_path output/gen
    python scripts/train_glide.py --config configs/glide/train-gen.yaml data.path=dataset/ --resume auto
    python scripts/train_glide.py --config configs/glide/shapes-base.yaml      # the built-in model

A flag overrides the config (--config, default configs/glide/train-gen.yaml, or train-super-res.yaml
with --is_super_res true); key=value overrides come last. Outputs in train.output_dir (--output_path):
glide_gen.ckpt / glide_super_res.ckpt in the released layout, model.yaml, metrics.csv, checkpoints/.
"""
import argparse
import sys
from pathlib import Path

from mind_diffusion.cli import run_training

ROOT = Path(__file__).resolve().parents[1]

#: original flag -> config key (None: handled below)
FLAGS = {
    "image_caption_path_file": "data.image_caption_path_file", "data_path": "data.path",
    "batch_size": "train.batch_size", "epochs": "train.epochs", "start_learning_rate": "train.start_learning_rate",
    "end_learning_rate": "train.end_learning_rate", "warmup_steps": "train.warmup_steps",
    "save_checkpoint_steps": "train.ckpt_every", "text_drop_p": "data.text_drop_p",
    "init_loss_scale": "train.init_loss_scale", "scale_window": "train.loss_scale_window",
    "output_path": "train.output_dir", "optim": "train.optim", "resolution_ori": "data.low_res_size",
    "model_config": "model.model_config", "cog_model": "tokenizer.sp_model", "is_chinese": "tokenizer.is_chinese",
}


def str2bool(v: str) -> bool:
    low = str(v).strip().lower()
    if low in ("1", "true", "yes", "y", "on"):
        return True
    if low in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def overrides_from_flags(args) -> list[str]:
    """The original's flags as config overrides (paths joined as the original joins them)."""
    out = []
    for flag, key in FLAGS.items():
        value = getattr(args, flag)
        if value is None:
            continue
        if flag == "cog_model" and args.pretrained_model_path and not Path(value).is_absolute():
            value = str(Path(args.pretrained_model_path) / value)
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, str):
            value = '"' + value.replace('"', '\\"') + '"'  # OmegaConf dotlist: keep it a string
        out.append(f"{key}={value}")
    if args.is_super_res is not None:
        out.append(f"model.stage={'sr' if args.is_super_res else 'base'}")
    if args.pretrained_model:
        path = Path(args.pretrained_model)
        if args.pretrained_model_path and not path.is_absolute():
            path = Path(args.pretrained_model_path) / path
        out.append(f'init.checkpoint="{path}"')
    if args.save_checkpoint_steps is not None:
        out.append("train.keep_checkpoints=1")  # the original keeps the newest only
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML training config (configs/glide/*.yaml)")
    p.add_argument("--is_super_res", type=str2bool, default=None, help="train the SR model (model.stage=sr)")
    p.add_argument("--pretrained_model", default=None, help="checkpoint to start from (--pretrained_model_path/NAME)")
    p.add_argument("--pretrained_model_path", default="", help="folder of --pretrained_model and --cog_model")
    p.add_argument("--is_chinese", type=str2bool, default=None, help="SentencePiece (true) or GPT-2 BPE tokens")
    for flag in FLAGS:
        if flag != "is_chinese" and not any(a.dest == flag for a in p._actions):
            kind = {"batch_size": int, "epochs": int, "warmup_steps": int, "save_checkpoint_steps": int,
                    "scale_window": int, "resolution_ori": int, "start_learning_rate": float,
                    "end_learning_rate": float, "text_drop_p": float, "init_loss_scale": float}.get(flag, str)
            p.add_argument(f"--{flag}", type=kind, default=None, help=f"the original's flag; sets {FLAGS[flag]}")
    p.add_argument("--resume", default=None, help="continue the run in train.output_dir: 'auto' or a .ckpt path")
    p.add_argument("--overwrite", action="store_true", help="train.output_dir holds another run: start over")
    p.add_argument("--strict", action="store_true",
                   help="refuse the data when an image cannot be read or a caption tokenizes to nothing")
    p.add_argument("--no_progress", action="store_true", help="plain log lines instead of a progress bar")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=1000")
    from mind_diffusion.runtime import add_runtime_args

    add_runtime_args(p)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    config_path = args.config or str(ROOT / "configs" / "glide" /
                                 ("train-super-res.yaml" if args.is_super_res else "train-gen.yaml"))

    def config():
        from mind_diffusion.config import load_config
        from mind_diffusion.glide.training import glide_train_config_defaults

        return load_config(config_path, overrides_from_flags(args) + list(args.overrides),
                           glide_train_config_defaults())

    def train(cfg, rt):
        from mind_diffusion.glide.training import train_glide

        return train_glide(cfg, rt, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite,
                           strict=args.strict)

    return run_training(args, config, train)


if __name__ == "__main__":
    sys.exit(main())
