"""Latent-diffusion training: fine-tune Wukong-Huahua (the original ``run_train.py`` recipe) or
train a small LDM from scratch, on image-text pairs listed in CSV files.

    cfg = load_config("configs/wukong/train-finetune.yaml", overrides, ldm_train_config_defaults())
    train_ldm(cfg, init_runtime("auto", "graph", seed=cfg.train.seed))

What it reproduces (Wukong-Huahua's ``run_train.py`` and the ``ldm/`` code it runs, mindspore-lab/minddiffusion
``vision/wukong-huahua``):
- loss (``LatentDiffusion`` in ``ddpm.py``): ``z = stop_gradient(scale_factor * VAE.encode(x))`` (posterior *sample*),
  ``x_t = sqrt(abar_t) z + sqrt(1-abar_t) eps``, ``mean((eps - UNet(x_t, t, text(ids)))^2)``;
  the VAE is frozen, the text encoder is trained too (``train.train_text_encoder``; the
  original never freezes it), the schedule coefficients are fp16-rounded when
  ``train.schedule_fp16`` (the original's ``use_fp16`` schedule), UNet dropout 0.1
  (``train.unet_dropout``, the train yaml's value);
- optimizer (``ldm/modules/train/``): MindSpore ``AdamWeightDecay`` (betas 0.9/0.98, eps 1e-6) with weight decay
  1e-6 on every parameter whose name contains neither "layernorm" nor "bias" (so GroupNorm /
  LayerNorm ``gamma`` / ``beta`` *are* decayed, as in the original), 0 on the rest;
  LR warmup then a cosine that is *not* offset by the warmup (:class:`WarmupCosineLR`);
  dynamic loss scale 65536 / x2 / window 1000 with the step skipped on overflow;
- data (``ldm/data/dataset.py``): ``data.path`` holds ``*.csv`` files (sorted) with columns ``dir`` (image path
  relative to ``data.path``) and ``text``; optional small-image filter; SmallestMaxSize ->
  CenterCrop (or RandomCrop + horizontal flip) -> [-1, 1]; WordPiece ids (int32, 77);
  sequential CSV order, wrapping (``data.shuffle=true`` for per-epoch permutations);
  ``train.batch_size`` is *per worker* as in the original (global batch = batch x workers).

What differs, on purpose: all randomness (t, eps, the VAE posterior noise, crops, flips, caption
dropout) is drawn on the host from ``(seed, step)`` for the whole global batch, each rank
taking its rows, so a resumed run continues bit-exactly and N workers see exactly the batch
one process would (UNet dropout > 0 draws its masks on the device and breaks bitwise resume).
No EMA in the original: ``train.ema_decay=0`` (default) keeps none.

Outputs (``train.output_dir``): ``model.ckpt`` under the LatentDiffusion parameter names plus
``model.yaml`` and the vocabulary next to it, so ``LDMPipeline.from_pretrained(out/"model.yaml",
out/"model.ckpt")`` loads strictly; ``model_ema.ckpt`` when EMA is on; training checkpoints
under ``checkpoints/`` for ``--resume``.
"""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from ..checkpoint.io import CheckpointError, read_checkpoint, save_atomic
from ..config import save_config, to_plain
from ..diffusion.schedule import schedule_from_config
from ..nn.layers import apply_compute_dtype
from ..train.data import IMAGE_COLUMN, TEXT_COLUMN, CSVImageText, DataError, GlobalOrder, shard_rows
from ..train.optim import build_optimizer
from ..train.schedules import DelayedLR, PivotLR, WarmupCosineLR, check_delay_start
from ..train.trainer import (  # noqa: F401
    NoEMA, Trainer, TrainOptions, make_train_options, model_tensors, resolve_total_steps)
from .checkpoint import PREFIX_VAE, load_ldm_checkpoint
from .config import ldm_config_defaults
from .model import build_ldm

class LDMBatches:
    """Random-access batch source: item ``step`` -> this rank's
    ``(x (B,3,H,W) f32, ids (B,77) i32, t (B,) i32, noise (B,C,h,w) f32, posterior_noise f32)``
    with ``B = batch_size * accum_steps`` (its ``accum_steps`` micro-batches, stacked).

    The global batch of ``batch_size * group_size * accum_steps`` rows and all of its randomness
    are a pure function of ``(seed, step)`` (:class:`~mind_diffusion.train.data.GlobalOrder`);
    rank ``r`` takes rows ``[r*B, (r+1)*B)`` (:func:`~mind_diffusion.train.data.shard_rows`). With
    ``latents=(mean, logvar)`` (the cache) ``x`` is replaced by ``(mean, logvar)`` rows.
    ``with_text=False`` (VAE training) yields ``(x, posterior_noise)`` only."""

    def __init__(self, data: CSVImageText, tokenizer, batch_size: int, num_timesteps: int,
                 latent_shape: tuple[int, int, int], seed: int = 0, rank: int = 0, group_size: int = 1,
                 random_crop: bool = False, caption_dropout: float = 0.0, shuffle: bool = False,
                 with_text: bool = True, latents: tuple[np.ndarray, np.ndarray] | None = None,
                 accum_steps: int = 1):
        if batch_size < 1:
            raise DataError(f"train.batch_size must be >= 1, got {batch_size}")
        if not 0.0 <= float(caption_dropout) <= 1.0:
            raise DataError(f"data.caption_dropout must be in [0, 1], got {caption_dropout}")
        self.accum_steps = int(accum_steps)
        self.global_batch = int(batch_size) * int(group_size) * self.accum_steps
        if len(data) < self.global_batch:
            accum = f" x train.grad_accum_steps={self.accum_steps}" if self.accum_steps > 1 else ""
            raise DataError(f"the dataset has {len(data)} images, fewer than one global batch of "
                            f"{self.global_batch} (train.batch_size={batch_size} x {group_size} workers{accum}); "
                            f"lower train.batch_size or add images")
        self.data, self.tokenizer = data, tokenizer
        self.rows = shard_rows(self.global_batch, group_size, self.accum_steps, rank)
        self.local = self.rows[1] - self.rows[0]
        self.num_timesteps = int(num_timesteps)
        self.latent_shape = tuple(int(s) for s in latent_shape)
        self.seed, self.rank, self.group = int(seed), int(rank), int(group_size)
        self.random_crop, self.caption_dropout = bool(random_crop), float(caption_dropout)
        self.shuffle, self.with_text = bool(shuffle), bool(with_text)
        self.latents = latents
        self.order = GlobalOrder(len(data), self.global_batch, self.seed, self.shuffle)
        self.steps_per_epoch = self.order.steps_per_epoch  # incomplete batches are dropped
        self._empty_ids = None

    def global_indices(self, step: int) -> np.ndarray:
        return self.order.indices(step)

    def describe_global_batch(self) -> str:
        micro = self.global_batch // (self.group * self.accum_steps)
        return (f"train.batch_size={micro} per worker x {self.group} worker(s) x "
                f"train.grad_accum_steps={self.accum_steps}")

    def reach_global_batch(self, target: int) -> str:
        """How to get the global batch ``target`` on this run's workers (for the resume error)."""
        micro = self.global_batch // (self.group * self.accum_steps)
        ways = []
        if target % (micro * self.group) == 0:
            ways.append(f"train.grad_accum_steps={target // (micro * self.group)}")
        if target % (self.group * self.accum_steps) == 0:
            ways.append(f"train.batch_size={target // (self.group * self.accum_steps)}")
        if not ways:
            return (f"set train.batch_size x train.grad_accum_steps to {target} / {self.group} worker(s), "
                    f"or run on a worker count that divides {target}")
        return "set " + " or ".join(ways)

    def randomness(self, step: int) -> dict:
        """All random draws of the global batch at ``step`` (fixed order, whatever the config)."""
        g = self.global_batch
        rng = np.random.default_rng([self.seed, int(step), 13])
        crops = rng.random((g, 2))
        flips = rng.random(g) < 0.5
        drop = rng.random(g) < self.caption_dropout
        t = rng.integers(0, self.num_timesteps, size=g).astype(np.int32)
        noise = rng.standard_normal((g, *self.latent_shape)).astype(np.float32)
        post = rng.standard_normal((g, *self.latent_shape)).astype(np.float32)
        return {"crops": crops, "flips": flips, "drop": drop, "t": t, "noise": noise, "posterior_noise": post}

    def tokens(self, texts) -> np.ndarray:
        return np.asarray(self.tokenizer(list(texts)), dtype=np.int32)

    def __getitem__(self, step: int):
        step = int(step)
        idx = self.global_indices(step)
        r = self.randomness(step)
        rows = range(*self.rows)
        post = np.ascontiguousarray(r["posterior_noise"][rows.start:rows.stop])
        if self.latents is not None:
            mean = self.latents[0][idx[rows.start:rows.stop]]
            logvar = self.latents[1][idx[rows.start:rows.stop]]
            images = (np.ascontiguousarray(mean), np.ascontiguousarray(logvar))
        else:
            xs = []
            for j in rows:
                crop = tuple(r["crops"][j]) if self.random_crop else None
                flip = bool(r["flips"][j]) if self.random_crop else False
                xs.append(self.data.image(int(idx[j]), crop, flip))
            images = (np.stack(xs),)
        if not self.with_text:
            return (*images, post)
        texts = ["" if r["drop"][j] else self.data.texts[int(idx[j])] for j in rows]
        ids = self.tokens(texts)
        return (*images, ids, np.ascontiguousarray(r["t"][rows.start:rows.stop]),
                np.ascontiguousarray(r["noise"][rows.start:rows.stop]), post)

    @property
    def column_names(self) -> list[str]:
        img = ["mean", "logvar"] if self.latents is not None else ["x"]
        if not self.with_text:
            return img + ["posterior_noise"]
        return img + ["ids", "t", "noise", "posterior_noise"]

    def __len__(self):
        return 2**62


def make_batch_dataset(source: LDMBatches, start_step: int, end_step: int):
    """A ``mindspore.dataset`` pipeline over steps [start_step, end_step) (background prefetch)."""
    import mindspore.dataset as ds

    return ds.GeneratorDataset(source, column_names=source.column_names,
                               sampler=list(range(start_step, end_step)), shuffle=False,
                               num_parallel_workers=1, python_multiprocessing=False)


# ----------------------------------------------------------------------------------------- model
class LatentDiffusionLoss(nn.Cell):
    """``construct(x, ids, t, noise, posterior_noise) -> loss`` (the original's
    ``LatentDiffusion.construct``), or with
    ``cached=True`` ``construct(mean, logvar, ids, t, noise, posterior_noise)`` where
    (mean, logvar) are the frozen VAE's moments of x. A further input, a per-latent-cell weight
    ``[B, 1, h, w]`` (DreamBooth's ``subject_weight``), makes each sample's squared error
    ``sum(w * err) / (C * sum(w))``.

    z = stop_gradient(scale_factor * (mean + exp(logvar / 2) * posterior_noise));
    x_t = sqrt(abar_t) z + sqrt(1 - abar_t) noise; loss = mean((noise - UNet(x_t, t, ctx))^2),
    ctx = text_encoder(ids) (stop-gradient unless ``train_text_encoder``).

    ``loss_weighting="v"`` weighs each sample's squared error by ``w_t = 1 / abar_t`` normalized
    to mean 1 over the timesteps: an eps error at t is an error of ``|d eps| / sqrt(abar_t)`` in
    v = sqrt(abar) eps - sqrt(1 - abar) z, so this is the v-prediction objective (SD 2.x's) on the
    unchanged eps network and samplers. It weighs the noisy steps, where a scene's layout is
    decided, far more than the plain eps loss does (which weighs the error of the implied z by
    SNR_t, ~0.005 at t = 999); the default ``"none"`` is the original's plain mean."""

    WEIGHTINGS = ("none", "v")

    def __init__(self, ldm, alphas_cumprod: np.ndarray, train_text_encoder: bool = True,
                 schedule_fp16: bool = False, cached: bool = False, loss_weighting: str = "none"):
        super().__init__(auto_prefix=False)  # keep the LatentDiffusion parameter names
        self.ldm = ldm
        abar = np.asarray(alphas_cumprod, np.float64)
        a, b = np.sqrt(abar), np.sqrt(1.0 - abar)
        if schedule_fp16:  # the original's use_fp16 schedule tensors
            a, b = a.astype(np.float16), b.astype(np.float16)
        self.sqrt_abar = Tensor(a.astype(np.float32))
        self.sqrt_1m_abar = Tensor(b.astype(np.float32))
        if loss_weighting not in self.WEIGHTINGS:
            raise ValueError(f"train.loss_weighting must be one of {', '.join(self.WEIGHTINGS)}, got {loss_weighting!r}")
        self.weighted = loss_weighting == "v"
        if self.weighted:
            self.weights = Tensor(((1.0 / abar) / np.mean(1.0 / abar)).astype(np.float32))
        self.scale_factor = float(ldm.scale_factor)
        self.train_text_encoder = bool(train_text_encoder)
        self.cached = bool(cached)

    def _latent(self, x, posterior_noise):
        z = self.ldm.first_stage_model.encode(x, posterior_noise)
        return ops.stop_gradient(z * self.scale_factor)

    def diffusion_loss(self, z, ids, t, noise, cell_weight=None):
        ctx = self.ldm.cond_stage_model(ids)
        if not self.train_text_encoder:
            ctx = ops.stop_gradient(ctx)
        a = ops.gather(self.sqrt_abar, t, 0).reshape(-1, 1, 1, 1)
        b = ops.gather(self.sqrt_1m_abar, t, 0).reshape(-1, 1, 1, 1)
        x_t = a * z + b * noise
        eps = self.ldm.model.diffusion_model(x_t, t, ctx)
        diff = ops.cast(eps, ms.float32) - noise
        sq = diff * diff
        if cell_weight is None and not self.weighted:
            return sq.mean()   # the original's loss, to the rounding
        if cell_weight is not None:  # [B, 1, h, w]: per sample sum(w * sq) / (C sum(w)); flat w = the plain mean
            per_sample = (cell_weight * sq).sum(axis=(1, 2, 3)) / (sq.shape[1] * cell_weight.sum(axis=(1, 2, 3)))
        else:
            per_sample = sq.mean(axis=(1, 2, 3))
        if not self.weighted:
            return per_sample.mean()
        w = ops.gather(self.weights, t, 0)
        return (w * per_sample).mean()

    def construct(self, *inputs):
        """The columns above, optionally followed by a per-latent-cell loss weight [B, 1, h, w]."""
        n = 6 if self.cached else 5
        cell_weight = inputs[n] if len(inputs) > n else None
        if self.cached:
            mean, logvar, ids, t, noise, post = inputs[:n]
            z = ops.stop_gradient((mean + ops.exp(0.5 * logvar) * post) * self.scale_factor)
        else:
            x, ids, t, noise, post = inputs[:n]
            z = self._latent(x, post)
        return self.diffusion_loss(z, ids, t, noise, cell_weight)


def set_trainable(cell: nn.Cell, flag: bool):
    for p in cell.get_parameters():
        p.requires_grad = bool(flag)


# --------------------------------------------------------------------------------------- trainer
class _ParamView:
    """What ``Trainer.__init__`` reads of its model to build the EMA: the EMA'd parameters."""

    def __init__(self, params):
        self._params = list(params)

    def trainable_params(self):
        return self._params


class ModelTrainer(Trainer):
    """The shared Trainer, with EMA optional (``ema_decay <= 0``: none, no memory spent) and the
    exports (``<export_name>.ckpt``, ``<export_name>_ema.ckpt``) written as complete model files
    under ``model``'s names (frozen parts included).

    ``lora_base`` (LoRA training: only the LoRA weights train): the exports are LoRA-only files
    (``save_lora``: the LoRA tensors + rank / alpha / targets and the sha256 of the base checkpoint
    ``lora_base``, "" when trained from random weights), and the training checkpoints hold the
    trainable tensors and the optimizer state only (the frozen base comes from the base checkpoint
    again on ``--resume``)."""

    def __init__(self, model: nn.Cell, loss_net, optimizer, source, opts: TrainOptions, out_dir, runtime=None,
                 images_per_step=None, use_ema: bool = False, on_export=None, export_name: str = "model",
                 lora_base: str | None = None):
        ema_params = [p for p in model.trainable_params()] if use_ema else []
        self.model = model
        self.lora_base = lora_base
        self._frozen = set()
        if lora_base is not None:
            from ..nn.dropout import RNG_STEP_NAME

            self._frozen = {p.name for p in model.get_parameters() if not p.requires_grad} - {RNG_STEP_NAME}
        super().__init__(_ParamView(ema_params), loss_net, optimizer, source, opts, out_dir, runtime,
                         images_per_step)
        self.model = model
        self.use_ema = bool(use_ema)
        if not use_ema:
            self.ema = NoEMA()
        self.on_export = on_export
        self.export_name = export_name
        self._base_sha = None

    def _state_params(self):
        params = super()._state_params()
        return [p for p in params if p.name not in self._frozen] if self._frozen else params

    def _save_lora(self, path: Path, values: dict | None = None) -> Path:
        """The LoRA-only file of the model (with ``values`` {name: array} in place of the current
        LoRA weights, e.g. the EMA's, restored afterwards)."""
        from ..checkpoint.io import file_sha256
        from .lora import save_lora

        if self._base_sha is None:
            self._base_sha = file_sha256(self.lora_base, 64) if self.lora_base else ""
        params = {p.name: p for p in self.model.get_parameters()}
        saved = {}
        try:
            for name, v in (values or {}).items():
                if name in params:
                    saved[name] = params[name].asnumpy().copy()
                    params[name].set_data(Tensor(np.asarray(v, dtype=saved[name].dtype)))
            return save_lora(self.model, path, base_checkpoint=self.lora_base or None,
                             base_sha256=self._base_sha or None)
        finally:
            for name, v in saved.items():
                params[name].set_data(Tensor(v))

    def run_file_names(self) -> tuple:
        return (*super().run_file_names(), f"{self.export_name}.ckpt", f"{self.export_name}_ema.ckpt")

    def export(self) -> dict:
        if self.rank != 0:
            return {}
        if self.lora_base is not None:
            paths = {"lora": self._save_lora(self.out_dir / f"{self.export_name}.ckpt")}
            if self.use_ema:
                paths["lora_ema"] = self._save_lora(self.out_dir / f"{self.export_name}_ema.ckpt",
                                                    self.ema.model_state())
            if self.on_export is not None:
                self.on_export(self)
            return paths
        full = model_tensors(self.model)
        extra = {"meta.step": int(self.step)}
        paths = {"model": save_atomic(full, self.out_dir / f"{self.export_name}.ckpt", extra=extra)}
        if self.use_ema:
            ema = dict(full)
            ema.update(self.ema.model_tensors())
            paths["ema"] = save_atomic(ema, self.out_dir / f"{self.export_name}_ema.ckpt", extra=extra)
        if self.on_export is not None:
            self.on_export(self)
        return paths


def _model_dict(cfg, unet_dropout: float = 0.0) -> dict:
    m = to_plain(cfg.model)
    m["unet"]["dropout"] = float(unet_dropout)
    return m


def load_vae_weights(vae: nn.Cell, path: str | Path):
    """Load ``first_stage_model.*`` tensors (e.g. ``scripts/train_vae.py``'s ``vae.ckpt``) into
    ``vae`` (an LDM's ``first_stage_model``, parameters named ``first_stage_model.*``), strictly
    (the never-used VAE tensors may be absent)."""
    from ..checkpoint.io import load_strict
    from .checkpoint import UNUSED_VAE_PARAMS

    state = {k: v for k, v in read_checkpoint(path, "VAE checkpoint").items() if k.startswith(PREFIX_VAE)}
    if not state:
        raise CheckpointError(f"{path} holds no first_stage_model.* tensors (expected the vae.ckpt written "
                              f"by scripts/train_vae.py or a full LDM checkpoint)")
    return load_strict(list(vae.get_parameters()), state, allow_missing=UNUSED_VAE_PARAMS,
                       path=str(path))


def resolve_train_vocab(cfg) -> Path:
    from ..text.factory import resolve_vocab

    try:
        return resolve_vocab(cfg, cfg.init.checkpoint, cfg.init.vocab)
    except FileNotFoundError as exc:
        raise FileNotFoundError(str(exc).replace("pass --vocab PATH", "set init.vocab=PATH")) from None


def inference_config(cfg) -> dict:
    """The LDMPipeline config (ldm_config_defaults schema) of a trained model."""
    samp = to_plain(cfg.sampling)
    # the training size, rounded up to the multiple the model's sizes need (LDMPipeline.check_size)
    from .model import size_multiple

    m = size_multiple(cfg.model)
    samp["H"] = samp["W"] = -(-int(cfg.data.image_size) // m) * m
    model, name = to_plain(cfg.model), "model.ckpt"
    if lora_enabled(cfg):  # a LoRA run's model.yaml describes its base model (apply lora.ckpt with --lora)
        model["unet"]["enable_lora"] = False
        name = Path(str(cfg.init.checkpoint)).name if cfg.init.checkpoint else name
    return {"model": model, "tokenizer": to_plain(cfg.tokenizer),
            "checkpoint": {"name": name, "url": ""}, "sampling": samp}


class _VAEMoments(nn.Cell):
    def __init__(self, vae):
        super().__init__(auto_prefix=False)
        self.vae = vae

    def construct(self, x):
        return self.vae.encode_moments(x)


def compute_latent_cache(vae, data: CSVImageText, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(mean, logvar) of every image (center crop) with the frozen VAE."""
    enc = _VAEMoments(vae)
    enc.set_train(False)
    means, logvars = [], []
    for s in range(0, len(data), batch):
        x = np.stack([data.image(i) for i in range(s, min(s + batch, len(data)))])
        m, lv = enc(Tensor(x))
        means.append(m.asnumpy())
        logvars.append(lv.asnumpy())
    return np.concatenate(means), np.concatenate(logvars)


def check_ldm_train_config(cfg, runtime, resume: str | None = None, overwrite: bool = False) -> int:
    """The cheap checks of an LDM training config, before any data is read or network built: every
    numeric ``train:`` key in range, the run folder (``--resume`` / ``--overwrite``), the text-encoder
    schedule, the initial checkpoints exist. Returns ``train.text_encoder_start_step``."""
    from ..train.run_dir import check_run_dir
    from ..train.validate import ZERO_MEANS_DEFAULT, check_number, check_train_section

    t, d = cfg.train, cfg.data
    check_train_section(t, zero_ok=ZERO_MEANS_DEFAULT)  # every numeric key in its range, first
    check_number(d.caption_dropout, "data.caption_dropout", 0, 1)
    check_run_dir(Path(t.output_dir).expanduser(), resume, overwrite, rank=runtime.rank)  # before any work
    if not 0.0 <= float(t.unet_dropout) < 1.0:
        raise ValueError(f"train.unet_dropout must be in [0, 1), got {t.unet_dropout}")
    te_start = int(t.text_encoder_start_step)
    if te_start < 0:
        raise ValueError(f"train.text_encoder_start_step must be >= 0 (0 = train the text encoder from the "
                         f"start), got {te_start}")
    if te_start > 0 and not t.train_text_encoder:
        raise ValueError(f"train.text_encoder_start_step={te_start} needs train.train_text_encoder=true "
                         f"(or set it to 0 to keep the encoder frozen throughout)")
    if lora_enabled(cfg):
        from ..nn.lora import check_rank_alpha

        u = cfg.model.unet
        check_rank_alpha(u.lora_rank, u.lora_alpha, "model.unet.lora_rank / lora_alpha: LoRA")
        if te_start > 0:
            raise ValueError(f"train.text_encoder_start_step={te_start} with model.unet.enable_lora: LoRA trains only "
                             f"the LoRA weights (the text encoder stays frozen); set it to 0")
    check_te_start(te_start, int(t.steps), f"train.steps={t.steps}")  # before the model build when steps are given
    # cheap checks first: a missing file should not cost a full model build
    for key in ("checkpoint", "vae_checkpoint"):
        path = cfg.init[key]
        if path and not Path(str(path)).expanduser().is_file():
            hint = (f" (the released model: {ldm_config_defaults()['checkpoint']['url']})"
                    if key == "checkpoint" else "")
            raise CheckpointError(f"init.{key} not found: {path}{hint}; set init.{key}=PATH or null to "
                                  f"start from random weights")
    down = 2 ** (len(cfg.model.vae.ch_mult) - 1)
    unet_down = 2 ** (len(cfg.model.unet.channel_mult) - 1)
    if int(d.image_size) % (down * unet_down):
        raise DataError(f"data.image_size={d.image_size} must be divisible by {down * unet_down} (VAE "
                        f"downsampling {down} x UNet downsampling {unet_down})")
    return te_start


def lora_enabled(cfg) -> bool:
    """LoRA training (``model.unet.enable_lora``, the original's key): only the LoRA weights train."""
    return bool(cfg.model.unet.get("enable_lora", False))


def trains_text_encoder(cfg) -> bool:
    return bool(cfg.train.train_text_encoder) and not lora_enabled(cfg)


def check_te_start(te_start: int, total: int, what: str):
    check_delay_start("train.text_encoder_start_step", te_start, total, what,
                      "the encoder would never train; lower it, or set train.train_text_encoder=false")


def latent_shape_of(cfg) -> tuple[int, int, int]:
    down = 2 ** (len(cfg.model.vae.ch_mult) - 1)
    return (int(cfg.model.vae.embed_dim), int(cfg.data.image_size) // down, int(cfg.data.image_size) // down)


def build_train_model(cfg, runtime):
    """The LatentDiffusion network to train: built (same initialisation on every rank), the
    initial checkpoints loaded, compute dtype applied, the VAE frozen and the text encoder
    trainable as ``train.train_text_encoder`` says; with ``model.unet.enable_lora`` (LoRA injected by
    the UNet build, the base checkpoint loads around it) only the LoRA weights are trainable."""
    t = cfg.train
    ms.set_seed(int(t.seed))  # identical initialisation on every rank
    ldm = build_ldm(_model_dict(cfg, float(t.unet_dropout)))
    if cfg.init.checkpoint:
        load_ldm_checkpoint(ldm, cfg.init.checkpoint)
    if cfg.init.vae_checkpoint:
        load_vae_weights(ldm.first_stage_model, cfg.init.vae_checkpoint)
    apply_compute_dtype(ldm, runtime.precision.ms_dtype())
    set_trainable(ldm.first_stage_model, False)   # the VAE is always frozen
    set_trainable(ldm.cond_stage_model, bool(t.train_text_encoder))
    ldm.first_stage_model.set_train(False)
    if lora_enabled(cfg):
        from ..nn.lora import mark_only_lora_trainable

        mark_only_lora_trainable(ldm)  # the original's freeze_delta(model, 'lora')
    return ldm


def finish_ldm_trainer(cfg, runtime, ldm, loss_net, source, vocab, total: int, steps_per_epoch: int,
                       te_start: int, resume=None, overwrite: bool = False, progress: bool = True,
                       what: str = "", export_name: str = "model", pivot=None):
    """Optimizer (over ``ldm.trainable_params()``), schedule, ModelTrainer with the exports
    (``<export_name>.ckpt`` + model.yaml + vocabulary), run folder taken (``resume`` /
    ``overwrite``), config saved and one summary line printed (``what`` describes the data).
    ``pivot=(names, steps, lr)``: pivotal tuning, the parameters named train alone at ``lr`` for the
    first ``steps`` updates while every other one waits, then all on the common schedule (the caller
    checks ``steps`` < ``total`` before it writes anything: ``build_dreambooth_trainer``)."""
    t = cfg.train
    decay = int(t.decay_steps) if int(t.decay_steps) > 0 else total
    check_te_start(te_start, total, f"the {total} training steps")

    def schedule_cell():
        return WarmupCosineLR(t.start_learning_rate, t.end_learning_rate, int(t.warmup_steps), decay)

    lr = schedule_cell()
    params = ldm.trainable_params()
    delayed = []
    pivot_steps = 0
    if pivot is not None:
        pivot_names, pivot_steps, pivot_lr = pivot[0], int(pivot[1]), float(pivot[2])   # checked by the caller
        delayed.append((set(pivot_names), PivotLR(schedule_cell(), pivot_steps, pivot_lr)))
        lr = DelayedLR(schedule_cell(), pivot_steps)
    if te_start > 0 or pivot_steps > 0:
        te_names = {p.name for p in ldm.cond_stage_model.trainable_params()}
        # the same schedule, its own cell
        delayed.append((te_names, DelayedLR(schedule_cell(), max(te_start, pivot_steps))))
    optimizer = build_optimizer(params, t, lr, delayed or None)
    opts = make_train_options(t, total, steps_per_epoch, progress)
    out = Path(t.output_dir).expanduser()

    lora = lora_enabled(cfg)

    def on_export(trainer):
        save_config(inference_config(cfg), out / "model.yaml")
        dst = out / str(cfg.tokenizer.vocab_file)
        if dst.resolve() != Path(vocab).resolve():
            shutil.copyfile(vocab, dst)

    trainer = ModelTrainer(ldm, loss_net, optimizer, source, opts, out, runtime,
                           images_per_step=source.global_batch, use_ema=float(t.ema_decay) > 0,
                           on_export=on_export, export_name="lora" if lora else export_name,
                           lora_base=(str(cfg.init.checkpoint or "") if lora else None))
    trainer.start(resume, overwrite)
    if runtime.rank == 0:
        save_config(cfg, out / "config.yaml")
        te_state = ("frozen" if not trains_text_encoder(cfg) else
                    f"trained from step {te_start}" if te_start else "trained")
        n_train = sum(int(np.prod(p.shape)) for p in params)
        others = [p.name.rsplit(".", 1)[-1] for p in params if ".tk_delta_lora_" not in p.name]  # e.g. token_rows
        frozen = (f" (LoRA {'and ' + ', '.join(others) if others else 'only'}: UNet, text encoder and VAE frozen), "
                  if lora else f" (text encoder {te_state}, VAE frozen), ")
        print(f"[mind_diffusion] LDM: {what}, {len(params)} trainable tensors / {n_train:,} parameters" + frozen
              + f"{total} steps, global batch {source.global_batch} ({source.describe_global_batch()}) "
              f"-> {out}", flush=True)
    return trainer


def build_ldm_trainer(cfg, runtime, resume: str | None = None, progress: bool = True, overwrite: bool = False,
                      strict: bool = False):
    """(trainer, make_dataset) ready for ``trainer.fit(make_dataset)``. A ``train.output_dir`` that
    holds another run needs ``resume`` or ``overwrite`` (``train.run_dir``). Every image is read
    once before step 1: unreadable ones are skipped and counted, or refused with ``strict``."""
    from ..text.factory import build_tokenizer

    t, d = cfg.train, cfg.data
    te_start = check_ldm_train_config(cfg, runtime, resume, overwrite)
    if d.kind != "csv":
        raise DataError(f"data.kind must be 'csv' (folder of *.csv files with '{IMAGE_COLUMN}' and "
                        f"'{TEXT_COLUMN}' columns), got {d.kind!r}")
    vocab = resolve_train_vocab(cfg)
    tokenizer = build_tokenizer(cfg.tokenizer, vocab, int(cfg.model.text_encoder.context_length))
    data = CSVImageText(d.path, int(d.image_size), bool(d.filter_small_size), int(d.image_filter_size),
                        verify="strict" if strict else "skip")
    ldm = build_train_model(cfg, runtime)

    latents = None
    if d.cache_latents:
        if d.random_crop:
            raise ValueError("data.cache_latents needs data.random_crop=false (a cache holds one crop per image)")
        latents = compute_latent_cache(ldm.first_stage_model, data)
    schedule = schedule_from_config(cfg.model.schedule)
    source = LDMBatches(data, tokenizer, int(t.batch_size), schedule.num_timesteps, latent_shape_of(cfg),
                        seed=int(t.seed), rank=runtime.rank, group_size=runtime.group_size,
                        random_crop=bool(d.random_crop), caption_dropout=float(d.caption_dropout),
                        shuffle=bool(d.shuffle), latents=latents, accum_steps=int(t.grad_accum_steps))
    total = resolve_total_steps(t, source.steps_per_epoch)
    loss_net = LatentDiffusionLoss(ldm, schedule.alphas_cumprod, trains_text_encoder(cfg),
                                   bool(t.schedule_fp16), cached=latents is not None,
                                   loss_weighting=str(t.loss_weighting))
    what = (f"{len(data)} image-text pairs"
            + (f" ({data.dropped} dropped by the size filter)" if data.dropped else ""))
    trainer = finish_ldm_trainer(cfg, runtime, ldm, loss_net, source, vocab, total, source.steps_per_epoch,
                                 te_start, resume, overwrite, progress, what)
    return trainer, (lambda start, end: make_batch_dataset(source, start, end))


def train_ldm(cfg, runtime, resume: str | None = None, progress: bool = True, overwrite: bool = False,
              strict: bool = False) -> dict:
    trainer, make = build_ldm_trainer(cfg, runtime, resume, progress, overwrite=overwrite, strict=strict)
    return trainer.fit(make)
