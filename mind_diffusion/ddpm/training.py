"""DDPM training: config schema, model / data / optimizer assembly over the shared trainer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import mindspore as ms
from mindspore import nn, ops

from ..config import save_config, to_plain
from ..diffusion.schedule import DiffusionSchedule
from ..train.data import DiffusionBatches, load_dataset, make_dataset
from ..train.objectives import NoisePredictionLoss
from ..train.run_dir import check_run_dir
from ..train.trainer import TrainOptions, Trainer
from ..nn.layers import apply_compute_dtype
from .unet import DDPMUNet, ddpm_unet_defaults


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
        },
        "sample": {"sampler": "ddpm", "num_steps": 1000, "variance": "fixed_large", "clip_denoised": False},
    }


def schedule_from_config(dcfg) -> DiffusionSchedule:
    return DiffusionSchedule.create(kind=dcfg.schedule, num_timesteps=dcfg.num_timesteps,
                                    beta_start=dcfg.beta_start, beta_end=dcfg.beta_end)


def build_model(mcfg) -> DDPMUNet:
    kw = {k: v for k, v in to_plain(mcfg).items() if k != "image_size"}
    return DDPMUNet(**kw)


class WarmupLR(nn.learning_rate_schedule.LearningRateSchedule):
    """lr * min(1, (step+1) / warmup): Ho et al.'s linear warmup (0 = constant lr)."""

    def __init__(self, lr: float, warmup: int):
        super().__init__()
        self.lr, self.warmup = float(lr), max(int(warmup), 1)

    def construct(self, global_step):
        frac = ops.cast(global_step + 1, ms.float32) / self.warmup
        return self.lr * ops.minimum(frac, ops.ones_like(frac))


def train_ddpm(cfg, runtime, resume: str | None = None, init_from: str | None = None,
               progress: bool = True, overwrite: bool = False) -> dict:
    trainer, make = build_ddpm_trainer(cfg, runtime, resume, init_from, progress, overwrite=overwrite)
    return trainer.fit(make)


def build_ddpm_trainer(cfg, runtime, resume: str | None = None, init_from: str | None = None,
                       progress: bool = True, overwrite: bool = False):
    """(trainer, make_dataset) ready for ``trainer.fit(make_dataset)``. A ``train.output_dir`` that
    holds another run needs ``resume`` or ``overwrite`` (``train.run_dir``)."""
    t, m = cfg.train, cfg.model
    check_run_dir(Path(t.output_dir).expanduser(), resume, overwrite, rank=runtime.rank)  # before any work
    ms.set_seed(int(t.seed))  # parameter init is identical on every rank
    schedule = schedule_from_config(cfg.diffusion)
    images, labels, classes = load_dataset(cfg.data.kind, cfg.data.path, m.image_size, m.img_channels,
                                           cfg.data.resize)
    if m.num_classes is not None and labels.max() >= m.num_classes:
        raise ValueError(f"the dataset has {labels.max() + 1} classes but model.num_classes={m.num_classes}")
    net = apply_compute_dtype(build_model(m), runtime.precision.ms_dtype())
    if init_from:
        from ..checkpoint.io import load_into

        load_into(net, init_from, what="--init_from weights")
    loss_net = NoisePredictionLoss(net, schedule.alphas_cumprod, conditional=m.num_classes is not None,
                                   loss_type=cfg.diffusion.loss_type)
    lr = WarmupLR(t.lr, t.warmup_steps) if t.warmup_steps > 0 else float(t.lr)
    optimizer = nn.Adam(net.trainable_params(), learning_rate=lr, beta1=t.adam_betas[0], beta2=t.adam_betas[1],
                        eps=t.adam_eps)
    source = DiffusionBatches(images, labels, t.batch_size, schedule.num_timesteps, seed=int(t.seed),
                              rank=runtime.rank, group_size=runtime.group_size, random_flip=cfg.data.random_flip)
    if not runtime.precision.is_fp32 and t.loss_scale == "none":
        print("[mind_diffusion] note: fp16/bf16 compute without loss scaling; consider train.loss_scale=dynamic")
    opts = TrainOptions(total_steps=t.steps, log_every=t.log_every, ckpt_every=t.ckpt_every,
                        keep_checkpoints=t.keep_checkpoints, ema_decay=t.ema_decay, ema_start=t.ema_start,
                        ema_every=t.ema_every, clip_grad_norm=t.clip_grad_norm, loss_scale=t.loss_scale,
                        init_loss_scale=t.init_loss_scale, seed=int(t.seed), progress=progress)
    out = Path(t.output_dir).expanduser()
    trainer = Trainer(net, loss_net, optimizer, source, opts, out, runtime, images_per_step=t.batch_size)
    trainer.start(resume, overwrite)
    if runtime.rank == 0:
        save_config(cfg, out / "config.yaml")
        (out / "classes.txt").write_text("\n".join(classes) + "\n")
        print(f"[mind_diffusion] DDPM: {len(images)} images, {len(classes)} classes, "
              f"{sum(int(np.prod(p.shape)) for p in net.trainable_params()):,} parameters, "
              f"global batch {t.batch_size} over {runtime.group_size} worker(s) -> {out}", flush=True)
    return trainer, (lambda start, end: make_dataset(source, start, end))
