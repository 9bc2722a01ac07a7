"""Training of GLIDE's third stage, the x4 SRGAN generator (256 -> 1024), on the shapes world,
and its evaluation against bicubic upsampling.

Networks and losses (SRGAN, Ledig et al. 2017, with L1 in place of the VGG content loss):

* generator: :class:`~mind_diffusion.glide.srgan.SRGANGenerator` (``model:`` section, the keys of
  ``srgan_defaults()``), trained with BatchNorm batch statistics, exported with its moving ones;
  the conv biases that a BatchNorm follows are not trained (:func:`trained_generator_params`);
* :class:`SRGANDiscriminator`: conv3x3-LeakyReLU(0.2), then ``num_blocks`` conv3x3(no bias)-BN-LeakyReLU
  blocks whose strides alternate 2, 1, 2, 1, ... and whose width doubles at every stride-1 block
  (``channels``, 2x, 2x, 4x, 4x, ...), global average pooling, Dense(``hidden``)-LeakyReLU-Dense(1)
  -> one logit per image;
* generator loss ``L1(G(lr), hr) + adv_weight * BCE-with-logits(D(G(lr)), 1)``; the first
  ``train.warmup_steps`` steps use ``adv_weight = 0`` (L1 only; D still trains);
* discriminator loss ``BCE(D(hr), 1) + BCE(D(stop_gradient(G(lr))), 0)``.

One step (:class:`SRGANTrainStep`, one compiled cell, the same numbers in GRAPH_MODE and
PYNATIVE_MODE): the generator update (Adam, ``train.lr``), then the discriminator update
(Adam, ``train.lr_d``) on the generator output of that same forward pass (G before its update,
detached), so G runs forward once per step. Both learning rates are constant up to step
``train.lr_decay_start`` and then fall linearly to 0 at ``train.steps`` (:func:`lr_factor`; 0 = no
decay).

Data (:class:`SRPatchSource`): ``data.num_scenes`` scenes of the world's train split rendered at
``data.hr_size`` (1024) with anti-aliasing; the LR image is the whole render downsampled by the
upscale factor with PIL's BICUBIC filter (``data.downsample='bicubic'``: PIL widens the cubic
kernel by the factor, so it is an anti-aliased, smooth-edged reduction, like the SR stage's
256 px output) or a box average (``'area'``). A training pair is an aligned crop: an LR patch of
``hr_patch / factor`` px at (y, x) and the HR patch of ``hr_patch`` px at (factor*y, factor*x);
with probability ``data.edge_crop_prob`` the crop is centred on an edge pixel of the LR image
(most of a scene is flat background). Every random choice of step ``s`` comes from
``numpy.random.default_rng([train.seed, s])`` on the host, so a resumed run sees the same batches.

Run folder (``train.output_dir``, guarded by :mod:`mind_diffusion.train.run_dir`)::

    config.yaml, metrics.csv (step, g_loss, l1, adv, d_loss, d_real, d_fake, time_s), loss.png
    checkpoints/step_0000200.ckpt   G, D, both Adam states (+ meta.train_step, meta.seed)
    srgan.ckpt, srgan.yaml          the generator in the official bare layout (srgan.ckpt names)
                                    and its ``model:`` config, for build_srgan + load_glide_checkpoint
"""
from __future__ import annotations

import csv
import math
import os
import re
import time
from pathlib import Path

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from ..checkpoint.io import CheckpointError, load_strict, save_atomic
from ..config import ConfigError, save_config, to_plain
from ..nn.layers import conv2d, dense
from ..shapes.editing import psnr
from ..shapes.world import ShapesWorld
from ..train import run_dir
from ..train.validate import check_number, check_train_section
from .checkpoint import OFFICIAL_FILES, save_glide_checkpoint
from .config import srgan_defaults
from .model import build_srgan

__all__ = [
    "DOWNSAMPLE",
    "SRGANDiscriminator",
    "SRGANTrainStep",
    "SRGANTrainer",
    "SRPatchSource",
    "bce_with_logits",
    "bicubic_upscale",
    "check_srgan_train_config",
    "crop_panel",
    "downscale",
    "edge_mask",
    "edge_sharpness",
    "eval_table",
    "evaluate_srgan",
    "gradient_magnitude",
    "load_exported_srgan",
    "lr_factor",
    "srgan_train_config_defaults",
    "summarize",
    "train_srgan",
    "trained_generator_params",
    "upscale_with_generator",
    "write_eval",
]

DOWNSAMPLE = ("bicubic", "area")
EXPORT_NAME = OFFICIAL_FILES["srgan"]
EXPORT_CONFIG = "srgan.yaml"
METRIC_COLUMNS = ("step", "g_loss", "l1", "adv", "d_loss", "d_real", "d_fake", "time_s")


# --------------------------------------------------------------------------- config
def srgan_train_config_defaults() -> dict:
    """The schema (and defaults) of an SRGAN training config (configs/glide/shapes-srgan.yaml)."""
    return {
        "model": srgan_defaults(),
        "discriminator": {"channels": 64, "num_blocks": 7, "hidden": 1024},
        "data": {"hr_size": 1024, "num_scenes": 64, "world_seed": 0, "hr_patch": 128,
                 "edge_crop_prob": 0.75, "downsample": "bicubic"},
        "train": {"output_dir": "runs/glide_srgan", "steps": 2000, "batch_size": 8, "lr": 1e-4,
                  "lr_d": 1e-4, "adam_betas": [0.9, 0.999], "adv_weight": 1e-3, "warmup_steps": 0,
                  "lr_decay_start": 0,
                  "log_every": 10, "ckpt_every": 200, "keep_checkpoints": 3, "seed": 0},
        "eval": {"num_scenes": 32, "world_seed": 0},
        # init.generator: start the generator from an srgan.ckpt (the released Taichu-GLIDE file or
        # one this trainer exported; strict: every name and shape of model:), the discriminator and
        # both optimizers fresh; null: random weights. A resumed run ignores it.
        "init": {"generator": None},
    }


def check_srgan_train_config(cfg, resuming: bool = False) -> None:
    """Every value of a loaded config (``load_config(..., srgan_train_config_defaults())``) in
    range, or one ``ConfigError`` line naming the key. ``resuming``: the weights come from the run's
    checkpoint, so ``init.generator`` need not exist any more."""
    t, d, m, disc = cfg["train"], cfg["data"], cfg["model"], cfg["discriminator"]
    check_train_section(t)
    check_number(t["lr_d"], "train.lr_d", 0, None, False)
    check_number(t["lr_decay_start"], "train.lr_decay_start", 0, None, integer=True,
                 hint=" (0 = constant learning rates)")
    check_number(t["adv_weight"], "train.adv_weight", 0, None)
    if not str(t["output_dir"]).strip():
        raise ConfigError("train.output_dir must name a folder, got an empty string")
    factor = m["upscale_factor"]
    check_number(factor, "model.upscale_factor", 2, None, integer=True)
    if int(factor) & (int(factor) - 1):
        raise ConfigError(f"model.upscale_factor must be a power of 2 (Taichu-GLIDE uses 4), got {factor}")
    for key in ("num_blocks", "channels"):
        check_number(m[key], f"model.{key}", 1, None, integer=True)
    for key in ("channels", "num_blocks", "hidden"):
        check_number(disc[key], f"discriminator.{key}", 1, None, integer=True)
    for key in ("num_scenes", "hr_patch"):
        check_number(d[key], f"data.{key}", 1, None, integer=True)
    check_number(d["hr_size"], "data.hr_size", 16, None, integer=True)
    check_number(d["world_seed"], "data.world_seed", 0, None, integer=True)
    check_number(d["edge_crop_prob"], "data.edge_crop_prob", 0, 1)
    if d["downsample"] not in DOWNSAMPLE:
        raise ConfigError(f"data.downsample must be one of {', '.join(DOWNSAMPLE)}, got {d['downsample']!r}")
    for key in ("hr_size", "hr_patch"):
        if int(d[key]) % int(factor):
            raise ConfigError(f"data.{key}={d[key]} must be a multiple of model.upscale_factor={factor}")
    if int(d["hr_patch"]) > int(d["hr_size"]):
        raise ConfigError(f"data.hr_patch={d['hr_patch']} must be <= data.hr_size={d['hr_size']}")
    check_number(cfg["eval"]["num_scenes"], "eval.num_scenes", 1, None, integer=True)
    check_number(cfg["eval"]["world_seed"], "eval.world_seed", 0, None, integer=True)
    init = cfg["init"]["generator"]
    if init is not None and not resuming and not Path(str(init)).expanduser().is_file():
        raise CheckpointError(f"init.generator not found: {init} (an srgan.ckpt: the released Taichu-GLIDE "
                              f"file or a finished run's export; null starts from random weights)")


# --------------------------------------------------------------------------- images
def downscale(hr: np.ndarray, factor: int, method: str = "bicubic") -> np.ndarray:
    """uint8 HxWx3 -> (H/f)x(W/f)x3: PIL BICUBIC (anti-aliased: the cubic kernel widened by f)
    or a box average of f x f blocks ('area')."""
    h, w = hr.shape[:2]
    if method == "area":
        blocks = hr.reshape(h // factor, factor, w // factor, factor, -1).astype(np.float64)
        return np.clip(np.rint(blocks.mean(axis=(1, 3))), 0, 255).astype(np.uint8)
    if method != "bicubic":
        raise ValueError(f"downsample must be one of {DOWNSAMPLE}, got {method!r}")
    from PIL import Image

    return np.asarray(Image.fromarray(hr).resize((w // factor, h // factor), Image.BICUBIC))


def bicubic_upscale(lr: np.ndarray, factor: int) -> np.ndarray:
    """The baseline: PIL BICUBIC (Keys a=-0.5, half-pixel centres) up by ``factor``, uint8."""
    from PIL import Image

    h, w = lr.shape[:2]
    return np.asarray(Image.fromarray(lr).resize((w * factor, h * factor), Image.BICUBIC))


def gradient_magnitude(img: np.ndarray) -> np.ndarray:
    """HxW Sobel gradient magnitude of an HxWx3 image in [0, 255], all channels together:
    sqrt(sum_c gx_c^2 + gy_c^2) (3x3 Sobel, replicated border)."""
    import cv2

    x = img.astype(np.float64)
    gx = cv2.Sobel(x, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REPLICATE)
    gy = cv2.Sobel(x, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REPLICATE)
    g2 = gx * gx + gy * gy
    return np.sqrt(g2.sum(axis=-1) if g2.ndim == 3 else g2)


def edge_mask(img: np.ndarray, rel_threshold: float = 0.2) -> np.ndarray:
    """The edge pixels of an image: Sobel gradient magnitude >= ``rel_threshold`` x its maximum."""
    g = gradient_magnitude(img)
    peak = float(g.max())
    return g >= rel_threshold * peak if peak > 0 else np.zeros(g.shape, bool)


def edge_sharpness(img: np.ndarray, hr: np.ndarray, rel_threshold: float = 0.2) -> float:
    """Edge sharpness of ``img`` relative to the true image ``hr`` (both HxWx3 uint8):

        E = {pixels where the Sobel gradient magnitude of hr >= rel_threshold * its maximum}
        sharpness = mean_E |grad img| / mean_E |grad hr|

    (|grad| = :func:`gradient_magnitude`). 1.0: the edges are as steep as the true render's on
    the true edge pixels; a blurred upscale spreads each step over more pixels and scores lower;
    above 1 means overshoot (ringing). NaN when hr has no edge."""
    mask = edge_mask(hr, rel_threshold)
    if not mask.any():
        return float("nan")
    return float(gradient_magnitude(img)[mask].mean() / gradient_magnitude(hr)[mask].mean())


def _to_net(x_uint8: np.ndarray) -> np.ndarray:
    """NHWC uint8 -> NCHW float32 in [-1, 1]."""
    return (x_uint8.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2)


def _from_net(x: np.ndarray) -> np.ndarray:
    """NCHW in [-1, 1] -> NHWC uint8 (round half to even)."""
    return np.clip(np.rint((x.transpose(0, 2, 3, 1) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def upscale_with_generator(gen, lr: np.ndarray) -> np.ndarray:
    """One HxWx3 uint8 LR image -> the generator's (fH)x(fW)x3 uint8 output (inference mode)."""
    gen.set_train(False)
    out = gen(Tensor(_to_net(lr[None])))
    return _from_net(out.asnumpy())[0]


# --------------------------------------------------------------------------- data
class SRPatchSource:
    """Aligned (LR, HR) patch batches from rendered shapes-world scenes (see the module doc)."""

    def __init__(self, data_cfg, factor: int, seed: int, progress: bool = False):
        self.factor, self.seed = int(factor), int(seed)
        self.hr_patch = int(data_cfg["hr_patch"])
        self.lr_patch = self.hr_patch // self.factor
        self.edge_prob = float(data_cfg["edge_crop_prob"])
        world = ShapesWorld(image_size=int(data_cfg["hr_size"]), seed=int(data_cfg["world_seed"]),
                            antialias=True, split="train")
        n = int(data_cfg["num_scenes"])
        it = range(n)
        if progress:
            from tqdm import tqdm

            it = tqdm(it, desc="render scenes", dynamic_ncols=True)
        self.hr = np.stack([world.sample(i)[0] for i in it])
        self.lr = np.stack([downscale(h, self.factor, str(data_cfg["downsample"])) for h in self.hr])
        # LR top-left corners whose patch is centred on an edge pixel (clipped inside the image)
        lh, lw = self.lr.shape[1:3]
        self.edges = []
        for im in self.lr:
            ys, xs = np.nonzero(edge_mask(im))
            ys = np.clip(ys - self.lr_patch // 2, 0, lh - self.lr_patch)
            xs = np.clip(xs - self.lr_patch // 2, 0, lw - self.lr_patch)
            self.edges.append(np.stack([ys, xs], 1))

    def corners(self, step: int, batch_size: int) -> list[tuple[int, int, int]]:
        """(scene, y, x) LR corners of step ``step``'s batch: a pure function of (seed, step)."""
        rng = np.random.default_rng([self.seed, int(step)])
        lh, lw = self.lr.shape[1:3]
        out = []
        for _ in range(batch_size):
            i = int(rng.integers(len(self.hr)))
            use_edge = rng.random() < self.edge_prob
            k = rng.random()  # drawn in both branches, so the stream does not depend on the data
            y, x = int(rng.integers(lh - self.lr_patch + 1)), int(rng.integers(lw - self.lr_patch + 1))
            if use_edge and len(self.edges[i]):
                y, x = (int(v) for v in self.edges[i][int(k * len(self.edges[i]))])
            out.append((i, y, x))
        return out

    def batch(self, step: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(lr (B,3,p,p), hr (B,3,f p,f p)) float32 in [-1, 1] for step ``step``."""
        f, p = self.factor, self.lr_patch
        lr, hr = [], []
        for i, y, x in self.corners(step, batch_size):
            lr.append(self.lr[i, y:y + p, x:x + p])
            hr.append(self.hr[i, f * y:f * (y + p), f * x:f * (x + p)])
        return _to_net(np.stack(lr)), _to_net(np.stack(hr))


# --------------------------------------------------------------------------- networks
class _DiscBlock(nn.Cell):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv = conv2d(cin, cout, 3, stride=stride, bias=False)  # BatchNorm follows
        self.bn = nn.BatchNorm2d(cout, eps=1e-5)
        self.act = nn.LeakyReLU(0.2)

    def construct(self, x):
        return self.act(self.bn(self.conv(x)))


class SRGANDiscriminator(nn.Cell):
    """SRGAN's VGG-style discriminator (see the module doc): ``construct(x (B,3,H,W)) -> (B,)``
    logits. The paper's is ``channels=64, num_blocks=7, hidden=1024`` (with a flattening dense
    layer where this one pools globally)."""

    def __init__(self, channels: int = 64, num_blocks: int = 7, hidden: int = 1024, in_channels: int = 3):
        super().__init__()
        self.conv_in = conv2d(in_channels, channels, 3)
        self.act = nn.LeakyReLU(0.2)
        blocks, ch = [], channels
        for i in range(num_blocks):
            out = channels * 2 ** ((i + 1) // 2)
            blocks.append(_DiscBlock(ch, out, 2 if i % 2 == 0 else 1))
            ch = out
        self.blocks = nn.SequentialCell(blocks)
        self.fc1 = dense(ch, hidden)
        self.fc2 = dense(hidden, 1)

    def construct(self, x):
        h = self.blocks(self.act(self.conv_in(x)))
        h = h.mean(axis=(2, 3))
        return self.fc2(self.act(self.fc1(h))).squeeze(-1)


def bce_with_logits(logits, target: float):
    """mean over the batch of BCE(sigmoid(logits), target), in the stable form
    max(x, 0) - x t + log(1 + exp(-|x|))."""
    return (ops.relu(logits) - logits * target + ops.log(1.0 + ops.exp(-ops.abs(logits)))).mean()


class GeneratorLoss(nn.Cell):
    """(lr, hr, adv_weight) -> (loss, l1, adv, sr)."""

    def __init__(self, gen, disc):
        super().__init__(auto_prefix=False)
        self.gen, self.disc = gen, disc

    def construct(self, lr, hr, adv_weight):
        sr = self.gen(lr)
        l1 = ops.abs(sr - hr).mean()
        adv = bce_with_logits(self.disc(sr), 1.0)
        return l1 + adv_weight * adv, l1, adv, sr


class DiscriminatorLoss(nn.Cell):
    """(hr, sr) -> (loss, real term, fake term); no gradient reaches the generator."""

    def __init__(self, disc):
        super().__init__(auto_prefix=False)
        self.disc = disc

    def construct(self, hr, sr):
        real = bce_with_logits(self.disc(hr), 1.0)
        fake = bce_with_logits(self.disc(ops.stop_gradient(sr)), 0.0)
        return real + fake, real, fake


class SRGANTrainStep(nn.Cell):
    """``construct(lr, hr, adv_weight) -> (g_loss, l1, adv, d_loss, d_real, d_fake)``: the G update,
    then the D update on that step's G output (see the module doc)."""

    def __init__(self, gen, disc, opt_g: nn.Optimizer, opt_d: nn.Optimizer):
        super().__init__(auto_prefix=False)
        self.g_loss, self.d_loss = GeneratorLoss(gen, disc), DiscriminatorLoss(disc)
        self.opt_g, self.opt_d = opt_g, opt_d
        self.g_grad = ops.value_and_grad(self.g_loss, None, opt_g.parameters, has_aux=True)
        self.d_grad = ops.value_and_grad(self.d_loss, None, opt_d.parameters, has_aux=True)

    def construct(self, lr, hr, adv_weight):
        (g, l1, adv, sr), g_grads = self.g_grad(lr, hr, adv_weight)
        g = ops.depend(g, self.opt_g(g_grads))
        (d, real, fake), d_grads = self.d_grad(hr, sr)
        d = ops.depend(d, self.opt_d(d_grads))
        return g, l1, adv, d, real, fake


# --------------------------------------------------------------------------- trainer
# conv biases of the generator that a BatchNorm follows (official names, kept for the checkpoint)
_BIAS_BEFORE_BN = re.compile(r"^trunk\.\d+\.conv[12]\.bias$")


def trained_generator_params(gen) -> list:
    """The generator's trainable parameters less the conv biases a BatchNorm follows: BN removes
    them (their gradient is zero in exact arithmetic, so Adam would turn rounding noise into
    lr-sized steps); they keep their initial values, which the moving means absorb."""
    return [p for p in gen.trainable_params() if not _BIAS_BEFORE_BN.match(p.name)]


def lr_factor(step: int, total: int, decay_start: int) -> float:
    """The learning-rate multiplier of (0-based) ``step``: 1 before ``decay_start``, then linear to 0
    at ``total`` (``decay_start`` 0, or >= ``total``: always 1)."""
    if decay_start <= 0 or decay_start >= total or step < decay_start:
        return 1.0
    return max(0.0, (total - step) / (total - decay_start))


def _optimizer_state(opt: nn.Optimizer) -> list:
    """The optimizer's own parameters (moments, beta powers, step, learning rate)."""
    weights = {id(p) for p in opt.parameters}
    return [p for p in opt.get_parameters() if id(p) not in weights]


def _adam(params, lrs: list, betas, prefix: str) -> nn.Adam:
    """Adam with the per-step learning rates ``lrs`` (indexed by its own step counter, which the
    checkpoints hold), whose own parameters carry ``prefix``: the two optimizers of one step cell would
    otherwise share names (beta1_power, global_step, ...), and MindSpore then renames every
    parameter of the cell (the generator's included) by its attribute path."""
    opt = nn.Adam(params, learning_rate=[float(v) for v in lrs], beta1=float(betas[0]), beta2=float(betas[1]))
    for p in _optimizer_state(opt):
        p.name = prefix + p.name
    return opt


class SRGANTrainer:
    """G, D, their Adams and the compiled step, with exact checkpoints (see the module doc)."""

    def __init__(self, cfg, out_dir: str | Path | None = None, load_init: bool = True):
        """``load_init=False`` (a resume): ``init.generator`` is not read; the checkpoint sets every weight."""
        self.cfg = cfg
        t = cfg["train"]
        self.out_dir = Path(out_dir if out_dir is not None else t["output_dir"]).expanduser()
        self.ckpt_dir = self.out_dir / run_dir.CKPT_DIR
        self.gen = build_srgan(to_plain(cfg["model"]))
        if load_init and cfg["init"]["generator"] is not None:
            from .checkpoint import load_glide_checkpoint

            load_glide_checkpoint(self.gen, Path(str(cfg["init"]["generator"])).expanduser(), "srgan")
        dc = cfg["discriminator"]
        self.disc = SRGANDiscriminator(int(dc["channels"]), int(dc["num_blocks"]), int(dc["hidden"]))
        factors = [lr_factor(s, int(t["steps"]), int(t["lr_decay_start"])) for s in range(int(t["steps"]))]
        self.opt_g = _adam(trained_generator_params(self.gen), [t["lr"] * f for f in factors], t["adam_betas"],
                           "opt_g.")
        self.opt_d = _adam(self.disc.trainable_params(), [t["lr_d"] * f for f in factors], t["adam_betas"],
                           "opt_d.")
        self.step_cell = SRGANTrainStep(self.gen, self.disc, self.opt_g, self.opt_d)
        self.step = 0

    # ------------------------------------------------------------ state
    def state_groups(self) -> dict:
        """checkpoint prefix -> Parameters: the networks' (under generator. / discriminator.) and the
        optimizers' own state (named opt_g.* / opt_d.*: moments, beta powers, step; not their
        learning rate, which comes from the config)."""
        return {"generator.": list(self.gen.get_parameters()),
                "discriminator.": list(self.disc.get_parameters()),
                "": [p for opt in (self.opt_g, self.opt_d) for p in _optimizer_state(opt)
                     if not p.name.endswith(".learning_rate")]}

    def state(self) -> dict:
        return {pre + p.name: p.asnumpy() for pre, ps in self.state_groups().items() for p in ps}

    def save(self) -> Path:
        path = self.ckpt_dir / f"step_{self.step:07d}.ckpt"
        save_atomic(self.state(), path, extra={"meta.train_step": int(self.step),
                                               "meta.seed": int(self.cfg["train"]["seed"])})
        run_dir.mark_latest(self.ckpt_dir, path.name, int(self.cfg["train"]["keep_checkpoints"]))
        return path

    def resume(self, resume: str | Path) -> Path:
        """Restore G, D and both optimizers from ``resume``: ``'auto'`` (the newest checkpoint of the
        run folder that reads) or a path."""
        path, state = run_dir.read_resume_checkpoint(resume, self.out_dir, "SRGAN training checkpoint")
        if "meta.train_step" not in state:
            raise CheckpointError(f"{path} is not an SRGAN training checkpoint (no meta.train_step); "
                                  f"pass a checkpoints/step_*.ckpt of an SRGAN run, or --resume auto")
        step = int(np.asarray(state.pop("meta.train_step")))
        state.pop("meta.seed", None)
        load_strict([_Named(pre + p.name, p) for pre, ps in self.state_groups().items() for p in ps],
                    state, path=str(path))
        self.step = step
        return path

    def train_step(self, source: SRPatchSource) -> dict:
        t = self.cfg["train"]
        lr, hr = source.batch(self.step, int(t["batch_size"]))
        w = 0.0 if self.step < int(t["warmup_steps"]) else float(t["adv_weight"])
        self.step_cell.set_train(True)
        out = self.step_cell(Tensor(lr), Tensor(hr), Tensor(w, ms.float32))
        self.step += 1
        vals = dict(zip(METRIC_COLUMNS[1:7], (float(v.asnumpy()) for v in out)))
        bad = [k for k, v in vals.items() if not math.isfinite(v)]
        if bad:
            raise FloatingPointError(f"SRGAN training: {', '.join(bad)} became non-finite at step {self.step}; "
                                     f"lower train.lr / train.lr_d or train.adv_weight")
        return vals

    def export(self) -> dict:
        """srgan.ckpt (official bare names, fp32) and srgan.yaml (its ``model:`` config)."""
        ckpt = save_glide_checkpoint(self.gen, self.out_dir / EXPORT_NAME, kind="srgan")
        yaml = self.out_dir / EXPORT_CONFIG
        save_config(to_plain(self.cfg["model"]), yaml)
        return {"srgan": str(ckpt), "config": str(yaml)}


class _Named:
    """A Parameter seen under another name (for load_strict over prefixed state)."""

    def __init__(self, name, param):
        self.name, self._p = name, param
        self.shape, self.dtype = param.shape, param.dtype

    def set_data(self, value):
        self._p.set_data(value)


def _open_metrics(path: Path, step: int, resumed: bool):
    new = not (resumed and path.exists())
    if not new:
        run_dir.trim_metrics(path, step)
    fh = open(path, "w" if new else "a", newline="")
    writer = csv.writer(fh)
    if new:
        writer.writerow(METRIC_COLUMNS)
    return fh, writer


def train_srgan(cfg, resume=None, overwrite: bool = False, progress: bool = True) -> dict:
    """Train (or continue) the run of ``cfg`` (a config checked by ``check_srgan_train_config``);
    returns {step, last losses, export paths}."""
    check_srgan_train_config(cfg, resuming=bool(resume))
    t = cfg["train"]
    out = Path(t["output_dir"]).expanduser()
    files = run_dir.check_run_dir(out, resume, overwrite, (EXPORT_NAME, EXPORT_CONFIG, "loss.png"))
    run_dir.clear_run_dir(out, files)
    out.mkdir(parents=True, exist_ok=True)
    run_dir.sweep_temp_files(out)
    trainer = SRGANTrainer(cfg, out, load_init=not resume)
    if resume:
        path = trainer.resume(resume)
        print(f"[mind_diffusion] resumed from {path} at step {trainer.step}", flush=True)
    save_config(cfg, out / "config.yaml")
    total = int(t["steps"])
    source = SRPatchSource(cfg["data"], int(cfg["model"]["upscale_factor"]), int(t["seed"]), progress)
    fh, writer = _open_metrics(out / "metrics.csv", trainer.step, bool(resume))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=trainer.step, desc="srgan", dynamic_ncols=True)
    vals, t0 = {}, time.time()
    try:
        while trainer.step < total:
            vals = trainer.train_step(source)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(l1=f"{vals['l1']:.4f}", d=f"{vals['d_loss']:.3f}")
            if trainer.step % int(t["log_every"]) == 0 or trainer.step == total:
                writer.writerow([trainer.step] + [f"{vals[k]:.6f}" for k in METRIC_COLUMNS[1:7]]
                                + [f"{time.time() - t0:.1f}"])
                fh.flush()
            if trainer.step % int(t["ckpt_every"]) == 0 or trainer.step == total:
                trainer.save()
    finally:
        fh.close()
        if bar is not None:
            bar.close()
    paths = trainer.export()
    from ..utils.plots import plot_curves

    plot_curves(out / "metrics.csv", out / "loss.png", ("l1", "d_loss", "adv"),
                title=f"SRGAN x{cfg['model']['upscale_factor']} ({total} steps)")
    return {"step": trainer.step, **vals, **paths, "plot": str(out / "loss.png")}


# --------------------------------------------------------------------------- evaluation
def evaluate_srgan(gen, num_scenes: int = 32, world_seed: int = 0, hr_size: int = 1024,
                   downsample: str = "bicubic", progress: bool = False) -> list[dict]:
    """Per held-out scene (``ShapesWorld(split='heldout')``, anti-aliased ``hr_size`` renders
    downscaled by the generator's factor, then upscaled back): PSNR (dB, [0, 255] RGB) and
    :func:`edge_sharpness` of the generator's and of PIL bicubic's upscale against the render."""
    f = int(gen.upscale_factor)
    world = ShapesWorld(image_size=int(hr_size), seed=int(world_seed), antialias=True, split="heldout")
    it = range(int(num_scenes))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="eval", dynamic_ncols=True)
    rows = []
    for i in it:
        hr, caption, _ = world.sample(i)
        lr = downscale(hr, f, downsample)
        outs = {"srgan": upscale_with_generator(gen, lr), "bicubic": bicubic_upscale(lr, f)}
        row = {"scene": i, "caption": caption}
        for name, img in outs.items():
            row[f"psnr_{name}"] = psnr(img, hr)
            row[f"sharpness_{name}"] = edge_sharpness(img, hr)
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means over the scenes of every metric column (PSNR averaged in dB)."""
    keys = [k for k in rows[0] if k.startswith(("psnr_", "sharpness_"))]
    return {k: float(np.nanmean([r[k] for r in rows])) for k in keys}


def load_exported_srgan(model_dir: str | Path):
    """The generator of an export folder (``srgan.yaml`` + ``srgan.ckpt``, e.g. a run folder or
    models/glide_shapes/), loaded strictly."""
    from ..config import read_yaml
    from .checkpoint import load_glide_checkpoint

    d = Path(model_dir).expanduser()
    for name in (EXPORT_CONFIG, EXPORT_NAME):
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name} not found: --model_dir must hold {EXPORT_CONFIG} and "
                                    f"{EXPORT_NAME} (a finished SRGAN run folder or models/glide_shapes)")
    gen = build_srgan(to_plain(read_yaml(d / EXPORT_CONFIG)))
    load_glide_checkpoint(gen, d / EXPORT_NAME, "srgan")
    return gen


def eval_table(rows: list[dict]) -> str:
    """Markdown: mean PSNR and edge sharpness of bicubic and SRGAN, and their difference."""
    s = summarize(rows)
    lines = ["| upscale x4 (256 -> 1024) | PSNR (dB) | edge sharpness |", "|---|---:|---:|"]
    for name, label in (("bicubic", "bicubic (PIL)"), ("srgan", "SRGAN")):
        lines.append(f"| {label} | {s[f'psnr_{name}']:.2f} | {s[f'sharpness_{name}']:.3f} |")
    lines.append(f"| SRGAN - bicubic | {s['psnr_srgan'] - s['psnr_bicubic']:+.2f} | "
                 f"{s['sharpness_srgan'] - s['sharpness_bicubic']:+.3f} |")
    wins = sum(r["psnr_srgan"] > r["psnr_bicubic"] for r in rows)
    sharper = sum(r["sharpness_srgan"] > r["sharpness_bicubic"] for r in rows)
    lines += ["", f"SRGAN beats bicubic on {wins}/{len(rows)} scenes by PSNR and on {sharper}/{len(rows)} "
                  f"by edge sharpness."]
    return "\n".join(lines)


def crop_panel(gen, scenes=(0, 1, 2), crop: int = 128, world_seed: int = 0, hr_size: int = 1024,
               downsample: str = "bicubic") -> np.ndarray:
    """Rows of [LR (nearest), bicubic, SRGAN, HR] crops of ``crop`` px (HR pixels) around an edge
    pixel of held-out scenes, each shown at 2x (nearest), as one uint8 image."""
    f = int(gen.upscale_factor)
    world = ShapesWorld(image_size=int(hr_size), seed=int(world_seed), antialias=True, split="heldout")
    rows = []
    for i in scenes:
        hr, _, _ = world.sample(int(i))
        lr = downscale(hr, f, downsample)
        ys, xs = np.nonzero(edge_mask(hr))
        k = len(ys) // 2  # an edge pixel half-way down the objects (np.nonzero is row-major)
        cy, cx = (int(ys[k]), int(xs[k])) if len(ys) else (hr_size // 2, hr_size // 2)
        y0 = int(np.clip(cy - crop // 2, 0, hr.shape[0] - crop)) // f * f
        x0 = int(np.clip(cx - crop // 2, 0, hr.shape[1] - crop)) // f * f
        win = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        near = np.repeat(np.repeat(lr, f, 0), f, 1)
        tiles = [near[win], bicubic_upscale(lr, f)[win], upscale_with_generator(gen, lr)[win], hr[win]]
        tiles = [np.repeat(np.repeat(t, 2, 0), 2, 1) for t in tiles]
        gap = np.full((2 * crop, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([x for t in tiles for x in (t, gap)][:-1], axis=1))
    sep = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([x for r in rows for x in (r, sep)][:-1], axis=0)


def write_eval(gen, out_dir: str | Path, num_scenes: int = 32, world_seed: int = 0, hr_size: int = 1024,
               downsample: str = "bicubic", progress: bool = False, source: str = "") -> dict:
    """srgan_eval.csv (per scene), srgan_eval.md (the table) and srgan_crops.png in ``out_dir``."""
    from ..utils.images import save_png

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    rows = evaluate_srgan(gen, num_scenes, world_seed, hr_size, downsample, progress)
    with open(out / "srgan_eval.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    f = int(gen.upscale_factor)
    md = [f"# SRGAN x{f} vs bicubic on the shapes world", "",
          f"{num_scenes} held-out scenes (`ShapesWorld(split='heldout', seed={world_seed})`), each rendered at "
          f"{hr_size} px with anti-aliasing, downscaled x{f} ({downsample}) and upscaled back; "
          f"means over the scenes{f' ({source})' if source else ''}.", "",
          eval_table(rows), "",
          "PSNR: on [0, 255] RGB against the render. Edge sharpness: mean Sobel gradient magnitude "
          "of the upscale on the render's edge pixels (gradient >= 0.2 x its maximum) divided by the "
          "render's own there (1.0 = as steep as the true edges; see "
          "`mind_diffusion.glide.srgan_training.edge_sharpness`).", "",
          "`srgan_crops.png`: rows of held-out scenes 0-2, columns LR (nearest), bicubic, SRGAN, "
          "the 1024 px render; 128 px crops shown at 2x.", ""]
    (out / "srgan_eval.md").write_text("\n".join(md))
    save_png(out / "srgan_crops.png", crop_panel(gen, world_seed=world_seed, hr_size=hr_size, downsample=downsample),
             {"what": "LR | bicubic | SRGAN | HR", "scenes": "heldout 0-2", "source": source})
    return {"rows": rows, "summary": summarize(rows), "md": str(out / "srgan_eval.md"),
            "csv": str(out / "srgan_eval.csv"), "png": str(out / "srgan_crops.png")}
