"""Measure a trained autoencoder's latent scale: the std of its posterior samples over the
training images and the LDM `model.scale_factor = 1 / std` that gives the diffusion model
unit-variance latents (how SD-v1's 0.18215 was chosen).

    python scripts/vae_latent_scale.py --config configs/shapes/vae.yaml --vae runs/shapes-vae/vae.ckpt

Prints one line and, with --write CONFIG.yaml, sets model.scale_factor in that LDM config.
"""
import argparse
import re
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli


def write_scale(config_path: Path, scale: float) -> None:
    """Rewrite the `scale_factor:` line of a YAML config in place, keeping its comments."""
    text = config_path.read_text(encoding="utf-8")
    new, n = re.subn(r"(?m)^(\s*scale_factor:\s*)[-+0-9.eE]+", lambda m: f"{m.group(1)}{scale:.5f}", text, count=1)
    if n != 1:
        raise ValueError(f"{config_path} has no numeric 'scale_factor:' line to update; set "
                         f"model.scale_factor={scale:.5f} by hand")
    tmp = config_path.with_suffix(config_path.suffix + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(config_path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="the autoencoder's training config (model.vae, data.*)")
    p.add_argument("--vae", required=True, help="vae.ckpt written by scripts/train_vae.py")
    p.add_argument("--n", type=int, default=2000, help="number of training images to measure (default 2000)")
    p.add_argument("--write", default=None, metavar="LDM_CONFIG.yaml",
                   help="set model.scale_factor in this LDM config")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. data.path=...")
    from mind_diffusion.runtime import add_runtime_args

    add_runtime_args(p)
    args = p.parse_args(argv)

    def job():
        from mind_diffusion.config import load_config
        from mind_diffusion.ldm.training import load_vae_weights
        from mind_diffusion.train.data import CSVImageText
        from mind_diffusion.ldm.config import vae_train_config_defaults
        from mind_diffusion.ldm.vae_training import build_vae, latent_statistics
        from mind_diffusion.runtime import cli_options, init_runtime

        if args.write and not Path(args.write).is_file():
            raise FileNotFoundError(f"--write {args.write}: no such config file")
        cfg = load_config(args.config, args.overrides, vae_train_config_defaults())
        init_runtime(args.device_target, args.mode, seed=0, precision=args.precision, **cli_options(args))
        if not Path(args.vae).is_file():
            raise FileNotFoundError(f"--vae {args.vae}: no such file (train it with scripts/train_vae.py "
                                    f"--config {args.config})")
        vae = build_vae(cfg.model.vae).first_stage_model
        load_vae_weights(vae, args.vae)
        d = cfg.data
        data = CSVImageText(d.path, int(d.image_size), bool(d.filter_small_size), int(d.image_filter_size),
                            need_text=False)
        st = latent_statistics(vae, data, n=args.n)
        print(f"latents of {st['images']} images: mean {st['mean']:+.4f}, std {st['std']:.4f} -> "
              f"model.scale_factor = {st['scale_factor']:.5f}")
        if args.write:
            write_scale(Path(args.write), st["scale_factor"])
            print(f"wrote model.scale_factor: {st['scale_factor']:.5f} into {args.write}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
