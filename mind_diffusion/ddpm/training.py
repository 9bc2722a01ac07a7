"""DDPM training: model / data / optimizer assembly over the shared trainer (the config schema
is ``ddpm.config.ddpm_config_defaults``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

import mindspore as ms
from mindspore import nn

from ..config import save_config
from ..diffusion.schedule import schedule_from_config
from ..train.data import DiffusionBatches, check_global_batch, load_dataset, make_dataset
from ..train.objectives import NoisePredictionLoss
from ..train.schedules import WarmupLR
from ..train.run_dir import check_run_dir
from ..train.trainer import TrainOptions, Trainer
from ..train.validate import check_classes, check_ddpm_model, check_train_section
from ..nn.layers import apply_compute_dtype
from .unet import build_ddpm_unet


def train_ddpm(cfg, runtime, resume: str | None = None, init_from: str | None = None,
               progress: bool = True, overwrite: bool = False) -> dict:
    trainer, make = build_ddpm_trainer(cfg, runtime, resume, init_from, progress, overwrite=overwrite)
    return trainer.fit(make)


def build_ddpm_trainer(cfg, runtime, resume: str | None = None, init_from: str | None = None,
                       progress: bool = True, overwrite: bool = False):
    """(trainer, make_dataset) ready for ``trainer.fit(make_dataset)``. A ``train.output_dir`` that
    holds another run needs ``resume`` or ``overwrite`` (``train.run_dir``)."""
    t, m = cfg.train, cfg.model
    check_train_section(t)  # every numeric key in its range, before anything is read or built
    check_ddpm_model(m)
    check_global_batch(t.batch_size, runtime.group_size, t.grad_accum_steps)  # before the data is read
    check_run_dir(Path(t.output_dir).expanduser(), resume, overwrite, rank=runtime.rank)  # before any work
    ms.set_seed(int(t.seed))  # parameter init is identical on every rank
    schedule = schedule_from_config(cfg.diffusion)
    images, labels, classes = load_dataset(cfg.data.kind, cfg.data.path, m.image_size, m.img_channels,
                                           cfg.data.resize)
    check_classes(m.num_classes, classes)
    net = apply_compute_dtype(build_ddpm_unet(m), runtime.precision.ms_dtype())
    if init_from:
        from ..checkpoint.io import load_into

        load_into(net, init_from, what="--init_from weights")
    loss_net = NoisePredictionLoss(net, schedule.alphas_cumprod, conditional=m.num_classes is not None,
                                   loss_type=cfg.diffusion.loss_type)
    lr = WarmupLR(t.lr, t.warmup_steps) if t.warmup_steps > 0 else float(t.lr)
    optimizer = nn.Adam(net.trainable_params(), learning_rate=lr, beta1=t.adam_betas[0], beta2=t.adam_betas[1],
                        eps=t.adam_eps)
    source = DiffusionBatches(images, labels, t.batch_size, schedule.num_timesteps, seed=int(t.seed),
                              rank=runtime.rank, group_size=runtime.group_size, random_flip=cfg.data.random_flip,
                              accum_steps=int(t.grad_accum_steps))
    if not runtime.precision.is_fp32 and t.loss_scale == "none":
        print("[mind_diffusion] note: fp16/bf16 compute without loss scaling; consider train.loss_scale=dynamic")
    opts = TrainOptions(total_steps=t.steps, log_every=t.log_every, ckpt_every=t.ckpt_every,
                        keep_checkpoints=t.keep_checkpoints, ema_decay=t.ema_decay, ema_start=t.ema_start,
                        ema_every=t.ema_every, clip_grad_norm=t.clip_grad_norm, loss_scale=t.loss_scale,
                        init_loss_scale=t.init_loss_scale, seed=int(t.seed), progress=progress,
                        grad_accum_steps=int(t.grad_accum_steps))
    out = Path(t.output_dir).expanduser()
    trainer = Trainer(net, loss_net, optimizer, source, opts, out, runtime, images_per_step=t.batch_size)
    trainer.start(resume, overwrite)
    if runtime.rank == 0:
        save_config(cfg, out / "config.yaml")
        (out / "classes.txt").write_text("\n".join(classes) + "\n")
        print(f"[mind_diffusion] DDPM: {len(images)} images, {len(classes)} classes, "
              f"{sum(int(np.prod(p.shape)) for p in net.trainable_params()):,} parameters, "
              f"global batch {t.batch_size} over {runtime.group_size} worker(s)"
              + (f" x {t.grad_accum_steps} micro-batches" if int(t.grad_accum_steps) > 1 else "")
              + f" -> {out}", flush=True)
    return trainer, (lambda start, end: make_dataset(source, start, end))
