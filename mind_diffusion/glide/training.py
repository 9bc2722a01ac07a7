"""GLIDE training: the base model (64 px) and the 64 -> 256 super-resolution model, fine-tuned
from the released ``glide_gen.ckpt`` / ``glide_super_res.ckpt`` or trained from scratch, on the
shared trainer (loss scale, gradient accumulation, EMA, exact resume, atomic checkpoints,
global-rank data sharding).

    cfg = load_config("configs/glide/train-gen.yaml", overrides, glide_train_config_defaults())
    train_glide(cfg, init_runtime("auto", "graph", seed=cfg.train.seed))

What it reproduces (Taichu-GLIDE ``src/train_txt2img.py`` and ``model/glide_text2im/model/train_model.py``,
``train/image_datasets.py``, ``train/resample.py``, mindspore-lab/minddiffusion ``vision/Taichu-GLIDE``):

- **loss** (``GaussianDiffusion.construct``): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``;
  the UNet returns 6 channels, ``eps_theta`` and the variance values ``v``; the loss is
  ``mean_batch( mean_chw((eps - eps_theta)^2) + vb )`` with ``vb`` the variational bound term in
  bits per dimension computed from ``stop_gradient(eps_theta)`` and ``v`` (so it trains only the
  variance): ``KL(q(x_{t-1}|x_t, x0) || p(x_{t-1}|x_t))`` for ``t > 0`` and the discretised
  Gaussian decoder NLL at ``t = 0``. The weight of ``vb`` is 1 (``diffusion.vb_weight``; the
  original adds the two terms). The model mean is formed from the predicted ``x0`` **clipped to
  [-1, 1]** (``diffusion.clip_denoised``), because the original computes it with its sampling
  ``PMeanVariance``, which always clips. The tables are those of the 1000-step chain the
  timesteps are drawn from (the original builds ``PMeanVariance`` on the respaced inference
  chain, ``timestep_respacing`` "60" / "fast27", and indexes it with the 1000-step ``t``; we use
  the chain the noise was added with, which is what the bound is defined on);
- **timesteps**: uniform over the 1000 training steps (``resample.py`` has only ``uniform``; its
  weights are 1 and unused by the loss);
- **schedules**: the base model's cosine (``squaredcos_cap_v2``), the SR model's linear, 1000
  steps each;
- **captions**: a caption with tab-separated alternatives takes one at random; with
  probability ``data.text_drop_p`` (0.2) the tokens are dropped: the empty token list, padded with
  the end token and an all-zero mask (the unconditional input of classifier-free guidance);
- **images** (``center_crop_arr``): halve with a box filter while the short side is >= 2x the
  size, bicubic-resize the short side to the size, center crop; [-1, 1]. The SR stage's
  low-resolution input is the *same* center crop made at 64 px from the original image (no blur
  or noise augmentation);
- **optimizer** (``build_optimizer``): ``AdamWeightDecay`` betas 0.9 / 0.999, eps 1e-6, weight
  decay 1e-2 on every parameter whose name contains neither "layernorm" nor "bias"; the
  learning rate ``end + (start - end) (1 + cos(pi step / decay)) / 2`` from 1e-4 to 1e-9 over
  all the run's steps (``LearningRate(use_cosine=True)``; linear warm-up when
  ``warmup_steps > 0``); dynamic loss scale starting at 65366 (the original's value), x2,
  window 1000; no EMA (``train.ema_decay`` > 0 keeps one).

What differs, on purpose: all randomness (caption choice, caption dropout, t, eps) is drawn on
the host from ``(seed, step)`` for the whole global batch, each rank taking its rows, so a
resumed run continues exactly and N workers train on exactly the batch one process would.

Outputs (``train.output_dir``): ``glide_gen.ckpt`` (base) or ``glide_super_res.ckpt`` (SR) in the
released files' layout (``diffusion_with_p_sample.p_mean_variance.guider_net.<name>``, fp16
positional / padding embeddings), so the original and ``scripts/glide_txt2img.py`` load them;
``*_ema.ckpt`` with EMA; ``model.yaml`` (the network config of the stage); ``metrics.csv``;
``checkpoints/`` for ``--resume``.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from ..checkpoint.io import CheckpointError, CheckpointMismatchError, read_checkpoint, save_atomic
from ..config import ConfigError, save_config, to_plain
from ..diffusion.gaussian import MSLearnedRangeVLB
from ..text.sentencepiece_tokenizer import padded_tokens_and_mask
from ..train.data import (
    DataError,
    GlobalOrder,
    check_global_batch,
    read_csv_pairs,
    shard_rows,
    unreadable_images,
)
from ..train.optim import build_optimizer
from ..train.run_dir import check_run_dir
from ..train.schedules import DelayedLR, WarmupCosineLR, check_delay_start
from ..train.trainer import NoEMA, Trainer, make_train_options, resolve_total_steps
from ..train.validate import check_number, check_train_section
from . import diffusion as gd
from .checkpoint import (OFFICIAL_FILES, glide_state, is_attention_tensor, load_glide_checkpoint, load_grown_attention,
                         strip_unet_prefix)
from .config import glide_base_defaults, glide_sr_defaults, network_config
from .model import apply_glide_precision, build_glide_base, build_glide_sr

__all__ = [
    "GlideBatches",
    "GlideHybridLoss",
    "GlideImageText",
    "center_crop_arr",
    "glide_train_config_defaults",
    "model_options_from_json",
    "read_image_caption_path_file",
    "train_glide",
    "build_glide_trainer",
]

STAGES = ("base", "sr")
DATA_KINDS = ("captions", "csv")
#: the parameters of the text side that ``train.text_encoder_start_step`` holds still
TEXT_SIDE_PREFIXES = ("token_embedding", "positional_embedding", "padding_embedding", "transformer.", "final_ln.")
#: the released model config's keys (model_configs/*.json) that name network hyper-parameters,
#: mapped onto ours; the rest (diffusion, fp16, flags of features not in the releases) are read or
#: checked separately
_JSON_NET_KEYS = {
    "image_size": "image_size", "num_channels": "model_channels", "num_res_blocks": "num_res_blocks",
    "channel_mult": "channel_mult", "num_heads": "num_heads", "num_head_channels": "num_head_channels",
    "num_heads_upsample": "num_heads_upsample", "attention_resolutions": "attention_resolutions",
    "text_ctx": "text_ctx", "xf_width": "xf_width", "xf_layers": "xf_layers", "xf_heads": "xf_heads",
    "n_vocab": "n_vocab",
}


def glide_train_config_defaults() -> dict:
    """Schema and defaults of a GLIDE training config (configs/glide/train-*.yaml): the
    original's ``train_txt2img.py`` defaults and the report's schedule."""
    return {
        # stage: base (64 px generation) or sr (64 -> 256 super-resolution); net: overrides of
        # the stage's network defaults (mind_diffusion.glide.config), e.g. a small model
        "model": {"stage": "base", "net": {k: None for k in glide_base_defaults()}, "model_config": None},
        # the Chinese SentencePiece model (cog-pretrain.model) or, is_chinese=false, the GPT-2 BPE folder
        "tokenizer": {"is_chinese": True, "sp_model": "cog-pretrain.model", "bpe_dir": "gpt2-bpe"},
        # loss_weighting: none (the original's plain mean of the eps error), min_snr (each sample's
        # eps error weighted by min(SNR_t, min_snr_gamma) / SNR_t) or inv_snr (weighted by
        # clip(1 / SNR_t, 1, inv_snr_cap): the noisy steps up, the others as the original): see GlideHybridLoss
        # multiscale_pools: extra eps terms on k x k average-pooled errors (k = the image or crop size: the
        # per-channel mean colour), each scaled by k^2 and its multiscale_weight (null: 1; one number for
        # all, or a list with one per pool); [] (the original): none. See GlideHybridLoss: it teaches the
        # mean colour and the layout, which the per-pixel mean hides. offset_noise: the training noise
        # gains offset_noise x a N(0, 1) constant per image and channel (0, the original: none); see
        # GlideBatches. foreground_weight F (0, the original: off): the per-pixel eps error of pixels
        # unlike the image's border colour (max over channels of |x0 - border mean| > foreground_threshold,
        # on the [-1, 1] scale) weighs 1 + F, the others 1, normalised per image (see GlideHybridLoss)
        "diffusion": {"num_timesteps": 1000, "noise_schedule": "auto", "vb_weight": 1.0,
                      "clip_denoised": True, "loss_weighting": "none", "min_snr_gamma": 5.0, "inv_snr_cap": 20.0,
                      "foreground_weight": 0.0, "foreground_threshold": 0.1,
                      # edge_weight E (0, the original: off): pixels within edge_width px of the foreground's
                      # outline (inside or out) weigh E more (on top of foreground_weight): where the
                      # shapes of one size and place differ (see GlideHybridLoss)
                      "edge_weight": 0.0, "edge_width": 2,
                      # t_focus_range [lo, hi] ([], the original: off): t_focus_fraction of each global
                      # batch draws t uniformly from [lo, hi) instead of [0, T) (see GlideBatches); or
                      # several ranges [[lo, hi], ...] with a list of fractions, one each (null: 0.5 for
                      # one range; a number or a list, so the schema leaves its type open)
                      "t_focus_range": [], "t_focus_fraction": None,
                      "multiscale_pools": [], "multiscale_weight": None, "offset_noise": 0.0,
                      # snr_scale s (1, the original): the chain's signal-to-noise ratio at every step
                      # times s (schedule.scale_snr); s < 1 moves the noise levels at which a 64 px
                      # image's layout is still visible in x_t earlier, so the text has to decide it.
                      # A model trained with s is sampled with the same s (diffusion.base_snr_scale)
                      "snr_scale": 1.0},
        "data": {
            # captions: the original's image_caption_path_file (lines "<captions file> <image root>",
            # each captions file "<image path>\\t<caption>[\\t<caption> ...]"); csv: data.path/*.csv
            # with columns dir, text (the LDM trainer's format)
            "kind": "captions",
            "path": "",                      # --data_path: the folder the list's paths are relative to
            "image_caption_path_file": "image_caption_path_file.txt",
            "text_drop_p": 0.2,
            "low_res_size": 64,              # --resolution_ori: the SR stage's input size
            # SR stage only: train on aligned random crops of this size (and the matching low-res
            # crop) instead of whole images; 0 = whole images, as the original
            "crop_size": 0,
            "random_flip": False,
            "shuffle": True,
        },
        "train": {
            "steps": 0,                      # 0: epochs x steps per epoch
            "epochs": 10,
            "batch_size": 2,                 # per worker, as the original's --batch_size
            "grad_accum_steps": 1,
            "optim": "adamw",
            "start_learning_rate": 1.0e-4,
            "end_learning_rate": 1.0e-9,
            "warmup_steps": 0,
            "decay_steps": 0,                # 0: the whole run (the original's steps x epochs)
            "betas": [0.9, 0.999],
            "eps": 1.0e-6,
            "weight_decay": 1.0e-2,
            "clip_grad_norm": 0.0,
            "loss_scale": "dynamic",
            "init_loss_scale": 65366.0,
            "loss_scale_window": 1000,
            "ema_decay": 0.0,
            "ema_start": 0,
            "ema_every": 1,
            "ckpt_every": 0,                 # --save_checkpoint_steps; 0: once per epoch
            "keep_checkpoints": 3,
            "log_every": 10,
            "output_dir": "output/glide",
            "seed": 0,
            # the text side (token / positional / padding embeddings, the text transformer, final_ln;
            # not transformer_proj, nor the UNet's encoder_kv) keeps its initial weights for this many
            # steps, then trains on the common schedule; 0 (the original): trained from the start
            "text_encoder_start_step": 0,
            # parameters held at their initial weights the whole run: names, or prefixes ending at a
            # dot boundary ("middle_block" holds middle_block.*); [] (the original): all train. The
            # exported files still hold every tensor (see frozen_parameter_names)
            "frozen_prefixes": [],
        },
        # init.checkpoint: the released glide_gen.ckpt / glide_super_res.ckpt (--pretrained_model) or
        # a file this trainer wrote; null: random weights. fresh_text_side: true keeps the network's
        # fresh initial weights for the text side (TEXT_SIDE_PREFIXES) instead of the checkpoint's: a
        # UNet that already draws the scenes learns to read a new, untrained encoder (with
        # train.text_encoder_start_step, a random one held still, the recipe that taught the built-in
        # LDM its place words). grow_attention: true reads a checkpoint of this network with fewer
        # attention blocks (a shorter model.net.attention_resolutions, e.g. a base model for an expert
        # with text attention at one more level): the blocks it lacks start as the identity (their
        # output projection zero), so training starts from the checkpoint's function
        "init": {"checkpoint": None, "fresh_text_side": False, "grow_attention": False},
    }


def model_options_from_json(path: str | Path) -> dict:
    """The network keys of a released model config JSON (``model_configs/model_config.json`` /
    ``supres_model_config.json``, the original's ``--model_config``) as ``model.net`` overrides.
    The original's ``dropout`` is MindSpore 1.x's *keep* probability (0.9 = drop 0.1)."""
    p = Path(str(path)).expanduser()
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"model config not found: {p} (the original's model_configs/model_config.json or "
                          f"supres_model_config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{p} is not a JSON model config: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p} must hold a JSON object of model options, got {type(raw).__name__}")
    net = {ours: raw[theirs] for theirs, ours in _JSON_NET_KEYS.items() if theirs in raw}
    if "dropout" in raw:
        keep = float(raw["dropout"])
        net["dropout"] = 0.0 if keep in (0.0, 1.0) else round(1.0 - keep, 6)
    for flag, want in (("use_scale_shift_norm", True), ("resblock_updown", True), ("xf_padding", True),
                       ("xf_final_ln", True), ("inpaint", False), ("sketch", False)):
        if flag in raw and bool(raw[flag]) != want:
            raise ConfigError(f"{p}: {flag}={raw[flag]} is not supported (the released models use {want})")
    if "diffusion_steps" in raw and int(raw["diffusion_steps"]) != 1000:
        raise ConfigError(f"{p}: diffusion_steps={raw['diffusion_steps']}; the released models train on 1000")
    return net


def stage_of(cfg) -> str:
    stage = str(cfg.model.stage)
    if stage not in STAGES:
        raise ConfigError(f"model.stage must be 'base' (64 px generation) or 'sr' (64 -> 256 "
                          f"super-resolution), got {stage!r}")
    return stage


def net_config(cfg) -> dict:
    """The stage's network hyper-parameters: defaults <- model.model_config JSON <- model.net."""
    stage = stage_of(cfg)
    overrides = {}
    if cfg.model.model_config:
        overrides.update(model_options_from_json(cfg.model.model_config))
    overrides.update({k: v for k, v in (to_plain(cfg.model.net) or {}).items() if v is not None})
    defaults = glide_base_defaults() if stage == "base" else glide_sr_defaults()
    return network_config(defaults, overrides, f"model.net ({'GLIDE base' if stage == 'base' else 'GLIDE SR'})")


def train_size(cfg) -> int:
    """The side of the images the UNet trains on: the stage's image size, or the SR stage's crops."""
    ncfg = net_config(cfg)
    size = int(ncfg["image_size"])
    stage = stage_of(cfg)
    low = int(cfg.data.low_res_size) if stage == "sr" else None
    return check_crop_size(cfg.data.crop_size, size, low) or size


def schedule_for(cfg):
    """The 1000-step chain of the stage: cosine (base) or linear (SR), as the released configs."""
    stage = stage_of(cfg)
    kind = str(cfg.diffusion.noise_schedule)
    if kind == "auto":
        kind = "cosine" if stage == "base" else "linear"
    if kind not in ("cosine", "linear"):
        raise ConfigError(f"diffusion.noise_schedule must be auto, cosine or linear, got {kind!r}")
    if int(cfg.diffusion.num_timesteps) != 1000:
        raise ConfigError(f"diffusion.num_timesteps must be 1000 (the released models' chain and the "
                          f"samplers' respacings), got {cfg.diffusion.num_timesteps}")
    return (gd.base_diffusion if kind == "cosine" else gd.sr_diffusion)(snr_scale=gd.check_snr_scale(cfg.diffusion.snr_scale))


# ---------------------------------------------------------------------------------------- data
def center_crop_arr(img: np.ndarray, size: int) -> np.ndarray:
    """The original's ``center_crop_arr``: while the short side is >= 2 x ``size`` halve with a box
    filter, bicubic-resize so the short side is ``size`` (sides rounded), center crop. uint8 HWC."""
    from PIL import Image

    im = Image.fromarray(np.asarray(img, dtype=np.uint8))
    while min(*im.size) >= 2 * size:
        im = im.resize(tuple(x // 2 for x in im.size), resample=Image.BOX)
    scale = size / min(*im.size)
    im = im.resize(tuple(round(x * scale) for x in im.size), resample=Image.BICUBIC)
    arr = np.asarray(im)
    y0, x0 = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return np.ascontiguousarray(arr[y0:y0 + size, x0:x0 + size])


def read_image_caption_path_file(list_file: str | Path, data_path: str | Path = "") -> tuple[list, int]:
    """The original's data list: each line ``<captions file> <image root>`` (paths relative to
    ``data_path``; ``#`` lines skipped); each captions file has ``<image path>\\t<caption>`` lines
    (more tab-separated fields: alternative captions). Returns ([(image path, [captions])],
    number of malformed lines skipped)."""
    root = Path(str(data_path or "")).expanduser()
    lf = Path(str(list_file)).expanduser()
    if not lf.is_absolute() and not lf.is_file():
        lf = root / lf
    if not lf.is_file():
        raise DataError(f"data list not found: {lf} (data.image_caption_path_file, relative to data.path: "
                        f"lines '<captions file> <image root>')")
    try:
        lines = lf.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{lf} is not UTF-8 text ({exc})") from None
    pairs, bad = [], 0
    sources = [ln for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not sources:
        raise DataError(f"{lf} lists no captions file (each line: '<captions file> <image root>')")
    for ln in sources:
        parts = ln.strip().split()
        if len(parts) != 2:
            raise DataError(f"{lf}: line {ln.strip()!r} must be '<captions file> <image root>' (two fields "
                            f"separated by a space)")
        cap_file, img_root = root / parts[0], root / parts[1]
        if not cap_file.is_file():
            raise DataError(f"captions file not found: {cap_file} (named in {lf})")
        try:
            rows = cap_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DataError(f"{cap_file} is not UTF-8 text ({exc})") from None
        for row in rows:
            fields = row.strip().split("\t")
            caps = [c.strip() for c in fields[1:] if c.strip()]
            if len(fields) < 2 or not fields[0].strip() or not caps:
                bad += int(bool(row.strip()))
                continue
            pairs.append((img_root / fields[0].strip(), caps))
    if not pairs:
        raise DataError(f"the captions files named in {lf} hold no '<image path>\\t<caption>' line")
    return pairs, bad


class GlideImageText:
    """The training pairs: image paths, their captions (lists of alternatives) and token ids.

    Rows are dropped, counted and reported in one line (or refused with ``strict``) when the
    image file is missing or does not decode, or when every caption tokenizes to nothing.
    ``image(i, size)`` is the original's center crop at ``size`` (uint8), decoded once and kept."""

    def __init__(self, pairs, tokenizer, sizes: tuple[int, ...], strict: bool = False, where: str = "data"):
        problems = {}
        missing = [p for p, _ in pairs if not Path(p).is_file()]
        for p in missing:
            problems[Path(p)] = "file not found"
        present = [p for p, _ in pairs if Path(p).is_file()]
        for p, why in unreadable_images(present):
            problems[Path(p)] = why
        token_ids, kept = [], []
        empty = 0
        for p, caps in pairs:
            if Path(p) in problems:
                continue
            ids = [tokenizer.encode(c) for c in caps]
            good = [(c, i) for c, i in zip(caps, ids) if len(i) > 0]
            if not good:
                empty += 1
                continue
            kept.append((Path(p), [c for c, _ in good]))
            token_ids.append([i for _, i in good])
        n = len(pairs)
        notes = []
        if problems:
            first = next(iter(problems.items()))
            notes.append(f"{len(problems)} image(s) missing or unreadable (e.g. {first[0]}: {first[1]})")
        if empty:
            notes.append(f"{empty} row(s) whose captions tokenize to nothing")
        if notes:
            what = f"{where}: " + " and ".join(notes) + f" of {n} rows"
            if strict or not kept:
                raise DataError(f"{what}; fix or remove them" + ("" if strict else " (none is left to train on)"))
            print(f"[mind_diffusion] {what} skipped; training uses the other {len(kept)} "
                  f"(--strict refuses such data)", flush=True)
        self.paths = [p for p, _ in kept]
        self.captions = [c for _, c in kept]
        self.token_ids = token_ids
        self.skipped = n - len(kept)
        self.sizes = tuple(int(s) for s in sizes)
        self._cache: dict = {}

    def __len__(self):
        return len(self.paths)

    def image(self, i: int, size: int) -> np.ndarray:
        key = (int(i), int(size))
        if key not in self._cache:
            from ..train.data import load_rgb

            self._cache[key] = center_crop_arr(load_rgb(self.paths[int(i)]), int(size))
        return self._cache[key]


class GlideBatches:
    """Random-access batch source: item ``step`` -> this rank's ``(x0 (B,3,S,S) f32, tokens (B,ctx)
    i32, mask (B,ctx) i32, t (B,) i32, noise (B,3,S,S) f32[, low_res (B,3,s,s) f32])`` with
    ``B = batch_size * accum_steps`` (its micro-batches, stacked). The global batch and all its
    randomness are a pure function of ``(seed, step)``; rank ``r`` takes its rows.

    ``t_focus_range`` ``(lo, hi)`` (empty: the original): each sample's t is, with probability
    ``t_focus_fraction``, redrawn uniformly from ``[lo, hi)`` (the noise levels where a word decides
    what x_t does not show yet get that much more of the batch); the other draws stay a plain run's.
    Several ranges ``[[lo1, hi1], [lo2, hi2], ...]`` with one fraction each (their sum at most 1):
    each sample is redrawn in range k with probability f_k, in none with 1 - sum f.

    ``offset_noise`` (0: the original): each image's noise, the eps target, gains ``offset_noise * c``
    with ``c ~ N(0, 1)`` per channel, constant over the image ("offset noise", Guttenberg 2023). The
    mean colour of a standard-normal noise image varies by only 1 / side, so a small network never
    learns to follow its input's mean colour, and sampling amplifies the starting noise's instead;
    with the offset the training inputs' mean colours vary enough to teach it."""

    def __init__(self, data: GlideImageText, end_token: int, text_ctx: int, batch_size: int, image_size: int,
                 low_res_size: int | None, num_timesteps: int = 1000, text_drop_p: float = 0.2, seed: int = 0,
                 rank: int = 0, group_size: int = 1, accum_steps: int = 1, shuffle: bool = True,
                 random_flip: bool = False, crop_size: int = 0, offset_noise: float = 0.0,
                 t_focus_range=(), t_focus_fraction=0.5):
        check_number(text_drop_p, "data.text_drop_p", 0, 1)
        self.t_focus = check_t_focus(t_focus_range, t_focus_fraction, int(num_timesteps))
        check_number(offset_noise, "diffusion.offset_noise", 0, 1)
        self.offset_noise = float(offset_noise)
        self.crop = check_crop_size(crop_size, image_size, low_res_size)
        self.accum_steps = int(accum_steps)
        self.global_batch = int(batch_size) * int(group_size) * self.accum_steps
        check_global_batch(self.global_batch, group_size, accum_steps)
        if len(data) < self.global_batch:
            raise DataError(f"the data has {len(data)} image-text pairs, fewer than one global batch of "
                            f"{self.global_batch} (train.batch_size={batch_size} x {group_size} worker(s)"
                            + (f" x train.grad_accum_steps={accum_steps}" if self.accum_steps > 1 else "")
                            + "); lower train.batch_size or add data")
        self.data, self.end_token, self.text_ctx = data, int(end_token), int(text_ctx)
        self.image_size = int(image_size)
        self.low_res_size = None if low_res_size is None else int(low_res_size)
        self.num_timesteps, self.text_drop_p = int(num_timesteps), float(text_drop_p)
        self.seed, self.rank, self.group = int(seed), int(rank), int(group_size)
        self.rows = shard_rows(self.global_batch, group_size, accum_steps, rank)
        self.random_flip = bool(random_flip)
        self.order = GlobalOrder(len(data), self.global_batch, self.seed, bool(shuffle))
        self.steps_per_epoch = self.order.steps_per_epoch

    def describe_global_batch(self) -> str:
        micro = self.global_batch // (self.group * self.accum_steps)
        return (f"train.batch_size={micro} per worker x {self.group} worker(s) x "
                f"train.grad_accum_steps={self.accum_steps}")

    def reach_global_batch(self, target: int) -> str:
        per = self.group * self.accum_steps
        if target % per:
            return f"run on a worker count and train.grad_accum_steps whose product divides {target}"
        return f"set train.batch_size={target // per}"

    def randomness(self, step: int) -> dict:
        """Every random draw of the global batch at ``step``, in a fixed order."""
        g = self.global_batch
        rng = np.random.default_rng([self.seed, int(step), 17])
        pick = rng.random(g)
        drop = rng.random(g) < self.text_drop_p
        flips = rng.random(g) < 0.5
        t = rng.integers(0, self.num_timesteps, size=g).astype(np.int32)
        side = self.crop or self.image_size
        noise = rng.standard_normal((g, 3, side, side)).astype(np.float32)
        out = {"pick": pick, "drop": drop, "flips": flips, "t": t, "noise": noise}
        if self.crop:  # crop offsets on the low-res grid, so both crops cover the same region
            out["crop"] = rng.random((g, 2))
        if self.offset_noise:  # drawn last: the other draws are those of a run without it
            offset = rng.standard_normal((g, 3, 1, 1)) * self.offset_noise
            out["noise"] = (noise + offset).astype(np.float32)
        if self.t_focus:  # drawn after every other draw, so those are a plain run's
            u = rng.random(g)  # sample j takes range k when u_j falls in [f_1 + .. + f_(k-1), f_1 + .. + f_k)
            start, focused_t = 0.0, t.copy()
            for lo, hi, fraction in self.t_focus:
                redraw = rng.integers(lo, hi, size=g)
                chosen = (u >= start) & (u < start + fraction)
                focused_t = np.where(chosen, redraw, focused_t)
                start += fraction
            out["t"] = focused_t.astype(np.int32)
        return out

    def _crops(self, hi: np.ndarray, lo: np.ndarray, u) -> tuple[np.ndarray, np.ndarray]:
        f = self.image_size // self.low_res_size
        lc = self.crop // f
        y, x = (int(v * (self.low_res_size - lc + 1)) for v in u)
        return hi[y * f:y * f + self.crop, x * f:x * f + self.crop], lo[y:y + lc, x:x + lc]

    @staticmethod
    def _to_float(img: np.ndarray, flip: bool) -> np.ndarray:
        if flip:
            img = img[:, ::-1]
        return np.ascontiguousarray((img.astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1))

    def __getitem__(self, step: int):
        step = int(step)
        idx = self.order.indices(step)
        r = self.randomness(step)
        rows = range(*self.rows)
        x0, toks, masks, lows = [], [], [], []
        for j in rows:
            i = int(idx[j])
            flip = self.random_flip and bool(r["flips"][j])
            hi = self.data.image(i, self.image_size)
            if self.low_res_size is not None:
                lo = self.data.image(i, self.low_res_size)
                if self.crop:
                    hi, lo = self._crops(hi, lo, r["crop"][j])
                lows.append(self._to_float(lo, flip))
            x0.append(self._to_float(hi, flip))
            choices = self.data.token_ids[i]
            ids = [] if r["drop"][j] else choices[min(int(r["pick"][j] * len(choices)), len(choices) - 1)]
            tok, mask = padded_tokens_and_mask(ids, self.text_ctx, self.end_token)
            toks.append(tok)
            masks.append(mask)
        out = (np.stack(x0), np.stack(toks), np.stack(masks),
               np.ascontiguousarray(r["t"][rows.start:rows.stop]),
               np.ascontiguousarray(r["noise"][rows.start:rows.stop]))
        if self.low_res_size is not None:
            out = out + (np.stack(lows),)
        return out

    @property
    def column_names(self) -> list[str]:
        cols = ["x0", "tokens", "mask", "t", "noise"]
        return cols + (["low_res"] if self.low_res_size is not None else [])

    def __len__(self):
        return 2**62


def check_t_focus(t_range, fraction, num_timesteps: int = 1000) -> tuple | None:
    """``diffusion.t_focus_range`` / ``t_focus_fraction`` as a tuple of ``(lo, hi, fraction)``, one per
    range, or None when the range is empty (off); else one ``ConfigError`` line. One range ``[lo, hi]``
    takes one fraction; several ``[[lo, hi], ...]`` take a list of fractions, one each, summing to at
    most 1."""
    from omegaconf import OmegaConf

    def plain(v):
        return OmegaConf.to_container(v) if OmegaConf.is_config(v) else v

    t_range, fraction = plain(t_range) or [], plain(fraction)
    t_range = list(t_range)
    if not t_range:
        return None
    several = all(isinstance(r, (list, tuple)) for r in t_range)
    if fraction is None and not several:
        fraction = 0.5
    ranges = [list(r) for r in t_range] if several else [t_range]
    usage = (f"diffusion.t_focus_range must be [lo, hi] (or a list of them, [[lo, hi], ...]) with integers "
             f"0 <= lo < hi <= {num_timesteps} (the timesteps drawn more often), got {t_range!r}; [] turns it off")
    for r in ranges:
        ok = len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
        if not ok or not 0 <= r[0] < r[1] <= int(num_timesteps):
            raise ConfigError(usage)
    if several:
        fractions = list(fraction) if isinstance(fraction, (list, tuple)) else None
        if fractions is None or len(fractions) != len(ranges):
            raise ConfigError(f"diffusion.t_focus_fraction must be a list of {len(ranges)} numbers, one per range "
                              f"of diffusion.t_focus_range (each sample's chance of a redraw there), got {fraction!r}")
    else:
        fractions = [fraction]
    for k, f in enumerate(fractions):
        name = "diffusion.t_focus_fraction" + (f"[{k}]" if several else "")
        check_number(f, name, 0, 1, low_inclusive=False)
    if sum(float(f) for f in fractions) > 1 + 1e-9:
        raise ConfigError(f"diffusion.t_focus_fraction {fractions!r} sums to {sum(fractions):g}, above 1: they are "
                          f"shares of one batch; lower them")
    return tuple((int(r[0]), int(r[1]), float(f)) for r, f in zip(ranges, fractions))


def frozen_parameter_names(net, prefixes) -> set:
    """The names of ``net``'s parameters that ``train.frozen_prefixes`` holds still: those equal to a
    prefix or starting with it plus a dot (``input_blocks.1`` holds ``input_blocks.1.*``, not
    ``input_blocks.10.*``). A prefix that names no parameter, or one list that holds all of them, is a
    ``ConfigError`` line."""
    from omegaconf import OmegaConf

    prefixes = OmegaConf.to_container(prefixes) if OmegaConf.is_config(prefixes) else list(prefixes or [])
    if not all(isinstance(x, str) and x.strip(". ") for x in prefixes):
        raise ConfigError(f"train.frozen_prefixes must be a list of parameter names or name prefixes "
                          f"(e.g. [middle_block, output_blocks.0]), got {prefixes!r}")
    names = [p.name for p in net.get_parameters() if p.requires_grad]
    frozen = set()
    for prefix in prefixes:
        stem = prefix.strip().rstrip(".")
        hit = {n for n in names if n == stem or n.startswith(stem + ".")}
        if not hit:
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(f"train.frozen_prefixes: {prefix!r} names no parameter of this network; "
                              f"names start with one of {', '.join(tops)} (e.g. input_blocks.9, middle_block)")
        frozen |= hit
    if frozen and len(frozen) == len(names):
        raise ConfigError(f"train.frozen_prefixes {prefixes!r} holds every parameter still: nothing would train")
    return frozen


def check_crop_size(crop_size, image_size: int, low_res_size) -> int:
    """``data.crop_size`` (0 = whole images): SR only, a multiple of the up-sampling factor, at
    most the image size."""
    check_number(crop_size, "data.crop_size", 0, None, integer=True)
    crop = int(crop_size)
    if not crop:
        return 0
    if low_res_size is None:
        raise ConfigError("data.crop_size is for the SR stage (model.stage=sr); the base model trains on "
                          "whole images: set data.crop_size=0")
    f = int(image_size) // int(low_res_size)
    if crop > int(image_size) or crop % f or int(image_size) % int(low_res_size):
        raise ConfigError(f"data.crop_size={crop} must be a multiple of the up-sampling factor {f} "
                          f"(image {image_size} / low-res {low_res_size}) and at most {image_size}")
    return crop


def make_batch_dataset(source: GlideBatches, start_step: int, end_step: int):
    """A ``mindspore.dataset`` pipeline over steps [start_step, end_step) (background prefetch)."""
    import mindspore.dataset as ds

    return ds.GeneratorDataset(source, column_names=source.column_names,
                               sampler=list(range(start_step, end_step)), shuffle=False,
                               num_parallel_workers=1, python_multiprocessing=False)


# ---------------------------------------------------------------------------------------- loss
LOSS_WEIGHTINGS = ("none", "min_snr", "inv_snr")


def check_loss_weighting(value) -> str:
    """``value`` if it names a weighting of :class:`GlideHybridLoss`, else one ``ConfigError`` line."""
    if str(value) not in LOSS_WEIGHTINGS:
        raise ConfigError(f"diffusion.loss_weighting must be one of {', '.join(LOSS_WEIGHTINGS)} "
                          f"(none: the original's loss), got {value!r}")
    return str(value)


def check_multiscale_pools(pools, size: int) -> tuple[int, ...]:
    """The pool sizes of ``diffusion.multiscale_pools`` as ints, each >= 2 and dividing ``size`` (the
    training image or crop size), else one ``ConfigError`` line."""
    out = []
    for k in pools:
        try:
            k_int = int(k)
            ok = k_int == float(k) and k_int >= 2 and size % k_int == 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            divisors = [d for d in range(2, size + 1) if size % d == 0]
            raise ConfigError(f"diffusion.multiscale_pools: each pool must be an integer >= 2 that divides the "
                              f"training size {size} (one of {divisors}; {size} pools to the mean colour), "
                              f"got {k!r}; [] turns the terms off")
        out.append(k_int)
    if len(set(out)) != len(out):
        raise ConfigError(f"diffusion.multiscale_pools lists a pool twice: {list(out)}")
    return tuple(out)


def pool_weights(weight, pools) -> tuple[float, ...]:
    """``diffusion.multiscale_weight`` (None: 1; one number; or one per pool) as one float per pool,
    else one ``ConfigError`` line."""
    weight = 1.0 if weight is None else weight
    is_list = isinstance(weight, Sequence) and not isinstance(weight, str)
    values = list(weight) if is_list else [weight] * len(pools)
    if len(values) != len(pools):
        raise ConfigError(f"diffusion.multiscale_weight lists {len(values)} weight(s) for {len(pools)} pool(s) "
                          f"({list(pools)}): give one number for all or one per pool")
    for v in values:
        check_number(v, "diffusion.multiscale_weight", 0, None)
    return tuple(float(v) for v in values)


def multiscale_terms(cfg) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """``(pools, weights)`` of a training config's multiscale terms, the pools checked against its
    training size."""
    pools = to_plain(cfg.diffusion.multiscale_pools)
    pools = check_multiscale_pools(pools, train_size(cfg)) if pools else ()
    return pools, pool_weights(cfg.diffusion.multiscale_weight, pools)


def min_snr_weights(alphas_cumprod, gamma: float) -> np.ndarray:
    """``min(SNR_t, gamma) / SNR_t`` per timestep (float64), ``SNR_t = abar_t / (1 - abar_t)``."""
    abar = np.asarray(alphas_cumprod, np.float64)
    snr = abar / (1.0 - abar)
    return np.minimum(snr, float(gamma)) / snr


def inv_snr_weights(alphas_cumprod, cap: float) -> np.ndarray:
    """``clip(1 / SNR_t, 1, cap)`` per timestep (float64): 1 where ``SNR_t >= 1``, rising to ``cap``
    at the noisiest steps."""
    abar = np.asarray(alphas_cumprod, np.float64)
    return np.clip((1.0 - abar) / abar, 1.0, float(cap))


class GlideHybridLoss(nn.Cell):
    """The original's training loss (see the module docstring) for a base or SR UNet.

    ``construct(x0, tokens, mask, t, noise[, low_res]) -> scalar``. The UNet's six output channels
    are ``eps_theta`` and the variance values ``v``; ``loss = mean(w_t * mse + vb_weight * vb)``.

    ``loss_weighting="none"`` (the original): ``w_t = 1``. ``"min_snr"``: ``w_t = min(SNR_t, gamma)
    / SNR_t`` with ``SNR_t = abar_t / (1 - abar_t)`` (the Min-SNR weighting of Hang et al., 2023,
    for an eps network): the nearly clean steps, whose eps error says little about the picture,
    weigh less, so the noisy steps where the text decides a scene's colour, shape and place get
    most of the gradient. It changes only the eps term; the VLB term (the variance) is unchanged.

    ``"inv_snr"``: ``w_t = clip(1 / SNR_t, 1, inv_snr_cap)``, the "truncated SNR" weighting of
    Salimans & Ho (2022) (``max(SNR_t, 1)`` on the x0 error, which is the eps error over ``SNR_t``),
    capped: the nearly clean steps keep the original's weight, the noisy ones, whose eps error is
    ~10x smaller under the plain mean and whose picture only the text can decide, weigh up to ``cap``
    times more. (Min-SNR, the other way round, starved the nearly clean steps and left noise.)

    ``multiscale_pools`` (``()``: the original): for each ``k``, ``multiscale_weight[k] * k^2 *
    mean(avgpool_k(noise - eps)^2)`` joins the eps term (and its ``w_t``). The ``k^2`` makes a white
    error count as much at every scale as in the per-pixel mean; there an image's mean colour (``k`` =
    the image size) is one value among 3 x 64 x 64 and its error is invisible, so a model trained
    on the plain mean leaves the mean colour to the starting noise at the noisy steps (the
    multiscale loss of Hoogeboom et al., 2023, "simple diffusion", for the same blind spot).

    ``foreground_weight`` F (0: the original): each pixel's squared eps error is weighted by
    ``1 + F * fg`` and the per-pixel term is ``sum(weight * err^2) / sum(weight)`` over the image, where
    ``fg`` marks the pixels of the clean image that differ from its border colour (the mean of its
    outermost rows and columns) by more than ``foreground_threshold`` in some channel. For objects on
    plain backgrounds (the shapes world) the object is a few percent of the pixels, so under the plain
    mean the picture's background, which the text also names, earns nearly all of the text's gain and
    the object's colour, shape and place almost none; with F = 10 an object of 6% of the pixels
    carries ~40% of the term. An image without such pixels keeps the plain mean.

    ``edge_weight`` E (0: off) adds ``E * edge`` to that weight, where ``edge`` marks the pixels within
    ``edge_width`` w of the foreground's outline: the foreground dilated by a (2w + 1)^2 square, less
    the foreground eroded by it (the image's border does not count as outline). Shapes of one size at
    one place differ only there (a square's corners against a circle's arc, a star's points), a few
    percent of even the object's pixels, so under the per-pixel mean the shape words earn almost none
    of the text's gain; the band gives the outline its own share."""

    def __init__(self, net: nn.Cell, schedule, super_res: bool, vb_weight: float = 1.0,
                 clip_denoised: bool = True, loss_weighting: str = "none", min_snr_gamma: float = 5.0,
                 multiscale_pools=(), multiscale_weight=1.0, inv_snr_cap: float = 20.0,
                 foreground_weight: float = 0.0, foreground_threshold: float = 0.1, edge_weight: float = 0.0,
                 edge_width: int = 2):
        super().__init__(auto_prefix=False)  # the model's parameter names stay unprefixed
        self.net = net
        self.super_res = bool(super_res)
        self.vb_weight = float(vb_weight)
        f32 = lambda a: Tensor(np.asarray(a, np.float64).astype(np.float32))  # noqa: E731
        abar = np.asarray(schedule.alphas_cumprod, np.float64)
        self.sqrt_abar = f32(np.sqrt(abar))
        self.sqrt_1m_abar = f32(np.sqrt(1.0 - abar))
        self.coef1 = f32(schedule.posterior_mean_coef1)
        self.coef2 = f32(schedule.posterior_mean_coef2)
        self.post_log_var = f32(schedule.posterior_log_variance_clipped)
        self.log_betas = f32(schedule.log_betas)
        self.sqrt_recip = f32(schedule.sqrt_recip_alphas_cumprod)
        self.sqrt_recipm1 = f32(schedule.sqrt_recipm1_alphas_cumprod)
        self.vlb = MSLearnedRangeVLB(clip_denoised=clip_denoised)
        weighting = check_loss_weighting(loss_weighting)
        self.weighted = weighting != "none"
        if weighting == "min_snr":
            self.mse_weights = f32(min_snr_weights(abar, float(min_snr_gamma)))
        elif weighting == "inv_snr":
            self.mse_weights = f32(inv_snr_weights(abar, float(inv_snr_cap)))
        self.fg_weight = float(foreground_weight)
        self.fg_threshold = float(foreground_threshold)
        self.edge_weight = float(edge_weight)
        self.pixel_weighted = self.fg_weight > 0 or self.edge_weight > 0
        if self.edge_weight > 0:  # a (2w + 1)^2 max filter; the padding never wins a max
            k = 2 * int(edge_width) + 1
            self.dilate = nn.MaxPool2d(kernel_size=k, stride=1, pad_mode="same")
        self.reduce_max = ops.ReduceMax(keep_dims=True)
        self.pools = tuple(int(k) for k in (multiscale_pools or ()))
        self.pool_scales = tuple(w * k * k for w, k in zip(pool_weights(multiscale_weight, self.pools), self.pools))

    def _g(self, table, t):
        return ops.gather(table, t, 0)

    def pixel_weights(self, x0):
        """(B, 1, H, W): ``1 + foreground_weight`` where the clean image differs from its border colour
        by more than ``foreground_threshold`` in some channel, else 1; plus ``edge_weight`` on the
        band of ``edge_width`` pixels around the foreground's outline."""
        border = ops.concat((x0[:, :, 0, :], x0[:, :, -1, :], x0[:, :, :, 0], x0[:, :, :, -1]), 2)
        colour = ops.mean(border, 2).reshape(x0.shape[0], x0.shape[1], 1, 1)
        dist = self.reduce_max(ops.abs(x0 - colour), 1)
        fg = ops.cast(ops.gt(dist, self.fg_threshold), ms.float32)
        weights = 1.0 + self.fg_weight * fg
        if self.edge_weight > 0:  # decided at compile time
            band = self.dilate(fg) - (1.0 - self.dilate(1.0 - fg))
            weights = weights + self.edge_weight * band
        return weights

    def terms(self, x0, tokens, mask, t, noise, low_res=None):
        """Per-sample ``(mse, vb)``, each (B,)."""
        a = self._g(self.sqrt_abar, t).reshape(-1, 1, 1, 1)
        b = self._g(self.sqrt_1m_abar, t).reshape(-1, 1, 1, 1)
        x_t = a * x0 + b * noise
        if self.super_res:
            out = self.net(x_t, t, low_res, tokens, mask)
        else:
            out = self.net(x_t, t, tokens, mask)
        out = ops.cast(out, ms.float32)
        eps, v = out[:, :3], out[:, 3:]
        err = noise - eps
        if self.pixel_weighted:  # decided at compile time
            wpix = self.pixel_weights(x0)
            mse = ops.sum(wpix * ops.square(err), (1, 2, 3)) / (err.shape[1] * ops.sum(wpix, (1, 2, 3)))
        else:
            mse = ops.mean(ops.square(err), (1, 2, 3))
        b, c, h, w = err.shape
        for k, scale in zip(self.pools, self.pool_scales):  # unrolled at compile time
            pooled = err.reshape(b, c, h // k, k, w // k, k).mean((3, 5))
            mse = mse + scale * ops.mean(ops.square(pooled), (1, 2, 3))
        is_first = ops.cast(ops.equal(t, 0), ms.float32)
        vb = self.vlb(x0, x_t, ops.stop_gradient(eps), v, self._g(self.coef1, t), self._g(self.coef2, t),
                      self._g(self.post_log_var, t), self._g(self.log_betas, t), self._g(self.sqrt_recip, t),
                      self._g(self.sqrt_recipm1, t), is_first)
        return mse, vb

    def construct(self, x0, tokens, mask, t, noise, low_res=None):
        mse, vb = self.terms(x0, tokens, mask, t, noise, low_res)
        if self.weighted:
            mse = self._g(self.mse_weights, t) * mse
        return ops.mean(mse + self.vb_weight * vb)


# ------------------------------------------------------------------------------------- trainer
class GlideTrainer(Trainer):
    """The shared Trainer whose exports are the released files' layout: ``glide_gen.ckpt`` /
    ``glide_super_res.ckpt`` (and ``*_ema.ckpt`` with EMA) plus ``model.yaml``."""

    def __init__(self, net, loss_net, optimizer, source, opts, out_dir, runtime, stage: str, net_cfg: dict,
                 tokenizer_cfg: dict):
        super().__init__(net, loss_net, optimizer, source, opts, out_dir, runtime,
                         images_per_step=source.global_batch)
        if float(opts.ema_decay) <= 0:
            self.ema = NoEMA()
        self.stage, self.net_cfg, self.tokenizer_cfg = stage, net_cfg, tokenizer_cfg
        name = OFFICIAL_FILES[stage]
        self.export_names = (name, name.replace(".ckpt", "_ema.ckpt"))

    def run_file_names(self) -> tuple:
        return (*super().run_file_names(), *self.export_names, "model.yaml")

    def export(self) -> dict:
        if self.rank != 0:
            return {}
        # only the network's tensors, named as in the released files (no step counter beside them:
        # the original loads them into its GaussianDiffusion cell; checkpoints/ holds the step)
        # the Parameters themselves, not host copies (save_atomic writes one tensor at a time)
        state = glide_state(self.model, self.stage, tensors=True)
        paths = {"model": save_atomic(state, self.out_dir / self.export_names[0])}
        if not isinstance(self.ema, NoEMA):
            ema = glide_state(self.model, self.stage, tensors=True, values=self.ema.model_tensors())
            paths["ema"] = save_atomic(ema, self.out_dir / self.export_names[1])
        net = {k: list(v) if isinstance(v, tuple) else v for k, v in self.net_cfg.items()}
        save_config({"model": {self.stage: net}, "tokenizer": self.tokenizer_cfg,
                     "checkpoint": {"ckpt_path": ".", ("gen_ckpt" if self.stage == "base" else "super_ckpt"):
                                    self.export_names[0]}}, self.out_dir / "model.yaml")
        return paths


def _tokenizer(cfg, init_dir: Path | None):
    from ..text.factory import build_glide_tokenizer

    tk = cfg.tokenizer
    name = str(tk.sp_model if tk.is_chinese else tk.bpe_dir)
    path = Path(name).expanduser()
    if not path.exists() and init_dir is not None and (init_dir / name).exists():
        path = init_dir / name
    if not path.exists():
        what = "tokenizer.sp_model" if tk.is_chinese else "tokenizer.bpe_dir"
        raise DataError(f"{what} not found: {path} (the SentencePiece model cog-pretrain.model ships with the "
                        f"Taichu-GLIDE checkpoints; set {what}=PATH or put it next to init.checkpoint)")
    return build_glide_tokenizer(str(path), bool(tk.is_chinese))


def read_pairs(cfg) -> tuple[list, int]:
    """[(image path, [captions])] of the configured data and the malformed rows skipped."""
    d = cfg.data
    if str(d.kind) not in DATA_KINDS:
        raise DataError(f"data.kind must be 'captions' (the original's image_caption_path_file) or 'csv' "
                        f"(data.path/*.csv with columns dir, text), got {d.kind!r}")
    if d.kind == "csv":
        return [(p, [c for c in text.split("\t") if c.strip()] or [""]) for p, text in read_csv_pairs(d.path)], 0
    return read_image_caption_path_file(d.image_caption_path_file, d.path)


def check_glide_train_config(cfg, runtime, resume=None, overwrite: bool = False) -> str:
    """The cheap checks before any data is read or network built; returns the stage."""
    t = cfg.train
    check_train_section(t, zero_ok=("steps", "ckpt_every"))
    stage = stage_of(cfg)
    check_number(cfg.data.text_drop_p, "data.text_drop_p", 0, 1)
    check_number(cfg.diffusion.vb_weight, "diffusion.vb_weight", 0, None)
    check_loss_weighting(cfg.diffusion.loss_weighting)
    check_number(cfg.diffusion.min_snr_gamma, "diffusion.min_snr_gamma", 0, None, low_inclusive=False)
    check_number(cfg.diffusion.inv_snr_cap, "diffusion.inv_snr_cap", 1, None)
    check_number(cfg.diffusion.foreground_weight, "diffusion.foreground_weight", 0, None)
    check_number(cfg.diffusion.foreground_threshold, "diffusion.foreground_threshold", 0, 2)
    check_number(cfg.diffusion.edge_weight, "diffusion.edge_weight", 0, None)
    check_number(cfg.diffusion.edge_width, "diffusion.edge_width", 1, 8, integer=True)
    check_t_focus(cfg.diffusion.t_focus_range, cfg.diffusion.t_focus_fraction, int(cfg.diffusion.num_timesteps))
    multiscale_terms(cfg)
    check_number(cfg.diffusion.offset_noise, "diffusion.offset_noise", 0, 1)
    check_number(cfg.data.low_res_size, "data.low_res_size", 8, None, integer=True)
    check_run_dir(Path(t.output_dir).expanduser(), resume, overwrite, rank=runtime.rank)
    init = cfg.init.checkpoint
    if bool(cfg.init.fresh_text_side) and not init:
        raise ConfigError("init.fresh_text_side=true needs init.checkpoint (the weights of the rest of the "
                          "network); without one every weight is fresh already")
    if bool(cfg.init.grow_attention) and (not init or bool(cfg.init.fresh_text_side)):
        raise ConfigError("init.grow_attention=true needs init.checkpoint (the network with fewer attention "
                          "blocks) and does not combine with init.fresh_text_side")
    if init and not Path(str(init)).expanduser().is_file():
        raise CheckpointError(f"init.checkpoint not found: {init} (the released {OFFICIAL_FILES[stage]} from "
                              f"https://download.mindspore.cn/toolkits/minddiffusion/Taichu-GLIDE/, or null to "
                              f"start from random weights)")
    return stage


def build_glide_trainer(cfg, runtime, resume=None, progress: bool = True, overwrite: bool = False,
                        strict: bool = False):
    """(trainer, make_dataset) ready for ``trainer.fit(make_dataset)``."""
    t, d = cfg.train, cfg.data
    stage = check_glide_train_config(cfg, runtime, resume, overwrite)
    ncfg = net_config(cfg)
    schedule = schedule_for(cfg)
    init_dir = Path(str(cfg.init.checkpoint)).expanduser().parent if cfg.init.checkpoint else None
    tokenizer = _tokenizer(cfg, init_dir)
    if tokenizer.n_vocab > int(ncfg["n_vocab"]):
        raise ConfigError(f"the tokenizer has {tokenizer.n_vocab} ids (with the end token) but the model's "
                          f"n_vocab is {ncfg['n_vocab']}: set model.net.n_vocab={tokenizer.n_vocab}")
    pairs, malformed = read_pairs(cfg)
    if malformed:
        msg = f"{malformed} malformed line(s) (no tab-separated caption) in the captions files"
        if strict:
            raise DataError(msg + "; fix them")
        print(f"[mind_diffusion] data: skipped {msg}", flush=True)
    size = int(ncfg["image_size"])
    low = int(d.low_res_size) if stage == "sr" else None
    data = GlideImageText(pairs, tokenizer, (size,) if low is None else (size, low), strict=strict)

    ms.set_seed(int(t.seed))  # identical initialisation on every rank
    net = (build_glide_base if stage == "base" else build_glide_sr)(ncfg)
    if cfg.init.checkpoint:
        source, fresh = str(cfg.init.checkpoint), {}
        if bool(cfg.init.fresh_text_side):
            # the checkpoint's text side is replaced by the network's own initial tensors before the
            # strict load, so its vocabulary (n_vocab) and text widths need not match
            fresh = {p.name: p.data.asnumpy().copy() for p in net.get_parameters()
                     if p.name.startswith(TEXT_SIDE_PREFIXES)}
            state = read_checkpoint(source, f"init.checkpoint ({OFFICIAL_FILES[stage]})")
            source = {n: v for n, v in state.items() if not strip_unet_prefix(n).startswith(TEXT_SIDE_PREFIXES)}
            source.update(fresh)
        if bool(cfg.init.grow_attention):
            _, added = load_grown_attention(net, source, stage)
            if runtime.rank == 0:
                print(f"[mind_diffusion] init: {len(added)} tensors of added attention blocks start as the identity "
                      f"(init.grow_attention)", flush=True)
        else:
            try:
                load_glide_checkpoint(net, source, stage)
            except CheckpointMismatchError as exc:
                missing = exc.report.missing
                if missing and not exc.report.unexpected and all(is_attention_tensor(n) for n in missing):
                    raise CheckpointError(f"init.checkpoint {cfg.init.checkpoint} lacks {len(missing)} tensors of "
                                          f"attention blocks the network has (model.net.attention_resolutions): "
                                          f"set init.grow_attention=true to start them as the identity") from None
                raise
        if fresh and runtime.rank == 0:
            print(f"[mind_diffusion] init: {len(fresh)} text-side tensors keep their fresh initial weights "
                  f"(init.fresh_text_side)", flush=True)
    apply_glide_precision(net, runtime.precision.ms_dtype())
    source = GlideBatches(data, tokenizer.end_token, int(ncfg["text_ctx"]), int(t.batch_size), size, low,
                          schedule.num_timesteps, float(d.text_drop_p), seed=int(t.seed), rank=runtime.rank,
                          group_size=runtime.group_size, accum_steps=int(t.grad_accum_steps),
                          shuffle=bool(d.shuffle), random_flip=bool(d.random_flip), crop_size=int(d.crop_size),
                          offset_noise=float(cfg.diffusion.offset_noise),
                          t_focus_range=cfg.diffusion.t_focus_range,
                          t_focus_fraction=cfg.diffusion.t_focus_fraction)
    total = resolve_total_steps(t, source.steps_per_epoch)
    loss_net = GlideHybridLoss(net, schedule, stage == "sr", float(cfg.diffusion.vb_weight),
                               bool(cfg.diffusion.clip_denoised), str(cfg.diffusion.loss_weighting),
                               float(cfg.diffusion.min_snr_gamma), *multiscale_terms(cfg),
                               inv_snr_cap=float(cfg.diffusion.inv_snr_cap),
                               foreground_weight=float(cfg.diffusion.foreground_weight),
                               foreground_threshold=float(cfg.diffusion.foreground_threshold),
                               edge_weight=float(cfg.diffusion.edge_weight), edge_width=int(cfg.diffusion.edge_width))
    decay = int(t.decay_steps) if int(t.decay_steps) > 0 else total

    def schedule_cell():
        return WarmupCosineLR(t.start_learning_rate, t.end_learning_rate, int(t.warmup_steps), decay)

    frozen = frozen_parameter_names(net, t.frozen_prefixes)
    for p in net.get_parameters():
        if p.name in frozen:
            p.requires_grad = False
    te_start = int(t.text_encoder_start_step)
    check_delay_start("train.text_encoder_start_step", te_start, total, f"the {total} training steps",
                      "the text side would never train (lower it, or 0 to train it from the start)")
    delayed = None
    if te_start > 0:  # the same schedule on its own cell, 0 before te_start
        delayed = ({p.name for p in net.trainable_params() if p.name.startswith(TEXT_SIDE_PREFIXES)},
                   DelayedLR(schedule_cell(), te_start))
    optimizer = build_optimizer(net.trainable_params(), t, schedule_cell(), delayed)
    opts = make_train_options(t, total, source.steps_per_epoch, progress)
    out = Path(t.output_dir).expanduser()
    trainer = GlideTrainer(net, loss_net, optimizer, source, opts, out, runtime, stage, ncfg,
                           to_plain(cfg.tokenizer))
    trainer.start(resume, overwrite)
    if runtime.rank == 0:
        save_config(cfg, out / "config.yaml")
        n_params = sum(int(np.prod(p.shape)) for p in net.trainable_params())
        print(f"[mind_diffusion] GLIDE {'base' if stage == 'base' else 'super-resolution'}: {len(data)} image-text "
              f"pairs" + (f" ({data.skipped} skipped)" if data.skipped else "") + f", {n_params:,} parameters"
              + (f" trained ({sum(int(np.prod(p.shape)) for p in net.get_parameters() if p.name in frozen):,} held "
                 f"still by train.frozen_prefixes)" if frozen else "") + ", "
              f"{total} steps" + (f" (text side trained from step {te_start})" if te_start else "")
              + f", global batch {source.global_batch} ({source.describe_global_batch()}) -> {out}",
              flush=True)
    return trainer, (lambda start, end: make_batch_dataset(source, start, end))


def train_glide(cfg, runtime, resume=None, progress: bool = True, overwrite: bool = False,
                strict: bool = False) -> dict:
    trainer, make = build_glide_trainer(cfg, runtime, resume, progress, overwrite=overwrite, strict=strict)
    return trainer.fit(make)
