"""Taichu-GLIDE text to image: tokenizer -> base (64 px) -> super-resolution (256 px) -> SRGAN
(1024 px), one call per task.

    pipe = GlidePipeline.from_pretrained("configs/glide/infer.yaml",
                                         "models/glide/glide_gen.ckpt",
                                         "models/glide/glide_super_res.ckpt",
                                         "models/glide/srgan.ckpt",
                                         tokenizer="models/glide/cog-pretrain.model")
    out = pipe("一张画着柯基的油画", num_images_per_prompt=4, seed=0)
    out[64], out[256], out[1024]          # (4, H, W, 3) uint8 per stage; out.images = out[1024]

Flow (Taichu-GLIDE ``src/txt2img.py`` and ``model/glide_text2im/main_funcs.py``): the prompt's
SentencePiece ids (128, pad = end token, mask)
-> base UNet with classifier-free guidance compiled into one cell (doubled batch
``[cond; uncond]``, the guidance scale an input), ancestral sampling over the respacing
``"60"`` of the cosine schedule -> the 64 px sample, quantised to 8 bit, conditions the SR UNet
(same tokens, no guidance), DDIM eta=0 over ``"fast27"`` of the linear schedule from noise x
0.997 -> SRGAN x4 -> images. The sampling loops are numpy loops
(:mod:`mind_diffusion.glide.diffusion`) around the compiled calls.

All noise (start noise, step noise, the random unconditional tokens) comes from numpy
generators, one per image (``seed + k`` for the base stage, ``[seed + k, 1]`` for the SR stage),
so image ``k`` can be regenerated alone with seed ``seed + k`` on any device and mode.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from .. import timings
from ..checkpoint.io import CheckpointError, file_sha256
from ..config import ConfigError, load_config, to_plain
from ..diffusion.guidance import GuidedModel, UnguidedModel
from ..diffusion.samplers import check_strength, get_sampler, sampler_levels, strength_start_step
from ..text.factory import build_glide_tokenizer
from ..text.sentencepiece_tokenizer import TokenTruncationWarning as PromptWarning
from ..utils.images import check_finite, to_uint8
from ..utils.output import DiffusionOutput
from ..utils.prompts import prompt_list
from . import diffusion as gd
from .builtin import STAGE_FILES, check_checkpoint
from .config import GLIDE_URL, glide_config_defaults
from .model import apply_glide_precision, build_glide_base, build_glide_sr, build_srgan
from .unet import legacy_bilinear_resize

__all__ = ["GlidePipeline", "SRGANStep", "STAGES", "PromptWarning"]

#: Nominal output sizes of the three stages (the real sizes come from the model configs).
STAGES = (64, 256, 1024)
TOKENIZER_KINDS = ("sentencepiece", "gpt2_bpe")


# ----------------------------------------------------------------------------- compiled cells
class SRGANStep(nn.Cell):
    def __init__(self, net: nn.Cell):
        super().__init__(auto_prefix=False)
        self.net = net

    def construct(self, x):
        return ops.cast(self.net(ops.cast(x, ms.float32)), ms.float32)


def _normalize_stages(stages) -> int:
    try:
        value = int(stages)
    except (TypeError, ValueError):
        value = None
    if isinstance(stages, bool) or value not in STAGES:
        raise ValueError(f"stages must be 64 (base only), 256 (base + super-resolution) or 1024 "
                         f"(all three stages), got {stages!r}")
    return value


def expert_below(cfg) -> int:
    """``diffusion.base_expert_below``: the step below which the low-noise expert denoises (an integer
    in [1, 1000]; 1000: every step); else one ``ConfigError`` line."""
    section = cfg.get("diffusion") if hasattr(cfg, "get") else None
    value = section.get("base_expert_below", 0) if section is not None else 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 1000:
        raise ConfigError(f"diffusion.base_expert_below must be an integer in [1, 1000] (the base's low-noise "
                          f"expert denoises the steps t below it; the value it was trained for), got {value!r}, "
                          f"with checkpoint.gen_expert_ckpt set")
    return int(value)


def expert_path(cfg, gen_ckpt) -> Path:
    """The config's ``checkpoint.gen_expert_ckpt``: as given when absolute, else in the base checkpoint's
    folder (``checkpoint.ckpt_path`` when the base is a state)."""
    name = Path(str(cfg.checkpoint.gen_expert_ckpt)).expanduser()
    if name.is_absolute():
        return name
    if isinstance(gen_ckpt, (str, os.PathLike)):
        return Path(gen_ckpt).expanduser().parent / name
    return Path(str(cfg.checkpoint.ckpt_path)).expanduser() / name


def expert_net_config(cfg) -> dict:
    """The low-noise expert's network: the base's (``model.base``) with the text-attention levels of
    ``model.base_expert.attention_resolutions`` when given (a superset of the base's)."""
    net = to_plain(cfg.model.base)
    section = cfg.model.get("base_expert") if hasattr(cfg.model, "get") else None
    levels = [int(v) for v in (section.get("attention_resolutions") or [])] if section is not None else []
    if not levels:
        return net
    base_levels = [int(v) for v in net["attention_resolutions"]]
    if not set(base_levels) <= set(levels):
        raise ConfigError(f"model.base_expert.attention_resolutions {levels} must hold the base's {base_levels} "
                          f"(the expert is the base network with attention blocks added)")
    net["attention_resolutions"] = tuple(sorted(set(levels)))
    return net


class GlidePipeline:
    """The three GLIDE stages; build with :meth:`from_pretrained`."""

    def __init__(self, base, sr, srgan, tokenizer, cfg, *, ckpt_paths: Mapping | None = None,
                 coeff_dtype: str = "float64", quantize_dtype: str = "float32", base_expert=None):
        self.cfg = cfg
        self.base, self.sr, self.srgan = base, sr, srgan
        self.tokenizer = tokenizer
        self.base_cfg = to_plain(cfg.model.base)
        self.sr_cfg = to_plain(cfg.model.sr)
        self.srgan_cfg = to_plain(cfg.model.srgan)
        if coeff_dtype not in gd.COEFF_DTYPES:
            raise ValueError(f"coeff_dtype must be one of {gd.COEFF_DTYPES}, got {coeff_dtype!r}")
        self.coeff_dtype = coeff_dtype
        # the SR input's 8-bit quantisation runs in the compute dtype, as the original's
        self.quantize_dtype = quantize_dtype
        self.ckpt_paths = dict(ckpt_paths or {})
        self._hashes: dict = {}
        self.max_stage = 1024 if srgan is not None else 256 if sr is not None else 64
        # the base UNet and guidance in one graph: text rows [cond; uncond] (the original's
        # order), guided eps + the conditional half's variance channels; the scale an input
        self._base_step = GuidedModel(base, eps_channels=3, cond_first=True) \
            if base is not None else None
        # the low-noise expert (checkpoint.gen_expert_ckpt): its own graph, for the steps t < expert_below
        self.expert_below = expert_below(cfg) if base_expert is not None else 0
        self._expert_step = GuidedModel(base_expert, eps_channels=3, cond_first=True) \
            if base_expert is not None else None
        self._sr_step = UnguidedModel(sr) if sr is not None else None
        self._schedules: dict = {}
        self._srgan_step = SRGANStep(srgan) if srgan is not None else None
        for cell in (base, sr, srgan, base_expert, self._base_step, self._expert_step, self._sr_step,
                     self._srgan_step):
            if cell is not None:
                cell.set_train(False)

    # ---------------------------------------------------------------- loading
    @staticmethod
    def load_config(config=None, overrides: Sequence[str] = ()):
        return load_config(config, overrides, glide_config_defaults())

    @classmethod
    def from_pretrained(cls, config=None, gen_ckpt=None, super_ckpt=None, srgan_ckpt=None, *,
                        tokenizer=None, stages=1024, overrides: Sequence[str] = (),
                        compute_dtype=None, coeff_dtype: str | None = None,
                        allow_random: bool = False, gen_expert_ckpt=None) -> "GlidePipeline":
        """Build the stages up to ``stages`` (64, 256 or 1024) from a config (path, DictConfig
        or None for the defaults) and checkpoint files (or {name: array} states).

        ``tokenizer``: a path (SentencePiece model, or with ``tokenizer.is_chinese=false`` the
        GPT-2 BPE folder) or a tokenizer object. ``compute_dtype``: the precision policy's
        compute dtype (fp16 compute with fp32 norms on Ascend/GPU; the coefficient tables
        then default to fp16, as the original's). Checkpoints of stages beyond ``stages`` are
        not needed; a missing one raises unless ``allow_random`` (tests only).

        ``gen_expert_ckpt`` (a path or state; default: the config's ``checkpoint.gen_expert_ckpt``,
        a relative name in ``gen_ckpt``'s folder, when a ``gen_ckpt`` is given): the base's low-noise
        expert, overlaid on a second copy of the base; it denoises the steps with t <
        ``diffusion.base_expert_below``."""
        from .checkpoint import load_base_expert, load_glide_checkpoint, load_grown_attention

        cfg = config if (config is not None and not isinstance(config, (str, os.PathLike))) \
            else cls.load_config(config, overrides)
        top = _normalize_stages(stages)
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            if tokenizer is None:
                raise ValueError("GLIDE needs its tokenizer: pass tokenizer= the cog-pretrain.model "
                                 "path (or the GPT-2 BPE folder in English mode)")
            tokenizer = build_glide_tokenizer(tokenizer, bool(cfg.tokenizer.is_chinese))
        fp16 = compute_dtype is not None and compute_dtype != ms.float32
        if coeff_dtype in (None, "auto"):
            cd = str(cfg.sampling.coeff_dtype)
            coeff_dtype = cd if cd != "auto" else ("float16" if fp16 else "float64")
        nets, paths = {}, {}
        specs = ((64, "base", build_glide_base, cfg.model.base, gen_ckpt),
                 (256, "sr", build_glide_sr, cfg.model.sr, super_ckpt),
                 (1024, "srgan", build_srgan, cfg.model.srgan, srgan_ckpt))
        for stage, kind, build, sub, ckpt in specs:
            if stage > top:
                nets[kind] = None
                continue
            if ckpt is None and not allow_random:
                key, name, what = STAGE_FILES[stage]
                raise CheckpointError(f"the {what} checkpoint is needed for stage {stage}: pass "
                                      f"{name} (download: {GLIDE_URL})")
            if isinstance(ckpt, (str, os.PathLike)):
                ckpt = cls.check_checkpoint(ckpt, stage)
                paths[kind] = str(ckpt)
            with timings.phase("build"):
                net = build(sub, deferred_init=ckpt is not None)
            if ckpt is not None:
                with timings.phase("checkpoint load"):
                    load_glide_checkpoint(net, ckpt, kind)
            if kind != "srgan" and fp16:
                apply_glide_precision(net, compute_dtype)
            nets[kind] = net
        expert = None
        if gen_expert_ckpt is None and gen_ckpt is not None and cfg.checkpoint.get("gen_expert_ckpt"):
            gen_expert_ckpt = expert_path(cfg, gen_ckpt)
        if gen_expert_ckpt is not None:
            expert_below(cfg)  # a file without a switch step is a config error before any build
            if isinstance(gen_expert_ckpt, (str, os.PathLike)):
                gen_expert_ckpt = Path(gen_expert_ckpt).expanduser()
                if not gen_expert_ckpt.is_file():
                    raise CheckpointError(
                        f"the base's low-noise expert {gen_expert_ckpt} is not there (checkpoint.gen_expert_ckpt: "
                        f"give its path, or null to sample with the base model alone)")
                paths["base_expert"] = str(gen_expert_ckpt)
            with timings.phase("build"):
                expert = build_glide_base(expert_net_config(cfg), deferred_init=True)
            with timings.phase("checkpoint load"):  # the loaded base's weights (fp32 at any precision), then its own
                _, added = load_grown_attention(expert, {p.name: p.asnumpy() for p in nets["base"].get_parameters()})
                report = load_base_expert(expert, gen_expert_ckpt)
                lacking = sorted(set(added) - set(report.names))
                if lacking:
                    raise CheckpointError(
                        f"the low-noise expert {paths.get('base_expert', 'state')} lacks the {len(lacking)} tensors of "
                        f"the attention blocks model.base_expert.attention_resolutions adds to the base (first: "
                        f"{lacking[0]}): set it to the levels the expert was trained with")
            if fp16:
                apply_glide_precision(expert, compute_dtype)
        pipe = cls(nets["base"], nets["sr"], nets["srgan"], tokenizer, cfg, ckpt_paths=paths,
                   coeff_dtype=coeff_dtype, quantize_dtype="float16" if fp16 else "float32", base_expert=expert)
        pipe.check_tokenizer()
        return pipe

    @staticmethod
    def check_checkpoint(path, stage: int) -> Path:
        return check_checkpoint(path, stage)

    def check_tokenizer(self):
        """The tokenizer's ids and pad id must index the token embeddings used."""
        for kind, cfg, net in (("base", self.base_cfg, self.base), ("SR", self.sr_cfg, self.sr)):
            if net is not None and self.tokenizer.n_vocab > int(cfg["n_vocab"]):
                raise ValueError(
                    f"the tokenizer has {self.tokenizer.n_vocab} ids (pad {self.tokenizer.end_token}) "
                    f"but the {kind} model's token embedding has {cfg['n_vocab']} rows"
                    + (" (English GPT-2 BPE ids reach 50256 and Taichu's base model has 50001 rows: "
                       "use the Chinese tokenizer, or a base model with the GPT-2 vocabulary and "
                       "model.base.n_vocab=50257)" if self.tokenizer.n_vocab == 50257 else ""))

    def checkpoint_hashes(self) -> dict:
        """{kind: sha256 prefix} of the loaded checkpoint files (computed once)."""
        for kind, path in self.ckpt_paths.items():
            if kind not in self._hashes:
                self._hashes[kind] = file_sha256(path)
        return dict(self._hashes)

    # ------------------------------------------------------------------ text
    def tokenize(self, prompts: Sequence[str], text_ctx: int) -> tuple:
        """(tokens, mask) int32 (B, text_ctx); one truncation warning per distinct prompt."""
        prompts = list(prompts)
        unique = list(dict.fromkeys(prompts))
        with warnings.catch_warnings():
            warnings.simplefilter("always", PromptWarning)
            tok, mask = self.tokenizer.batch(unique, text_ctx)
        rows = [unique.index(p) for p in prompts]
        return tok[rows], mask[rows]

    # --------------------------------------------------------------- checks
    @staticmethod
    def check_prompt(prompt) -> str:
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be text, got {type(prompt).__name__}")
        if not prompt.strip():
            raise ValueError("the prompt is empty: describe the image, e.g. \"一张画着柯基的油画\"")
        return prompt

    @staticmethod
    def _positive_int(value, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {value!r}")
        return int(value)

    @classmethod
    def check_inputs(cls, cfg, prompt, *, negative_prompt=None, num_images_per_prompt=None,
                     num_inference_steps=None, guidance_scale=None, seed=None, height=None,
                     width=None, sampler=None, callback=None, super_res_steps=None,
                     stages=None, uncond=None, output_type="uint8", max_stage: int = 1024,
                     super_res_strength=None) -> dict:
        """Every input checked, every default resolved from the config's ``sampling:`` section
        (the one place they are); returns the settings a call runs with. A class method, so a
        script checks its inputs against the config before loading any checkpoint."""
        s = cfg.sampling
        prompts = prompt_list(prompt, cls.check_prompt)
        negative = str(s.negative_prompt) if negative_prompt is None else negative_prompt
        if not isinstance(negative, str):
            raise ValueError(f"negative prompt must be text, got {type(negative).__name__}")
        per = cls._positive_int(int(s.num_images_per_prompt) if num_images_per_prompt is None
                                 else num_images_per_prompt, "num_images_per_prompt")
        steps = gd.check_steps(int(s.num_inference_steps) if num_inference_steps is None
                               else num_inference_steps, "num_inference_steps (denoise steps)")
        sr_steps = int(s.super_res_steps) if super_res_steps is None else super_res_steps
        scale = float(s.guidance_scale) if guidance_scale is None else guidance_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) \
                or not np.isfinite(scale):
            raise ValueError(f"guidance scale must be a finite number (5 is the default), "
                             f"got {guidance_scale!r}")
        seed = int(s.seed) if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        size = int(cfg.model.base.image_size)
        for name, v in (("height", height), ("width", width)):
            if v is not None and v != size:
                raise ValueError(f"{name} {v!r}: GLIDE's base model makes {size} px images (fixed "
                                 f"by its checkpoint); choose the output size with stages= "
                                 f"(64, 256 or 1024)")
        sampler = str(s.sampler) if sampler is None else sampler
        get_sampler(sampler)  # one clear error for an unknown name
        if callback is not None and not callable(callback):
            raise ValueError("callback must be callable(step_index, t, x, pred_x0)")
        top = _normalize_stages(int(s.stages) if stages is None else stages)
        top = min(top, max_stage) if stages is None else top
        if top > max_stage:
            raise ValueError(f"stage {top} was requested but this pipeline was built up to stage "
                             f"{max_stage} (from_pretrained(stages=...))")
        uncond = str(s.uncond) if uncond is None else uncond
        if uncond not in gd.UNCOND_MODES:
            raise ValueError(f"uncond must be 'random' (random tokens, as Taichu-GLIDE) or "
                             f"'empty' (the empty prompt, as OpenAI), got {uncond!r}")
        if output_type not in ("uint8", "np"):
            raise ValueError(f"output_type must be 'uint8' or 'np', got {output_type!r}")
        sr_strength = float(s.super_res_strength) if super_res_strength is None else super_res_strength
        sr_strength = check_strength(sr_strength, "super_res_strength")
        if top >= 256:
            gd.check_super_res_steps(sr_steps)
            if sr_strength < 1.0:
                strength_start_step("ddim", gd.SR_STEPS, sr_strength)  # one clear line if it leaves no step
        return {"prompts": prompts, "negative_prompt": negative, "num_images_per_prompt": per,
                "num_inference_steps": steps, "super_res_steps": sr_steps, "super_res_strength": sr_strength,
                "guidance_scale": float(scale), "seed": int(seed), "sampler": sampler,
                "stages": top, "uncond": uncond, "output_type": output_type,
                "callback": callback}

    # -------------------------------------------------------------- stages
    def schedule(self, kind: str):
        """The 1000-step schedule of the base (``"base"``) or SR (``"sr"``) model, its tables
        in this pipeline's ``coeff_dtype`` (built once)."""
        if kind not in self._schedules:
            make = gd.base_diffusion if kind == "base" else gd.sr_diffusion
            self._schedules[kind] = make(self.coeff_dtype, self.snr_scale(kind))
        return self._schedules[kind]

    def snr_scale(self, kind: str) -> float:
        """``diffusion.base_snr_scale`` / ``sr_snr_scale`` of the config (1 when it has none)."""
        key = f"{kind}_snr_scale"
        section = self.cfg.get("diffusion") if hasattr(self.cfg, "get") else None
        return gd.check_snr_scale(section.get(key, 1.0) if section is not None else 1.0, f"diffusion.{key}")

    def _base_model_fn(self, tokens, mask, scale, uncond, rngs, negative=None) -> Callable:
        def step(x, t, tok2, mask2, s):
            cell = self._base_step
            if self._expert_step is not None and float(np.max(t)) < self.expert_below:
                cell = self._expert_step
            return timings.call(cell, Tensor(np.ascontiguousarray(x, np.float32)),
                                Tensor(np.asarray(t, np.float32)), Tensor(np.float32(s)),
                                Tensor(tok2), Tensor(mask2)).asnumpy()
        return gd.guided_model_fn(step, tokens, mask, scale=scale, uncond=uncond, rngs=rngs,
                                  n_vocab=int(self.base_cfg["n_vocab"]),
                                  pad_id=int(self.tokenizer.end_token), negative=negative)

    def run_base(self, tokens, mask, *, seed: int, steps: int, scale: float, uncond: str,
                 sampler: str = "ddpm", negative=None, progress: bool = True,
                 callback=None, init=None, start_step: int = 0) -> np.ndarray:
        """The base stage: any core sampler over the cosine schedule (``"ddpm"``: ancestral
        over the respacing ``str(steps)``, the original), x0 clipped, the learned variance
        used where the sampler has a variance. ``negative``: (tokens, mask) of a negative
        prompt as the unconditional rows.

        ``init`` (B, 3, size, size) in [-1, 1] with ``start_step`` >= 1: start at that step of the
        sampler's grid from the images noised to its level, ``alpha_k init + sigma_k z`` (z: the
        same standard-normal draws as the start noise), instead of from noise: the base stage's
        img2img, and the probe of how much of a true image the steps below it keep."""
        n = tokens.shape[0]
        size = int(self.base_cfg["image_size"])
        rngs = gd.make_rngs(seed, n)
        x_T = gd.base_noise(rngs, (3, size, size))
        if init is not None:
            init = np.asarray(init, np.float64)
            if init.shape != x_T.shape:
                raise ValueError(f"init images must be {x_T.shape} (B, 3, H, W) in [-1, 1], got {init.shape}")
            _, alpha, sigma = sampler_levels(sampler, self.schedule("base"), steps)
            if isinstance(start_step, bool) or not 1 <= int(start_step) < len(alpha):
                raise ValueError(f"start_step must be in [1, {len(alpha) - 1}] (a step of the {steps}-step grid) "
                                 f"to start from init images, got {start_step!r}")
            x_T = (alpha[start_step] * init + sigma[start_step] * x_T.astype(np.float64)).astype(np.float32)
        elif start_step:
            raise ValueError("start_step needs init images (the images noised to that step's level)")
        fn = self._base_model_fn(tokens, mask, scale, uncond, rngs, negative)
        return self._sample(sampler, fn, x_T, self.schedule("base"), steps, rngs, progress,
                            callback, start_step=int(start_step))

    @staticmethod
    def _sample(sampler, fn, x_T, schedule, steps, rngs, progress, callback, start_step: int = 0) -> np.ndarray:
        name = sampler.strip().lower()
        opts = {"clip_denoised": True} if name in ("ddpm", "ddim") else {}
        if start_step:
            opts["start_step"] = int(start_step)
        return get_sampler(name)(fn, x_T, schedule, steps, rng=rngs, progress=progress,
                                 callback=callback, variance_type="learned_range", **opts)

    def run_super_res(self, low_res, tokens, mask, *, seed: int, steps: int = gd.SR_STEPS,
                      progress: bool = True, callback=None, strength: float = 1.0) -> np.ndarray:
        """The SR stage: DDIM (eta 0) over ``"fast27"`` of the linear schedule from noise x
        0.997, conditioned on the 8-bit quantised low-res images (in the compute dtype).

        ``strength`` < 1 (1: the original) starts at the "fast27" step diffusers' img2img rule picks
        for it (:func:`strength_start_step`) from the low-res images themselves, enlarged as the
        network enlarges them (legacy bilinear) and noised to that step's level with the same
        standard-normal draws: ``alpha_s up(low_res) + sigma_s z``. The sample then keeps the
        low-res colours and layout by construction and the model only adds the detail (the
        cascade refiner's way); the small built-in SR model, which cannot yet read its low-res
        input at the noisiest steps, needs it."""
        gd.check_super_res_steps(steps)
        strength = check_strength(strength, "super_res_strength")
        n = low_res.shape[0]
        size = int(self.sr_cfg["image_size"])
        rngs = gd.make_rngs(seed, n, stream=1)
        x_T = gd.sr_noise(rngs, (3, size, size))
        lr = Tensor(gd.quantize_low_res(low_res, self.quantize_dtype))
        tok, msk = Tensor(tokens), Tensor(mask)
        start = 0
        if strength < 1.0:
            start = strength_start_step("ddim", gd.SR_STEPS, strength)
            _, alpha, sigma = sampler_levels("ddim", self.schedule("sr"), gd.SR_RESPACING)
            up = legacy_bilinear_resize(lr, (size, size)).asnumpy().astype(np.float64)  # as the network does
            x_T = (alpha[start] * up + sigma[start] * (x_T.astype(np.float64) / gd.UPSAMPLE_TEMP)).astype(np.float32)

        def fn(x, t):
            return timings.call(self._sr_step, Tensor(np.ascontiguousarray(x, np.float32)),
                                Tensor(np.asarray(t, np.float32)), lr, tok, msk).asnumpy()
        return self._sample("ddim", fn, x_T, self.schedule("sr"), gd.SR_RESPACING, rngs,
                            progress, callback, start_step=start)

    def run_srgan(self, x, progress: bool = True) -> np.ndarray:
        """One image at a time (a 1024 px batch would need several GB)."""
        it = range(x.shape[0])
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=f"SRGAN x{int(self.srgan_cfg['upscale_factor'])}", total=x.shape[0])
        return np.concatenate([timings.call(self._srgan_step, Tensor(np.ascontiguousarray(x[i:i + 1], np.float32)))
                               .asnumpy() for i in it])

    # ---------------------------------------------------------------- call
    def __call__(self, prompt: str | Sequence[str], *, negative_prompt: str | None = None,
                 num_images_per_prompt: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, seed: int | None = None,
                 height: int | None = None, width: int | None = None, sampler: str | None = None,
                 callback: Callable | None = None, super_res_steps: int | None = None,
                 stages: int | None = None, uncond: str | None = None,
                 output_type: str = "uint8", progress: bool = True,
                 on_stage: Callable | None = None, super_res_strength: float | None = None) -> DiffusionOutput:
        """Generate ``num_images_per_prompt`` images for each prompt, through the stages up to
        ``stages`` (64, 256 or 1024).

        Returns a :class:`~mind_diffusion.utils.output.DiffusionOutput` keyed by stage (64,
        then 256, then 1024); images are (N,H,W,3) uint8 (``output_type="uint8"``) or
        (N,3,H,W) float32 in [-1, 1] (``"np"``). Image ``j`` (prompt-major) uses seed
        ``seed + j``. ``sampler`` and ``callback(step_index, t, x, pred_x0)`` apply to the base
        stage; ``negative_prompt`` replaces the unconditional text (``uncond``).
        ``on_stage(stage, images)`` is called as each stage finishes, so a caller can write
        them before the next, slower stage runs."""
        a = self.check_inputs(self.cfg, prompt, max_stage=self.max_stage,
                              negative_prompt=negative_prompt,
                              num_images_per_prompt=num_images_per_prompt,
                              num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, seed=seed, height=height,
                              width=width, sampler=sampler, callback=callback,
                              super_res_steps=super_res_steps, stages=stages, uncond=uncond,
                              output_type=output_type, super_res_strength=super_res_strength)
        per = a["num_images_per_prompt"]
        all_prompts = [p for p in a["prompts"] for _ in range(per)]
        results: dict = {}

        def emit(stage, x):
            check_finite(x, f"the {stage} px images")
            img = to_uint8(x) if output_type == "uint8" else x
            results[stage] = img
            if on_stage is not None:
                on_stage(stage, img)

        ctx = int(self.base_cfg["text_ctx"])
        tokens, mask = self.tokenize(all_prompts, ctx)
        negative = (self.tokenize([a["negative_prompt"]] * len(all_prompts), ctx)
                    if a["negative_prompt"] else None)
        with timings.phase("base 64 px"):
            x = self.run_base(tokens, mask, seed=a["seed"], steps=a["num_inference_steps"],
                              scale=a["guidance_scale"], uncond=a["uncond"], sampler=a["sampler"],
                              negative=negative, progress=progress, callback=a["callback"])
        emit(64, x)
        if a["stages"] >= 256:
            sr_ctx = int(self.sr_cfg["text_ctx"])
            if sr_ctx != tokens.shape[1]:
                tokens, mask = self.tokenize(all_prompts, sr_ctx)
            with timings.phase("super-res 256 px"):
                x = self.run_super_res(x, tokens, mask, seed=a["seed"], steps=a["super_res_steps"],
                                       progress=progress, strength=a["super_res_strength"])
            emit(256, x)
        if a["stages"] >= 1024:
            with timings.phase("SRGAN 1024 px"):
                x = self.run_srgan(x, progress=progress)
            emit(1024, x)
        settings = {k: v for k, v in a.items() if k not in ("prompts", "callback", "output_type")}
        return DiffusionOutput(results, prompts=all_prompts,
                               seeds=[a["seed"] + j for j in range(len(all_prompts))],
                               settings=settings)

    def settings(self, *, prompt: str, seed: int, stage: int, num_inference_steps: int,
                 super_res_steps: int, guidance_scale: float, uncond: str,
                 size: int | None = None, sampler: str = "ddpm",
                 negative_prompt: str = "", super_res_strength: float | None = None) -> dict:
        """What a PNG's metadata records: the prompt, every setting, checkpoint hashes."""
        hashes = self.checkpoint_hashes()
        out = {"prompt": prompt, "negative_prompt": negative_prompt,
               "model": str(self.cfg.model.family), "stage": stage,
               "size": f"{size}x{size}" if size else None, "seed": seed, "sampler": sampler,
               "denoise_steps": num_inference_steps, "guidance_scale": guidance_scale,
               "uncond": uncond, "coeff_dtype": self.coeff_dtype,
               "tokenizer": Path(getattr(self.tokenizer, "model_path", None)
                                 or getattr(self.tokenizer, "encoder_path", "")).name}
        if stage >= 256:
            out["super_res_step"] = super_res_steps
            out["super_res_strength"] = float(self.cfg.sampling.super_res_strength if super_res_strength is None
                                              else super_res_strength)
        if self._expert_step is not None:
            out["base_expert_below"] = self.expert_below
        for kind, key in (("base", 64), ("base_expert", 64), ("sr", 256), ("srgan", 1024)):
            if key <= stage and kind in self.ckpt_paths:
                out[f"{kind}_checkpoint"] = Path(self.ckpt_paths[kind]).name
                out[f"{kind}_checkpoint_sha256"] = hashes.get(kind)
        return out
