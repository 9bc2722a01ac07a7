"""Stable Diffusion v1.x weights -> a MindSpore checkpoint in the Wukong-Huahua layout.

Sources (all read without executing pickled code):
- a CompVis / original-format ``.ckpt`` (torch zip or legacy file, restricted unpickler),
- a CompVis-format ``.safetensors``,
- a diffusers pipeline folder (``unet/``, ``vae/``, ``text_encoder/`` with
  ``*.safetensors`` or ``*.bin`` weights and ``config.json``).

The result uses our parameter names (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``), so it loads with the same strict loader as the released
Wukong-Huahua checkpoint, and runs through the same pipeline with ``configs/sd/v1-inference.yaml``
(exact GELU, CLIP text LayerNorm eps 1e-5, CLIP BPE tokenizer). SD-1.x inpainting files
(``sd-v1-5-inpainting.ckpt``, its safetensors or diffusers folder: the same names, a UNet
taking 9 input channels) convert the same way and load with
``configs/sd/v1-inpainting-inference.yaml`` (:func:`default_sd_config` picks it).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .convert_text import hf_clip_text_to_ours
from .convert_unet import compvis_unet_to_ours, diffusers_unet_to_compvis
from .convert_vae import compvis_vae_to_ours, diffusers_vae_to_compvis
from .io import CheckpointError
from .torch_pickle import TorchFileError, read_torch_file

SD_UNET = "model.diffusion_model."
SD_VAE = "first_stage_model."
SD_TEXT = "cond_stage_model.transformer."

# Buffers of the torch LatentDiffusion with no counterpart (schedule tensors, EMA copies, ...).
_DROP_PREFIXES = ("model_ema.", "betas", "alphas_cumprod", "alphas_cumprod_prev",
                  "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
                  "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                  "sqrt_recipm1_alphas_cumprod", "posterior_variance",
                  "posterior_log_variance_clipped", "posterior_mean_coef1",
                  "posterior_mean_coef2", "logvar", "lvlb_weights", "first_stage_model.loss.")


SD_CONFIG = "configs/sd/v1-inference.yaml"
SD_INPAINT_CONFIG = "configs/sd/v1-inpainting-inference.yaml"
_UNET_IN = SD_UNET + "input_blocks.0.0.conv.weight"


class ConversionError(CheckpointError):
    """The source cannot be converted; the message says why and what to pass instead."""


def _read_safetensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ConversionError(f"cannot read {path} as safetensors: {str(exc)[:200]}") from None
    return {k: np.asarray(v) for k, v in state.items()}


def _read_torch(path: Path) -> dict:
    try:
        tf = read_torch_file(path, lenient=True)
    except TorchFileError as exc:
        raise ConversionError(str(exc)) from None
    return tf.tensors


def read_weights(path: str | Path) -> dict:
    """{name: float array} from a .safetensors / torch .ckpt/.pt/.pth/.bin file (bf16 -> fp32)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConversionError(f"weights file not found: {p}")
    with open(p, "rb") as f:
        head = f.read(8)
    if p.suffix == ".safetensors":
        state = _read_safetensors(p)
    elif head[:2] == b"PK" or p.suffix in (".ckpt", ".pt", ".pth", ".bin"):
        try:
            state = _read_torch(p)
        except ConversionError:
            if _looks_like_mindspore(p):
                raise ConversionError(f"{p} is already a MindSpore checkpoint: load it directly "
                                      f"with scripts/txt2img.py --ckpt_path/--ckpt_name") from None
            raise
    else:
        raise ConversionError(f"{p}: unknown weights format (expected .ckpt, .safetensors, "
                              f".pt/.pth/.bin or a diffusers folder)")
    out = {}
    for k, v in state.items():
        v = np.asarray(v)
        if v.dtype.kind == "f" and v.dtype != np.float32:
            v = v.astype(np.float32)
        out[k] = v
    return out


def _looks_like_mindspore(path: Path) -> bool:
    try:
        import mindspore as ms

        ms.load_checkpoint(str(path), choice_func=lambda name: False)
        return True
    except Exception:
        return False


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def compvis_to_ours(state: dict) -> tuple[dict, list]:
    """A CompVis SD-v1 state dict -> (our state dict with prefixes, names filled with zeros
    because the source has no counterpart: the 4 never-used VAE tensors)."""
    if any(k.startswith("cond_stage_model.model.") for k in state):
        raise ConversionError("this is a Stable Diffusion 2.x checkpoint (OpenCLIP ViT-H text "
                              "encoder); only SD v1.x (CLIP ViT-L/14) is supported")
    if not any(k.startswith(SD_UNET) for k in state):
        sample = ", ".join(list(state)[:3])
        raise ConversionError(f"no '{SD_UNET}*' tensors: not a CompVis-format Stable Diffusion "
                              f"checkpoint (first names: {sample})")
    known = (SD_UNET, SD_VAE, SD_TEXT)
    leftovers = [k for k in state if not k.startswith(known) and not k.startswith(_DROP_PREFIXES)]
    if leftovers:
        raise ConversionError(f"unexpected tensors in the source ({len(leftovers)}): "
                              f"{', '.join(leftovers[:8])}")
    unet = compvis_unet_to_ours(_strip(state, SD_UNET))
    vae_in = {k: v for k, v in _strip(state, SD_VAE).items() if not k.startswith("loss.")}
    vae, filled = compvis_vae_to_ours(vae_in)
    text_src = _strip(state, SD_TEXT)
    if not text_src:
        raise ConversionError("the source has no text encoder (cond_stage_model.transformer.*)")
    text = hf_clip_text_to_ours(text_src)
    out = {}
    out.update({SD_UNET + k: v for k, v in unet.items()})
    out.update({SD_VAE + k: v for k, v in vae.items()})
    out.update({SD_TEXT + k: v for k, v in text.items()})
    return out, [SD_VAE + n for n in filled]


def _diffusers_part(folder: Path, sub: str) -> tuple[dict, dict]:
    d = folder / sub
    if not d.is_dir():
        raise ConversionError(f"{folder} is not a diffusers Stable Diffusion folder: {d} missing")
    cfg_path = d / "config.json"
    config = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors",
                 "diffusion_pytorch_model.bin", "pytorch_model.bin"):
        if (d / name).is_file():
            return read_weights(d / name), config
    raise ConversionError(f"no weights in {d} (expected diffusion_pytorch_model.safetensors / "
                          f"model.safetensors or the .bin equivalents)")


def diffusers_to_ours(folder: str | Path) -> tuple[dict, list]:
    folder = Path(folder).expanduser()
    unet_sd, unet_cfg = _diffusers_part(folder, "unet")
    vae_sd, _ = _diffusers_part(folder, "vae")
    text_sd, text_cfg = _diffusers_part(folder, "text_encoder")
    if text_cfg.get("hidden_size") == 1024 or unet_cfg.get("cross_attention_dim") == 1024:
        raise ConversionError("this is a Stable Diffusion 2.x folder (OpenCLIP ViT-H text encoder); "
                              "only SD v1.x (CLIP ViT-L/14) is supported")
    state = {}
    state.update({SD_UNET + k: v for k, v in diffusers_unet_to_compvis(unet_sd, unet_cfg).items()})
    state.update({SD_VAE + k: v for k, v in diffusers_vae_to_compvis(vae_sd).items()})
    state.update({SD_TEXT + k: v for k, v in text_sd.items()})
    return compvis_to_ours(state)


def convert_stable_diffusion(source: str | Path) -> tuple[dict, list]:
    """Any supported SD v1.x source -> (our state dict, names filled with zeros)."""
    src = Path(source).expanduser()
    if src.is_dir():
        return diffusers_to_ours(src)
    return compvis_to_ours(read_weights(src))


def unet_in_channels(state: dict) -> int:
    """The converted UNet's input channels: 4 (text-to-image) or 9 (inpainting)."""
    if _UNET_IN not in state:
        raise ConversionError(f"the converted state has no {_UNET_IN}")
    return int(np.shape(state[_UNET_IN])[1])


def default_sd_config(state: dict) -> str:
    """The config a converted state loads with: the inpainting one for a 9-channel UNet."""
    return SD_INPAINT_CONFIG if unet_in_channels(state) == 9 else SD_CONFIG


def check_channels_fit(state: dict, config_in_channels: int, config_path) -> None:
    """A clear error when the source's UNet input channels do not fit the config's."""
    have = unet_in_channels(state)
    if have == int(config_in_channels):
        return
    if have == 9:
        raise ConversionError(
            f"the source is a Stable Diffusion inpainting model (UNet with 9 input channels) but "
            f"{config_path} describes a {config_in_channels}-channel UNet: use --config "
            f"{SD_INPAINT_CONFIG} (or leave --config out), then scripts/inpaint.py")
    raise ConversionError(
        f"the source is a text-to-image model (UNet with {have} input channels) but "
        f"{config_path} describes a {config_in_channels}-channel (inpainting) UNet: use --config "
        f"{SD_CONFIG} (or leave --config out)")
