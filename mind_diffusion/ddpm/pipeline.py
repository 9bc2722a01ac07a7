"""DDPM sampling pipeline: class labels -> images, with any core sampler.

    pipe = DDPMPipeline.from_pretrained("models/ddpm_digits16")
    images = pipe(class_labels=[3, 3, 7], num_inference_steps=1000, sampler="ddpm", seed=0)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mindspore import Tensor

from ..checkpoint.io import CheckpointError, file_sha256, load_into
from ..config import load_config
from ..diffusion.samplers import get_sampler
from ..nn.layers import apply_compute_dtype
from ..diffusion.schedule import DiffusionSchedule, schedule_from_config
from ..utils.images import to_uint8
from .config import ddpm_config_defaults
from .unet import build_ddpm_unet

MODEL_FILES = ("model_ema.ckpt", "model.ckpt")


def resolve_model(path: str | Path, config: str | Path | None = None) -> tuple[Path, Path]:
    """A model folder (config.yaml + model_ema.ckpt) or a .ckpt plus --config."""
    p = Path(path).expanduser()
    if p.is_dir():
        cfg = Path(config) if config else p / "config.yaml"
        for name in MODEL_FILES:
            if (p / name).is_file():
                ckpt = p / name
                break
        else:
            raise CheckpointError(f"no model weights in {p}: expected one of {', '.join(MODEL_FILES)} "
                                  f"(a training run folder or models/<name>/)")
    elif p.is_file():
        ckpt = p
        cfg = Path(config) if config else p.parent / "config.yaml"
    else:
        raise CheckpointError(f"model not found: {p} (pass a model folder such as models/ddpm_digits16 "
                              f"or a .ckpt with --config)")
    if not cfg.is_file():
        raise CheckpointError(f"model config not found: {cfg} (pass --config with the YAML it was trained with)")
    return ckpt, cfg


class DDPMPipeline:
    def __init__(self, net, schedule: DiffusionSchedule, cfg, ckpt_path: str | None = None):
        self.net = net
        self.net.set_train(False)
        self.schedule = schedule
        self.cfg = cfg
        self.image_size = int(cfg.model.image_size)
        self.channels = int(cfg.model.img_channels)
        self.num_classes = cfg.model.num_classes
        self.ckpt_path = ckpt_path
        self.ckpt_hash = file_sha256(ckpt_path) if ckpt_path else None

    @classmethod
    def from_pretrained(cls, path: str | Path, config: str | Path | None = None,
                        compute_dtype=None) -> "DDPMPipeline":
        """``compute_dtype``: e.g. ``runtime.precision.ms_dtype()`` (fp16 on Ascend/GPU)."""
        ckpt, cfg_path = resolve_model(path, config)
        cfg = load_config(cfg_path, (), ddpm_config_defaults())
        net = build_ddpm_unet(cfg.model)
        if compute_dtype is not None:
            apply_compute_dtype(net, compute_dtype)
        load_into(net, ckpt, what="DDPM weights")
        return cls(net, schedule_from_config(cfg.diffusion), cfg, str(ckpt))

    def model_fn(self, labels: np.ndarray | None) -> Callable:
        y = Tensor(labels.astype(np.int32)) if labels is not None else None

        def fn(x, t):
            xt = Tensor(np.ascontiguousarray(x, dtype=np.float32))
            tt = Tensor(np.asarray(t, dtype=np.float32))
            out = self.net(xt, tt, y) if y is not None else self.net(xt, tt)
            return out.asnumpy().astype(np.float32)

        return fn

    def check_labels(self, class_labels: Sequence[int] | None) -> np.ndarray | None:
        if self.num_classes is None:
            if class_labels is not None:
                raise ValueError("this DDPM model is unconditional: do not pass class labels")
            return None
        labels = np.asarray(list(class_labels), dtype=np.int64)
        bad = labels[(labels < 0) | (labels >= self.num_classes)]
        if bad.size:
            raise ValueError(f"unknown class id {int(bad[0])}: this model has classes 0..{self.num_classes - 1}")
        return labels

    def __call__(self, class_labels: Sequence[int] | None = None, num_images: int | None = None,
                 num_inference_steps: int | str | None = None, sampler: str | None = None, seed: int = 0,
                 batch_size: int = 64, progress: bool = True, callback=None, output_type: str = "uint8",
                 **sampler_options):
        """Generate one image per class label (or ``num_images`` for unconditional models).

        Returns (N,H,W,C) uint8 (``output_type="uint8"``) or (N,C,H,W) floats in [-1,1] ("np").
        Sampler defaults come from the model config (``sample:`` section).
        """
        s = self.cfg.sample
        sampler = sampler or s.sampler
        steps = num_inference_steps if num_inference_steps is not None else s.num_steps
        labels = self.check_labels(class_labels)
        n = len(labels) if labels is not None else int(num_images or 1)
        if n < 1:
            raise ValueError("nothing to sample: pass at least one class label / num_images >= 1")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        fn = get_sampler(sampler)
        opts = dict(sampler_options)
        if sampler == "ddpm":
            opts.setdefault("variance_type", s.variance)
        if sampler in ("ddpm", "ddim"):
            opts.setdefault("clip_denoised", bool(s.clip_denoised))
        rng = np.random.default_rng(seed)
        shape = (self.channels, self.image_size, self.image_size)
        x_T = rng.standard_normal((n, *shape)).astype(np.float32)  # drawn on the host: device independent
        outs = []
        for start in range(0, n, batch_size):
            sl = slice(start, min(start + batch_size, n))
            lab = labels[sl] if labels is not None else None
            outs.append(fn(self.model_fn(lab), x_T[sl], self.schedule, steps, rng=rng, progress=progress,
                           callback=callback, **opts))
        x = np.concatenate(outs)
        return to_uint8(x) if output_type == "uint8" else x

    def settings(self, sampler=None, steps=None, seed=0) -> dict:
        s = self.cfg.sample
        return {"model": "ddpm", "sampler": sampler or s.sampler,
                "steps": steps if steps is not None else s.num_steps, "seed": seed,
                "size": f"{self.image_size}x{self.image_size}", "checkpoint": self.ckpt_path,
                "checkpoint_sha256": self.ckpt_hash}
