"""A tiny Wukong-shaped latent-diffusion config for fast tests (same code paths, small widths)."""
from pathlib import Path
import shutil

import numpy as np
import yaml

TINY_MODEL = {
    "family": "wukong-tiny",
    "scale_factor": 0.18215,
    "schedule": {"kind": "scaled_linear", "num_timesteps": 1000, "beta_start": 0.00085,
                 "beta_end": 0.012},
    "unet": {"in_channels": 4, "out_channels": 4, "model_channels": 16, "channel_mult": [1, 2],
             "num_res_blocks": 1, "attention_resolutions": [2, 1], "num_heads": 2,
             "context_dim": 16, "transformer_depth": 1, "num_groups": 8, "gelu": "tanh"},
    "vae": {"embed_dim": 4, "z_channels": 4, "ch": 8, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1,
            "in_channels": 3, "out_ch": 3, "num_groups": 4},
    # 21128 rows: every WordPiece id of the real vocab must index the table
    "text_encoder": {"vocab_size": 21128, "context_length": 77, "width": 16, "layers": 2,
                     "heads": 2, "ln_eps": 1.0e-7},
}


def write_tiny_config(folder: Path, model: dict | None = None, **sampling) -> Path:
    cfg = {"model": model or TINY_MODEL,
           "tokenizer": {"kind": "wordpiece", "vocab_file": "vocab_zh.txt", "pad_id": 0},
           "checkpoint": {"name": "tiny.ckpt", "url": ""},
           "sampling": {"sampler": "dpm_solver", "steps": 3, "scale": 7.5, "H": 64, "W": 64,
                        "seed": 42, "quantize": "truncate", **sampling}}
    path = Path(folder) / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def randomize(net, seed: int = 0, std: float = 0.2):
    """Noticeable random values everywhere (zero-initialised output convs would hide bugs)."""
    from mindspore import Tensor

    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        shape = tuple(p.shape)
        if p.name.endswith("gamma"):
            v = 1.0 + std * rng.standard_normal(shape)
        else:
            v = std * rng.standard_normal(shape)
        p.set_data(Tensor(v.astype(np.float32)))
    return net


def make_tiny_model_dir(folder: Path, shared: Path, seed: int = 0, model: dict | None = None) -> tuple[Path, Path]:
    """tiny.yaml + tiny.ckpt (random weights) + vocab_zh.txt in ``folder`` (``model``: another
    model section than ``TINY_MODEL``)."""
    from mind_diffusion.checkpoint.io import save_atomic
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.ldm.model import build_ldm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = write_tiny_config(folder, model)
    cfg = load_config(cfg_path, (), ldm_config_defaults())
    net = randomize(build_ldm(cfg.model), seed)
    ckpt = save_atomic({p.name: p.asnumpy() for p in net.get_parameters()}, folder / "tiny.ckpt")
    shutil.copyfile(shared / "reference" / "vocab_zh.txt", folder / "vocab_zh.txt")
    return cfg_path, ckpt
