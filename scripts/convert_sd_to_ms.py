"""Convert Stable Diffusion v1.x weights to a MindSpore checkpoint for scripts/txt2img.py.

    python scripts/convert_sd_to_ms.py v1-5-pruned-emaonly.safetensors --output models/sd-v1-5-ms.ckpt \
        --bpe ~/Downloads/bpe_simple_vocab_16e6.txt.gz
    python scripts/convert_sd_to_ms.py path/to/stable-diffusion-v1-5/   (a diffusers folder)

Reads CompVis-format .ckpt (without executing pickled code) or .safetensors files, or a diffusers
folder; writes our parameter names (the Wukong-Huahua layout), checks the result against the
model built from --config (every tensor, name and shape), and copies the CLIP BPE tokenizer
file next to the output when --bpe is given. Then:

    python scripts/txt2img.py --config configs/sd/v1-inference.yaml --ckpt_name sd-v1-5-ms.ckpt \
        --prompt "a lighthouse at dusk, oil painting"

SD-1.x inpainting sources (sd-v1-5-inpainting.ckpt / .safetensors / diffusers folder: a UNet
with 9 input channels) are recognised and checked against configs/sd/v1-inpainting-inference.yaml:

    python scripts/convert_sd_to_ms.py sd-v1-5-inpainting.ckpt --output models/sd-v1-5-inpainting-ms.ckpt
    python scripts/inpaint.py --config configs/sd/v1-inpainting-inference.yaml \
        --ckpt_name sd-v1-5-inpainting-ms.ckpt --img photo.png --mask mask.png --prompt "a red fox"
"""
import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from mind_diffusion.cli import run_cli  # noqa: E402


def run_hint(config, out: Path, inpaint: bool = False) -> str:
    """The txt2img (inpaint.py for an inpainting model) command for the written checkpoint,
    with the --config it was checked against."""
    if inpaint:
        return (f"run: python scripts/inpaint.py --config {config} --ckpt_path {out.parent} "
                f"--ckpt_name {out.name} --img IMAGE --mask MASK --prompt \"...\"")
    return (f"run: python scripts/txt2img.py --config {config} --ckpt_path {out.parent} "
            f"--ckpt_name {out.name} --prompt \"...\"")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="SD v1.x .ckpt / .safetensors file, or a diffusers folder")
    p.add_argument("--output", default="models/sd-v1-ms.ckpt", help="MindSpore checkpoint to write")
    p.add_argument("--config", default=None,
                   help="model config the result must load into (checked); default "
                        "configs/sd/v1-inference.yaml, or configs/sd/v1-inpainting-inference.yaml "
                        "for an inpainting source (UNet with 9 input channels)")
    p.add_argument("--bpe", default=None, help="bpe_simple_vocab_16e6.txt.gz to copy next to the output")
    p.add_argument("--no_check", action="store_true",
                   help="skip building the model to check the result (saves time and ~4 GB RAM)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    args = p.parse_args(argv)

    def job():
        from mind_diffusion.checkpoint.convert_sd import (check_channels_fit, convert_stable_diffusion,
                                                          default_sd_config, unet_in_channels)
        from mind_diffusion.checkpoint.io import save_atomic

        out = Path(args.output).expanduser()
        if out.suffix != ".ckpt":
            raise ValueError(f"--output must end in .ckpt, got {out}")
        if out.exists() and not args.overwrite:
            raise ValueError(f"{out} exists; pass --overwrite to replace it (or choose another --output)")
        if args.bpe and not Path(args.bpe).expanduser().is_file():
            raise FileNotFoundError(f"--bpe file not found: {args.bpe}")
        t0 = time.time()
        state, filled = convert_stable_diffusion(args.source)
        print(f"read and converted {len(state)} tensors in {time.time() - t0:.1f} s "
              f"({len(filled)} never-used VAE tensors filled with zeros)")
        inpaint = unet_in_channels(state) == 9
        config = args.config or default_sd_config(state)
        if not args.no_check:
            import mind_diffusion  # noqa: F401
            import mindspore as ms

            from mind_diffusion.config import load_config
            from mind_diffusion.ldm.config import ldm_config_defaults
            from mind_diffusion.ldm.model import build_ldm
            from mind_diffusion.checkpoint.io import load_strict

            ms.set_device("CPU")
            cfg_path = Path(config)
            if not cfg_path.is_file() and (ROOT / cfg_path).is_file():
                cfg_path = ROOT / cfg_path
            cfg = load_config(cfg_path, (), ldm_config_defaults())
            check_channels_fit(state, cfg.model.unet.in_channels, cfg_path)
            net = build_ldm(cfg.model)
            load_strict(net, state, path=str(args.source), dry_run=True)
            del net
            print(f"checked against {cfg_path}: every name and shape matches")
        save_atomic(state, out)
        print(f"wrote {out} ({out.stat().st_size / 2**30:.2f} GiB)")
        if args.bpe:
            dst = out.parent / "bpe_simple_vocab_16e6.txt.gz"
            if Path(args.bpe).expanduser().resolve() != dst.resolve():
                shutil.copyfile(Path(args.bpe).expanduser(), dst)
            print(f"tokenizer: {dst}")
        print(run_hint(config, out, inpaint))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
