"""Text-to-image with a latent diffusion model (Wukong-Huahua, or SD v1.x converted), and
image editing with it: ``pipe.img2img(...)`` and ``pipe.inpaint(...)`` (see ``ldm.editing``).

    pipe = LDMPipeline.from_pretrained("configs/wukong/v1-inference-chinese.yaml",
                                       "models/wukong-huahua-ms.ckpt")
    images = pipe("城市夜景 赛博朋克", num_images_per_prompt=4, seed=42).images  # (4, 512, 512, 3) uint8

Flow: tokenizer -> text encoder (prompt and negative prompt, one compiled call each shape) ->
sampler from the core (DPM-Solver++ 2M, PLMS, DDIM, DDPM) over the model's schedule, the UNet
and classifier-free guidance compiled into one step (one doubled batch, unconditional half
first) -> VAE decode of ``latent / scale_factor`` one image at a time -> uint8.

Start noise is drawn on the host with numpy, one generator per image (``seed + index``), so an
image can be regenerated alone from the seed stored in its PNG, on any device and mode.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

from .. import timings
from ..checkpoint.io import CheckpointError, file_sha256, read_checkpoint
from ..config import load_config
from ..diffusion.guidance import GuidedModel, UnguidedModel
from ..diffusion.samplers import get_sampler
from ..diffusion.schedule import schedule_from_config
from ..nn.layers import apply_compute_dtype
from ..text.factory import build_tokenizer, resolve_vocab
from ..utils.images import to_uint8
from ..utils.output import DiffusionOutput
from ..utils.prompts import prompt_list
from .checkpoint import load_ldm_checkpoint
from .config import ldm_config_defaults
from .editing import ConcatUNet, LDMEditing, LatentEncoder
from .lora import (LoadedLoRA, add_to_weights, add_token_rows, attach_separate, base_mismatch_note,
                   check_lora_weight, read_lora)
from .model import LatentDiffusion, build_ldm, is_inpaint_unet, size_multiple

SAMPLERS = ("dpm_solver", "plms", "ddim", "ddpm")


class PromptWarning(UserWarning):
    """A prompt was truncated to the context length or holds characters outside the vocab."""


class LatentDecoder(nn.Cell):
    """image = VAE.decode(latent / scale_factor), in fp32 out."""

    def __init__(self, vae: nn.Cell, scale_factor: float):
        super().__init__(auto_prefix=False)  # keep the model's parameter names
        self.vae = vae
        self.inv_scale = 1.0 / scale_factor

    def construct(self, z):
        return ops.cast(self.vae.decode(z * self.inv_scale), ms.float32)


class TextEncode(nn.Cell):
    def __init__(self, text: nn.Cell):
        super().__init__(auto_prefix=False)  # keep the model's parameter names
        self.text = text

    def construct(self, ids):
        return ops.cast(self.text(ids), ms.float32)


def inpaint_checkpoint_error(task: str) -> ValueError:
    return ValueError(
        f"this is an inpainting model (UNet with 9 input channels: latents, mask, masked "
        f"image), which cannot run {task}: use it with scripts/inpaint.py; {task} needs a "
        f"text-to-image checkpoint such as wukong-huahua-ms.ckpt with "
        f"configs/wukong/v1-inference-chinese.yaml")


class LDMPipeline(LDMEditing):
    def __init__(self, model: LatentDiffusion, tokenizer, cfg, ckpt_path: str | None = None,
                 ckpt_hash: str | None = None):
        self.model = model
        self.model.set_train(False)
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.schedule = schedule_from_config(cfg.model.schedule)
        self.scale_factor = model.scale_factor
        self.latent_channels = int(cfg.model.unet.out_channels)
        self.is_inpaint = is_inpaint_unet(cfg.model)
        self.vae_factor = 2 ** (len(cfg.model.vae.ch_mult) - 1)
        self.size_multiple = size_multiple(cfg.model)
        self.context_length = int(cfg.model.text_encoder.context_length)
        self.vocab_size = int(cfg.model.text_encoder.vocab_size)
        self.ckpt_path = ckpt_path
        self.ckpt_sha256 = ckpt_hash            # full hex digest (LoRA files record it)
        self.ckpt_hash = ckpt_hash[:10] if ckpt_hash else None
        self.loras: list[LoadedLoRA] = []
        self._build_cells()

    def _build_cells(self):
        """The compiled entry points; rebuilt after a LoRA changes the network's structure (a
        graph compiled before would not see the new layers)."""
        model = self.model
        self._text = TextEncode(model.cond_stage_model)
        # the UNet and guidance in one graph: context [uncond; cond], the scale an input
        self._guided = GuidedModel(model.model.diffusion_model)
        self._plain = UnguidedModel(model.model.diffusion_model)
        self._decode = LatentDecoder(model.first_stage_model, self.scale_factor)
        self._encode = LatentEncoder(model.first_stage_model)
        cells = [self._text, self._guided, self._plain, self._decode, self._encode]
        if self.is_inpaint:  # the UNet input is concat[x_t, mask, masked-image latents]
            step = ConcatUNet(model.model.diffusion_model)
            self._guided_cat, self._plain_cat = GuidedModel(step), UnguidedModel(step)
            cells += [self._guided_cat, self._plain_cat]
        for cell in cells:
            cell.set_train(False)

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, config: str | Path, ckpt: str | Path | None, *, vocab=None,
                        overrides: Sequence[str] = (), compute_dtype=None,
                        state: dict | None = None) -> "LDMPipeline":
        """Build from a YAML config and a checkpoint file (``ckpt=None`` with ``state``: load an
        in-memory {name: array}; with neither, keep random weights, for tests only)."""
        cfg = load_config(config, overrides, ldm_config_defaults())
        ckpt_path = None
        if ckpt is not None:
            ckpt_path = str(cls.check_checkpoint(cfg, ckpt))
        vocab_path = resolve_vocab(cfg, ckpt_path, vocab)
        tokenizer = build_tokenizer(cfg.tokenizer, vocab_path, int(cfg.model.text_encoder.context_length))
        with timings.phase("build"):
            model = build_ldm(cfg.model)
            if compute_dtype is not None:
                apply_compute_dtype(model, compute_dtype)
        with timings.phase("checkpoint load"):
            if ckpt_path is not None:
                state = read_checkpoint(ckpt_path, "LDM checkpoint")
            report = None
            if state is not None:
                report = load_ldm_checkpoint(model, ckpt_path or "<state>", state=state)
                del state
        if report is not None:
            ignored = getattr(report, "ignored", [])
            if ignored:
                print(f"note: ignored {len(ignored)} training-state tensors in the checkpoint "
                      f"(optimizer / loss scale), e.g. {ignored[0]}")
        ckpt_hash = file_sha256(ckpt_path, 64) if ckpt_path else None
        return cls(model, tokenizer, cfg, ckpt_path, ckpt_hash)

    @staticmethod
    def check_checkpoint(cfg, ckpt) -> Path:
        p = Path(ckpt).expanduser()
        if not p.is_file():
            url = cfg.checkpoint.get("url", "")
            raise CheckpointError(
                f"checkpoint not found: {p}. Put {cfg.checkpoint.name} there"
                + (f" (download: {url})" if url else "")
                + " or pass --ckpt_path/--ckpt_name")
        return p

    # ------------------------------------------------------------------ LoRA
    def load_lora(self, path, weight: float = 1.0, merge: bool = True) -> LoadedLoRA:
        """Apply a LoRA file (ours / the original's MindPet ``.ckpt``, kohya / A1111 or diffusers
        ``.safetensors``) with ``weight`` (1 = as trained). ``merge=True`` adds
        ``weight * alpha/rank * B A`` into the base weights (no extra compute per step);
        ``merge=False`` keeps it in separate LoRA layers (all separate LoRAs share one stacked
        layer per target). Several LoRAs add up. A file for another base raises
        ``LoRAFileError`` (one line) and leaves the model unchanged."""
        weight = check_lora_weight(weight)
        parsed = read_lora(path, self.model, self.cfg.model)
        entry = LoadedLoRA(str(path), weight, bool(merge), parsed)
        note = base_mismatch_note(parsed, path, self.ckpt_sha256)
        if note:
            entry.notes.append(note)
            print(note)
        if merge:
            add_to_weights(self.model, parsed.adapters, weight)
            self.loras.append(entry)
        else:
            self.loras.append(entry)
            try:
                self._attach_separate()
            except Exception:
                self.loras.pop()
                self._attach_separate()
                raise
        add_token_rows(self.model, parsed, weight)   # the identifier's trained embedding rows, if any
        return entry

    def unload_lora(self, path=None) -> int:
        """Remove the LoRA loaded from ``path`` (all of them with ``None``): merged ones are
        subtracted from the weights again (to within one float32 rounding, <= 1e-6), separate
        layers are taken out. Returns how many were removed."""
        keep, drop = [], []
        for e in self.loras:
            (drop if path is None or Path(e.path) == Path(path) else keep).append(e)
        if path is not None and not drop:
            loaded = ", ".join(e.path for e in self.loras) or "none"
            raise ValueError(f"LoRA {path} is not loaded (loaded: {loaded})")
        for e in drop:
            if e.merged:
                add_to_weights(self.model, e.parsed.adapters, -e.weight)
            add_token_rows(self.model, e.parsed, -e.weight)
        self.loras = keep
        if any(not e.merged for e in drop):
            self._attach_separate()
        return len(drop)

    def _attach_separate(self):
        attach_separate(self.model, [(e.parsed.adapters, e.weight) for e in self.loras if not e.merged])
        self._build_cells()

    # ------------------------------------------------------------------ text
    def tokenize(self, prompts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in prompts:
            info = self.tokenizer.tokenize_with_info(text)
            if info.truncated:
                warnings.warn(f"prompt has {info.n_tokens} tokens; only the first "
                              f"{self.context_length - 2} are used: {text[:40]!r}...",
                              PromptWarning, stacklevel=3)
            if info.unknown_chars:
                shown = "".join(dict.fromkeys(info.unknown_chars))[:20]
                warnings.warn(f"characters outside the tokenizer vocabulary become [UNK]: "
                              f"{shown!r}", PromptWarning, stacklevel=3)
            rows.append(np.asarray(info.ids, dtype=np.int32))
        ids = np.stack(rows)
        if ids.max() >= self.vocab_size:
            raise ValueError(f"token id {int(ids.max())} is outside the text encoder's "
                             f"{self.vocab_size}-row embedding (tokenizer / config mismatch)")
        return ids

    def encode_text(self, prompts: Sequence[str]) -> np.ndarray:
        ids = self.tokenize(prompts)
        with timings.phase("text encode"):
            return timings.call(self._text, Tensor(ids)).asnumpy()

    # --------------------------------------------------------------- checks
    @staticmethod
    def check_prompt(prompt, what: str = "prompt") -> str:
        if not isinstance(prompt, str):
            raise ValueError(f"{what} must be text, got {type(prompt).__name__}")
        if what == "prompt" and not prompt.strip():
            raise ValueError("the prompt is empty: describe the image, e.g. \"城市夜景 赛博朋克\"")
        return prompt

    @staticmethod
    def check_size(height: int, width: int, multiple: int = 64):
        """Pixel sizes must be multiples of (VAE factor x UNet halvings): 64 for Wukong / SD."""
        for name, v in (("H", height), ("W", width)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < multiple or v % multiple:
                raise ValueError(f"--{name} must be a positive multiple of {multiple} for this model "
                                 f"(the VAE divides it and the UNet halves the latent), got {v!r}; "
                                 f"e.g. {8 * multiple if multiple <= 64 else multiple}")

    # -------------------------------------------------------------- sampling
    def model_fn(self, context: np.ndarray, scale: float,
                 c_concat: np.ndarray | None = None) -> Callable:
        """``fn(x, t)``: the (guided) UNet step. ``c_concat`` (B, 5, h, w): the inpaint UNet's
        extra input (mask, masked-image latents), the same for both guidance halves."""
        ctx = Tensor(context.astype(np.float32))
        extra = ()
        plain, guided = self._plain, self._guided
        if c_concat is not None:
            if not self.is_inpaint:
                raise ValueError("c_concat is the inpaint UNet's input; this UNet takes "
                                 f"{self.latent_channels} channels")
            cc = np.ascontiguousarray(c_concat, np.float32)
            extra = (Tensor(cc if scale == 1.0 else np.concatenate([cc, cc])),)
            plain, guided = self._plain_cat, self._guided_cat
        elif self.is_inpaint:
            raise inpaint_checkpoint_error("text-to-image")
        if scale == 1.0:
            def fn(x, t):
                tt = Tensor(np.asarray(t, dtype=np.float32))
                return timings.call(plain, Tensor(np.ascontiguousarray(x, np.float32)), tt, ctx,
                                    *extra).asnumpy()
            return fn
        s = Tensor(np.float32(scale))

        def fn(x, t):
            tt = Tensor(np.asarray(t, dtype=np.float32))
            return timings.call(guided, Tensor(np.ascontiguousarray(x, np.float32)), tt, s, ctx,
                                *extra).asnumpy()
        return fn

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """(B,4,h,w) latents -> (B,3,8h,8w) floats (about [-1, 1])."""
        with timings.phase("decode"):
            return np.concatenate([timings.call(self._decode, Tensor(z[None].astype(np.float32))).asnumpy()
                                   for z in latents])

    def initial_noise(self, n: int, height: int, width: int, seed: int) -> np.ndarray:
        shape = (self.latent_channels, height // self.vae_factor, width // self.vae_factor)
        return np.stack([np.random.default_rng(seed + i).standard_normal(shape).astype(np.float32)
                         for i in range(n)])

    def to_uint8(self, x: np.ndarray) -> np.ndarray:
        """NaN/Inf refused; quantization per config (Wukong truncates, as the original)."""
        return to_uint8(x, quantize=str(self.cfg.sampling.quantize))

    @classmethod
    def check_inputs(cls, cfg, prompt, *, negative_prompt=None, num_images_per_prompt=None,
                     height=None, width=None, num_inference_steps=None, guidance_scale=None,
                     sampler=None, seed=None, callback=None, output_type="uint8",
                     flags: dict | None = None, task: str = "txt2img") -> dict:
        """Every input checked, every default resolved from the config's ``sampling:`` section
        (the one place they are); returns the settings a call runs with. A class method, so a
        script checks its inputs before loading the checkpoint; ``flags`` maps an argument to
        the command-line flag its error should name (e.g. ``{"num_inference_steps":
        "--ddim_steps"}``). ``task``: "txt2img", "img2img" or "inpaint"; an inpainting model
        (9-channel UNet) is refused for the first two."""
        flags = flags or {}
        if task not in ("txt2img", "img2img", "inpaint"):
            raise ValueError(f"task must be 'txt2img', 'img2img' or 'inpaint', got {task!r}")
        if task != "inpaint" and is_inpaint_unet(cfg.model):
            raise inpaint_checkpoint_error(task)
        s = cfg.sampling
        prompts = prompt_list(prompt, cls.check_prompt)
        negative = str(s.negative_prompt) if negative_prompt is None else negative_prompt
        cls.check_prompt(negative, "negative prompt")
        per = int(s.num_images_per_prompt) if num_images_per_prompt is None else num_images_per_prompt
        if isinstance(per, bool) or not isinstance(per, (int, np.integer)) or per < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {per!r}")
        height = int(s.height) if height is None else height
        width = int(s.width) if width is None else width
        cls.check_size(height, width, size_multiple(cfg.model))
        steps = int(s.num_inference_steps) if num_inference_steps is None else num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            what = f"{flags['num_inference_steps']} must be" if "num_inference_steps" in flags \
                else "sampling steps must be an integer"
            raise ValueError(f"{what} >= 1, got {steps!r}")
        scale = float(s.guidance_scale) if guidance_scale is None else guidance_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)) \
                or not np.isfinite(scale) or scale < 0:
            what = flags.get("guidance_scale", "guidance scale")
            raise ValueError(f"{what} must be >= 0 (7.5 is typical; 1 disables guidance), "
                             f"got {guidance_scale!r}")
        sampler = str(s.sampler) if sampler is None else sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        seed = int(s.seed) if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if callback is not None and not callable(callback):
            raise ValueError("callback must be callable(step_index, t, x, pred_x0)")
        if output_type not in ("uint8", "np", "latent"):
            raise ValueError(f"output_type must be 'uint8', 'np' or 'latent', got {output_type!r}")
        return {"prompts": prompts, "negative_prompt": negative, "num_images_per_prompt": int(per),
                "height": int(height), "width": int(width), "num_inference_steps": int(steps),
                "guidance_scale": float(scale), "sampler": sampler, "seed": int(seed)}

    def __call__(self, prompt: str | Sequence[str], *, negative_prompt: str | None = None,
                 num_images_per_prompt: int | None = None, height: int | None = None,
                 width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, sampler: str | None = None,
                 seed: int | None = None, callback=None, x_T: np.ndarray | None = None,
                 progress: bool = True, output_type: str = "uint8",
                 num_images: int | None = None, **sampler_options) -> DiffusionOutput:
        """``num_images_per_prompt`` images for each prompt (a str or a list; ``num_images`` is
        the older name). Image ``j`` (prompt-major) starts from the noise of seed ``seed + j``.
        Returns a :class:`~mind_diffusion.utils.output.DiffusionOutput`: ``.images`` (N,H,W,3)
        uint8, or the (N,3,H,W) float decode for ``output_type="np"``, or the final latents for
        ``"latent"``."""
        if num_images is not None:
            if num_images_per_prompt is not None:
                raise ValueError("pass num_images_per_prompt or its older name num_images, not both")
            num_images_per_prompt = num_images
        a = self.check_inputs(self.cfg, prompt, negative_prompt=negative_prompt,
                              num_images_per_prompt=num_images_per_prompt, height=height,
                              width=width, num_inference_steps=num_inference_steps,
                              guidance_scale=guidance_scale, sampler=sampler, seed=seed,
                              callback=callback, output_type=output_type)
        prompts = self._expand_prompts(a)
        n, h, w = len(prompts), a["height"], a["width"]
        shape = (n, self.latent_channels, h // self.vae_factor, w // self.vae_factor)
        if x_T is None:
            x_T = self.initial_noise(n, h, w, a["seed"])
        elif x_T.shape != shape:
            raise ValueError(f"x_T must have shape {shape}, got {x_T.shape}")
        latents = self._sample(a, self._guidance_context(prompts, a), x_T, callback=callback,
                               progress=progress, **sampler_options)
        return self._result(latents, a, prompts, output_type)

    # ------------------------------------------------- shared by txt2img / img2img / inpaint
    @staticmethod
    def _expand_prompts(a: dict) -> list:
        return [p for p in a["prompts"] for _ in range(a["num_images_per_prompt"])]

    def _guidance_context(self, prompts: list, a: dict) -> np.ndarray:
        """The text context: the prompts', after the negative prompt's when guided."""
        cond = self.encode_text(prompts)
        if a["guidance_scale"] == 1.0:
            return cond
        return np.concatenate([self.encode_text([a["negative_prompt"]] * len(prompts)), cond])

    def _sample(self, a: dict, context: np.ndarray, x_T: np.ndarray, *, callback, progress,
                c_concat: np.ndarray | None = None, **sampler_options) -> np.ndarray:
        opts = dict(sampler_options)
        if a["sampler"] in ("ddpm", "ddim"):
            opts.setdefault("clip_denoised", False)
        if a["sampler"] == "dpm_solver" and "dpm_solver_precision" in self.cfg.sampling:
            opts.setdefault("precision", str(self.cfg.sampling.dpm_solver_precision))
        scale = a["guidance_scale"]
        fn = self.model_fn(context, scale) if c_concat is None else \
            self.model_fn(context, scale, c_concat=c_concat)
        with timings.phase("sampling"):
            return get_sampler(a["sampler"])(
                fn, x_T, self.schedule, a["num_inference_steps"], rng=np.random.default_rng(a["seed"]),
                progress=progress, callback=callback, **opts)

    def _result(self, latents: np.ndarray, a: dict, prompts: list, output_type: str,
                extra: dict | None = None, keep=None) -> DiffusionOutput:
        """Decode (unless ``output_type='latent'``) and wrap; ``keep=(soft_mask, originals)``
        pastes the original pixels back outside the mask (blended inpainting)."""
        if output_type == "latent":
            images = latents
        else:
            x = self.decode(latents)
            if keep is not None:
                images = self.paste_outside(x, keep[0], keep[1], output_type)
            else:
                images = x if output_type == "np" else self.to_uint8(x)
        settings = {k: v for k, v in a.items() if k != "prompts"}
        settings.update(extra or {})
        return DiffusionOutput({a["height"]: images}, prompts=prompts,
                               seeds=[a["seed"] + j for j in range(len(prompts))],
                               settings=settings)

    def settings(self, *, prompt: str, negative_prompt: str, sampler: str, steps: int,
                 scale: float, seed: int, height: int, width: int) -> dict:
        return {"prompt": prompt, "negative_prompt": negative_prompt,
                "model": str(self.cfg.model.family), "sampler": sampler, "steps": steps,
                "scale": scale, "seed": seed, "size": f"{width}x{height}",
                "checkpoint": Path(self.ckpt_path).name if self.ckpt_path else None,
                "checkpoint_sha256": self.ckpt_hash,
                **({"lora": ", ".join(e.label for e in self.loras)} if self.loras else {})}
