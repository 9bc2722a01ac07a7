"""DDPM defaults: the single source of the network's shape and of the config schema (abarankab/DDPM
CIFAR-10 values)."""
from __future__ import annotations

from ..config import sampling_defaults


def ddpm_unet_defaults() -> dict:
    """The CIFAR-10 model of abarankab/DDPM (script_utils.diffusion_defaults)."""
    return dict(
        img_channels=3,
        base_channels=128,
        channel_mults=[1, 2, 2, 2],
        num_res_blocks=2,
        time_emb_dim=512,
        dropout=0.1,
        attention_resolutions=[1],
        num_classes=None,
        num_groups=32,
        zero_init=False,
    )


def ddpm_config_defaults() -> dict:
    """The single source of the DDPM config shape (abarankab/DDPM CIFAR-10 defaults)."""
    return {
        "model": {**ddpm_unet_defaults(), "image_size": 32},
        "diffusion": {"schedule": "linear", "num_timesteps": 1000, "beta_start": None, "beta_end": None,
                      "loss_type": "l2"},
        "data": {"kind": "cifar10", "path": None, "random_flip": False, "resize": False},
        "train": {
            "steps": 800000, "batch_size": 128, "lr": 2e-4, "warmup_steps": 0, "adam_betas": [0.9, 0.999],
            "adam_eps": 1e-8, "clip_grad_norm": 0.0, "loss_scale": "none", "init_loss_scale": 65536.0,
            "ema_decay": 0.9999, "ema_start": 2000, "ema_every": 1, "log_every": 100, "ckpt_every": 1000,
            "keep_checkpoints": 3, "seed": 0, "output_dir": "runs/ddpm",
            # micro-batches per update: batch_size (the global batch) = micro-batch x workers x this
            "grad_accum_steps": 1,
        },
        # the one sampling vocabulary (older configs' "sample: {num_steps}" is read as this);
        # height / width / guidance / negative prompt are fixed for DDPM (None: the model's)
        "sampling": sampling_defaults(
            sampler="ddpm", num_inference_steps=1000, guidance_scale=None, height=None,
            width=None, num_images_per_prompt=1, seed=0, negative_prompt=None,
            variance="fixed_large", clip_denoised=False),
    }
