"""DDPM sampling pipeline: class labels -> images, with any core sampler.

    pipe = DDPMPipeline.from_pretrained("models/ddpm_digits16")
    images = pipe([3, 3, 7], num_inference_steps=1000, sampler="ddpm", seed=0).images
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mindspore import Tensor

from .. import timings
from ..checkpoint.io import CheckpointError, file_sha256, load_into
from ..config import load_config
from ..diffusion.samplers import get_sampler
from ..nn.layers import apply_compute_dtype
from ..diffusion.schedule import DiffusionSchedule, schedule_from_config
from ..utils.images import to_uint8
from ..utils.output import DiffusionOutput
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


def check_ddpm_config(cfg_path: str | Path):
    """Refuse another family's config (LDM / GLIDE declare ``model.family``) with the script that
    runs it, instead of an unknown-key error."""
    from ..config import read_yaml

    model = read_yaml(cfg_path).get("model", None)
    family = model.get("family", None) if hasattr(model, "get") else None
    if family is None:
        return
    script = "scripts/glide_txt2img.py" if "glide" in str(family) else "scripts/txt2img.py"
    raise CheckpointError(f"{cfg_path} is a text-to-image model (model.family: {family}), not a "
                          f"class-conditional DDPM: use {script}")


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
        check_ddpm_config(cfg_path)
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
            out = timings.call(self.net, xt, tt, y) if y is not None else timings.call(self.net, xt, tt)
            return out.asnumpy().astype(np.float32)

        return fn

    @staticmethod
    def resolve_labels(cfg, class_labels) -> np.ndarray | None:
        num_classes = cfg.model.num_classes
        if num_classes is None:
            if class_labels is not None:
                raise ValueError("this DDPM model is unconditional: do not pass class labels")
            return None
        if class_labels is None:
            raise ValueError(f"this DDPM model is class-conditional: pass class labels "
                             f"(0..{num_classes - 1})")
        if isinstance(class_labels, (int, np.integer)) and not isinstance(class_labels, bool):
            class_labels = [class_labels]
        labels = np.asarray(list(class_labels), dtype=np.int64)
        if labels.size == 0:
            raise ValueError("nothing to sample: pass at least one class label")
        bad = labels[(labels < 0) | (labels >= num_classes)]
        if bad.size:
            raise ValueError(f"unknown class id {int(bad[0])}: this model has classes 0..{num_classes - 1}")
        return labels

    @classmethod
    def check_inputs(cls, cfg, class_labels=None, *, num_images_per_prompt=None,
                     num_inference_steps=None, sampler=None, seed=None, height=None, width=None,
                     guidance_scale=None, negative_prompt=None, callback=None, batch_size=64,
                     output_type="uint8") -> dict:
        """Every input checked, every default resolved from the config's ``sampling:`` section
        (the one place they are). The class labels play the prompt's part: image ``j`` of
        label ``i`` is the ``i * num_images_per_prompt + j``-th of the batch. DDPM has no text
        and no classifier-free guidance: ``negative_prompt`` and a ``guidance_scale`` other than
        1 are refused."""
        s = cfg.sampling
        labels = cls.resolve_labels(cfg, class_labels)
        per = 1 if num_images_per_prompt is None else num_images_per_prompt
        if isinstance(per, bool) or not isinstance(per, (int, np.integer)) or per < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {per!r}")
        if negative_prompt:
            raise ValueError("DDPM is conditioned on class labels, not text: it has no negative prompt")
        if guidance_scale is not None and guidance_scale != 1:
            raise ValueError("this DDPM model has no classifier-free guidance: leave guidance_scale unset")
        size = int(cfg.model.image_size)
        for name, v in (("height", height), ("width", width)):
            if v is not None and v != size:
                raise ValueError(f"{name} {v!r}: this DDPM model makes {size}x{size} images")
        sampler = str(s.sampler) if sampler is None else sampler
        get_sampler(sampler)  # a clear error for an unknown name
        steps = s.num_inference_steps if num_inference_steps is None else num_inference_steps
        if isinstance(steps, bool) or (isinstance(steps, (int, np.integer)) and steps < 1):
            raise ValueError(f"sampling steps must be an integer >= 1, got {steps!r}")
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if callback is not None and not callable(callback):
            raise ValueError("callback must be callable(step_index, t, x, pred_x0)")
        if output_type not in ("uint8", "np"):
            raise ValueError(f"output_type must be 'uint8' or 'np', got {output_type!r}")
        labels = np.repeat(labels, per) if labels is not None else None
        n = len(labels) if labels is not None else int(per)
        return {"labels": labels, "n": n, "num_images_per_prompt": int(per),
                "num_inference_steps": steps, "sampler": sampler, "seed": int(seed),
                "batch_size": int(batch_size)}

    def __call__(self, class_labels: Sequence[int] | int | None = None, *,
                 num_images_per_prompt: int | None = None,
                 num_inference_steps: int | str | None = None, sampler: str | None = None,
                 seed: int | None = None, height: int | None = None, width: int | None = None,
                 guidance_scale: float | None = None, negative_prompt: str | None = None,
                 batch_size: int = 64, progress: bool = True, callback=None,
                 output_type: str = "uint8", num_images: int | None = None,
                 on_batch: Callable | None = None, **sampler_options) -> DiffusionOutput:
        """``num_images_per_prompt`` images per class label (``num_images`` is the older name;
        for an unconditional model, that many images).

        Returns a :class:`~mind_diffusion.utils.output.DiffusionOutput` whose ``.images`` are
        (N,H,W,C) uint8 (``output_type="uint8"``) or (N,C,H,W) floats in [-1,1] ("np").
        Sampler defaults come from the model config (``sampling:`` section). The start noise of
        the whole batch comes from one generator seeded with ``seed`` (drawn on the host).
        ``on_batch(start, images)``: called as each ``batch_size`` batch finishes, with its
        images (in ``output_type``) and the index of its first image, e.g. to write them at once;
        the images are the same as a call without it.
        """
        if on_batch is not None and not callable(on_batch):
            raise ValueError("on_batch must be callable(start_index, images)")
        if num_images is not None:
            if num_images_per_prompt is not None:
                raise ValueError("pass num_images_per_prompt or its older name num_images, not both")
            num_images_per_prompt = num_images
        a = self.check_inputs(self.cfg, class_labels, num_images_per_prompt=num_images_per_prompt,
                              num_inference_steps=num_inference_steps, sampler=sampler, seed=seed,
                              height=height, width=width, guidance_scale=guidance_scale,
                              negative_prompt=negative_prompt, callback=callback,
                              batch_size=batch_size, output_type=output_type)
        s = self.cfg.sampling
        labels, n, sampler = a["labels"], a["n"], a["sampler"]
        fn = get_sampler(sampler)
        opts = dict(sampler_options)
        if sampler == "ddpm":
            opts.setdefault("variance_type", s.variance)
        if sampler in ("ddpm", "ddim"):
            opts.setdefault("clip_denoised", bool(s.clip_denoised))
        rng = np.random.default_rng(a["seed"])
        shape = (self.channels, self.image_size, self.image_size)
        x_T = rng.standard_normal((n, *shape)).astype(np.float32)  # drawn on the host: device independent
        outs = []
        for start in range(0, n, a["batch_size"]):
            sl = slice(start, min(start + a["batch_size"], n))
            lab = labels[sl] if labels is not None else None
            x = fn(self.model_fn(lab), x_T[sl], self.schedule, a["num_inference_steps"],
                   rng=rng, progress=progress, callback=callback, **opts)
            outs.append(to_uint8(x) if output_type == "uint8" else x)
            if on_batch is not None:
                on_batch(start, outs[-1])
        images = np.concatenate(outs)
        settings = {k: a[k] for k in ("num_images_per_prompt", "num_inference_steps", "sampler",
                                      "seed")}
        return DiffusionOutput({self.image_size: images},
                               prompts=list(labels) if labels is not None else [None] * n,
                               seeds=[a["seed"]] * n, settings=settings)

    def settings(self, sampler=None, steps=None, seed=0) -> dict:
        s = self.cfg.sampling
        return {"model": "ddpm", "sampler": sampler or s.sampler,
                "steps": steps if steps is not None else s.num_inference_steps, "seed": seed,
                "size": f"{self.image_size}x{self.image_size}", "checkpoint": self.ckpt_path,
                "checkpoint_sha256": self.ckpt_hash}
