"""Train the KL autoencoder (first stage) from scratch, for a small built-in latent model.

Loss (per step, images in [-1, 1]):

    rec  = mean w |x - decode(z)|                    (L1, mean over all pixels)
         + l2_weight * mean w (x - decode(z))^2      (optional)
    w    = 1 + contrast_weight * mean_c |x - mean_hw(x)|     (1 everywhere by default)
    kl   = mean over batch of 0.5 * sum_{c,h,w} (mu^2 + exp(logvar) - 1 - logvar)
    loss = rec + kl_weight * kl,     z = mu + exp(logvar / 2) * posterior_noise

``kl_weight`` defaults to LDM's 1e-6. Note that LDM's reconstruction term is a *sum* over
pixels (divided by the batch), ours a mean: relative to the reconstruction, our KL is
``C*H*W`` times stronger at the same weight (a tighter latent, which suits a small model);
``kl_weight = 1e-6 / (3*H*W)`` reproduces LDM's balance. No perceptual (LPIPS) or GAN term.

``contrast_weight`` > 0 weighs each pixel by how far it lies from its image's mean colour. On
scenes of small objects over a flat background (the shapes world: shapes cover ~4% of the
pixels) a plain mean loss is dominated by the background, and the autoencoder learns the
background long before the objects' colour and outline; the weight gives the objects their
share of the loss without any knowledge of the scene.

``freeze_encoder: true`` (with ``init.checkpoint``) trains only the decoder side
(``post_quant_conv`` and ``decoder``), as Stable Diffusion's improved ``ft-MSE`` VAE was made:
the latents stay exactly those of the starting autoencoder, so a latent UNet trained on them
keeps working with the sharper decoder (the KL term is then a constant).

The posterior noise, crops and flips are drawn on the host from ``(seed, step)`` (the same CSV
data source as :mod:`.training`), so resume is exact. The exported ``vae.ckpt`` holds the
weights under ``first_stage_model.*`` names: give it to LDM training as
``init.vae_checkpoint`` (or merge it into a LatentDiffusion checkpoint).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from mindspore import nn, ops

from ..config import save_config, to_plain
from ..nn.layers import apply_compute_dtype
from ..train.data import DataError
from .autoencoder import AutoencoderKL
from .training import (
    LDMBatches,
    ModelTrainer,
    load_vae_weights,
    make_batch_dataset,
    make_train_options,
    resolve_total_steps,
    set_trainable,
)
from ..train.data import CSVImageText


class FirstStage(nn.Cell):
    """Holds the VAE as ``first_stage_model`` so its parameters carry LatentDiffusion names."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.first_stage_model = vae

    def construct(self, x, noise):
        return self.first_stage_model(x, noise)


def build_vae(vae_cfg) -> FirstStage:
    kw = to_plain(vae_cfg)
    kw["ch_mult"] = tuple(kw["ch_mult"])
    return FirstStage(AutoencoderKL(**kw))


class VAELoss(nn.Cell):
    """``construct(x, posterior_noise) -> rec + kl_weight * kl`` (see the module doc)."""

    def __init__(self, holder: FirstStage, kl_weight: float = 1e-6, l2_weight: float = 0.0,
                 contrast_weight: float = 0.0, freeze_encoder: bool = False):
        super().__init__(auto_prefix=False)
        self.holder = holder
        self.freeze_encoder = bool(freeze_encoder)
        self.kl_weight, self.l2_weight = float(kl_weight), float(l2_weight)
        if contrast_weight < 0:
            raise ValueError(f"train.contrast_weight must be >= 0, got {contrast_weight}")
        self.contrast_weight = float(contrast_weight)

    def pixel_weight(self, x):
        """(B,1,H,W): 1 + contrast_weight * mean over channels of |x - its image's mean colour|."""
        b, c, h, w = x.shape
        centre = ops.broadcast_to(x.mean(axis=(2, 3), keep_dims=True), (b, c, h, w))
        return 1.0 + self.contrast_weight * ops.abs(x - centre).mean(axis=1, keep_dims=True)

    def terms(self, x, noise):
        vae = self.holder.first_stage_model
        mean, logvar = vae.encode_moments(x)
        if self.freeze_encoder:
            mean, logvar = ops.stop_gradient(mean), ops.stop_gradient(logvar)
        z = mean + ops.exp(0.5 * logvar) * noise
        diff = vae.decode(z) - x
        if self.contrast_weight > 0:
            diff = diff * ops.broadcast_to(self.pixel_weight(x), diff.shape)
            l2 = (diff * diff / ops.broadcast_to(self.pixel_weight(x), diff.shape)).mean()
        else:
            l2 = (diff * diff).mean()
        l1 = ops.abs(diff).mean()
        kl = 0.5 * (mean * mean + ops.exp(logvar) - 1.0 - logvar)
        kl = kl.sum(axis=(1, 2, 3)).mean()
        return l1, l2, kl

    def construct(self, x, noise):
        l1, l2, kl = self.terms(x, noise)
        return l1 + self.l2_weight * l2 + self.kl_weight * kl


def build_vae_trainer(cfg, runtime, resume: str | None = None, progress: bool = True, overwrite: bool = False):
    import mindspore as ms

    from ..train.run_dir import check_run_dir
    from ..train.validate import check_number

    t, d = cfg.train, cfg.data
    check_number(t.grad_accum_steps, "train.grad_accum_steps", 1, None, True, True, True)
    check_run_dir(Path(t.output_dir).expanduser(), resume, overwrite, ("vae.ckpt", "vae_ema.ckpt"),
                  rank=runtime.rank)
    if d.kind != "csv":
        raise DataError(f"data.kind must be 'csv', got {d.kind!r}")
    ms.set_seed(int(t.seed))
    holder = build_vae(cfg.model.vae)
    if cfg.init.checkpoint:
        load_vae_weights(holder.first_stage_model, cfg.init.checkpoint)
    if bool(t.freeze_encoder):
        if not cfg.init.checkpoint:
            raise ValueError("train.freeze_encoder: true fine-tunes the decoder of a trained autoencoder; "
                             "set init.checkpoint to it (e.g. runs/shapes-vae/vae.ckpt)")
        vae = holder.first_stage_model
        set_trainable(vae.encoder, False)
        set_trainable(vae.quant_conv, False)
    apply_compute_dtype(holder, runtime.precision.ms_dtype())
    down = holder.first_stage_model.downscale
    if int(d.image_size) % down:
        raise DataError(f"data.image_size={d.image_size} must be divisible by the VAE downsampling {down}")
    data = CSVImageText(d.path, int(d.image_size), bool(d.filter_small_size), int(d.image_filter_size),
                        need_text=False)
    shape = (int(cfg.model.vae.embed_dim), int(d.image_size) // down, int(d.image_size) // down)
    source = LDMBatches(data, None, int(t.batch_size), 1000, shape, seed=int(t.seed), rank=runtime.rank,
                        group_size=runtime.group_size, random_crop=bool(d.random_crop),
                        shuffle=bool(d.shuffle), with_text=False, accum_steps=int(t.grad_accum_steps))
    total = resolve_total_steps(t, source.steps_per_epoch)
    betas = list(t.betas)
    optimizer = nn.Adam(holder.trainable_params(), learning_rate=float(t.lr), beta1=float(betas[0]),
                        beta2=float(betas[1]), eps=float(t.eps))
    loss_net = VAELoss(holder, float(t.kl_weight), float(t.l2_weight), float(t.contrast_weight),
                       bool(t.freeze_encoder))
    opts = make_train_options(t, total, source.steps_per_epoch, progress)
    out = Path(t.output_dir).expanduser()

    trainer = ModelTrainer(holder, loss_net, optimizer, source, opts, out, runtime,
                           images_per_step=source.global_batch, use_ema=float(t.ema_decay) > 0,
                           export_name="vae")  # vae.ckpt (+ vae_ema.ckpt)
    trainer.start(resume, overwrite)
    if runtime.rank == 0:
        save_config(cfg, out / "config.yaml")
        n = sum(int(np.prod(p.shape)) for p in holder.trainable_params())
        print(f"[mind_diffusion] VAE: {len(data)} images, {n:,} parameters, {total} steps, global batch "
              f"{source.global_batch} ({source.describe_global_batch()}) -> {out}", flush=True)
    return trainer, (lambda start, end: make_batch_dataset(source, start, end))


def train_vae(cfg, runtime, resume: str | None = None, progress: bool = True, overwrite: bool = False) -> dict:
    trainer, make = build_vae_trainer(cfg, runtime, resume, progress, overwrite=overwrite)
    return trainer.fit(make)


def latent_statistics(vae: AutoencoderKL, data: CSVImageText, n: int = 2000, batch: int = 16,
                      seed: int = 0) -> dict:
    """Std of the VAE's posterior *samples* ``z = mu + sigma * eps`` (what the LDM trains on) over
    the first ``n`` images (center crops), and the ``scale_factor = 1 / std`` that brings them to
    unit variance (LDM's recipe; SD-v1's 0.18215 came from the same measurement).

    The posterior noise comes from ``numpy.random.default_rng(seed)``, so the result is
    reproducible."""
    from mindspore import Tensor

    from .training import _VAEMoments

    n = min(int(n), len(data))
    if n < 2:
        raise DataError(f"need at least 2 images to measure the latent std, the data has {len(data)}")
    enc = _VAEMoments(vae)
    enc.set_train(False)
    rng = np.random.default_rng(seed)
    total, total_sq, count = 0.0, 0.0, 0
    for s in range(0, n, batch):
        x = np.stack([data.image(i) for i in range(s, min(s + batch, n))])
        mean, logvar = (t.asnumpy().astype(np.float64) for t in enc(Tensor(x)))
        z = mean + np.exp(0.5 * logvar) * rng.standard_normal(mean.shape)
        total, total_sq, count = total + z.sum(), total_sq + (z * z).sum(), count + z.size
    mu = total / count
    std = float(np.sqrt(max(total_sq / count - mu * mu, 0.0)))
    if not np.isfinite(std) or std <= 0:
        raise ValueError(f"the VAE latents have std {std}: the autoencoder is broken (NaN or collapsed)")
    return {"images": n, "mean": float(mu), "std": std, "scale_factor": 1.0 / std}
