"""GLIDE model shapes (the single source of each network's hyper-parameters) and builders.

``glide_base_defaults()`` / ``glide_sr_defaults()`` / ``srgan_defaults()`` hold the values of
spec ``glide.md`` §2 (Taichu-GLIDE ``model_config.json`` / ``supres_model_config.json``, and
``Generator(4)``) plus the numerics options of this implementation:

* ``gelu`` / ``ln_eps``: text-transformer GELU ('tanh' Taichu, 'exact' OpenAI) and LayerNorm eps
  (1e-7 Taichu, 1e-5 OpenAI);
* ``timestep_fp16``: compute the timestep embedding in fp16 as Taichu does (default False: fp32,
  as OpenAI);
* ``dropout`` is a drop probability (Taichu's ``keep_prob`` 0.9 = 0.1; SR 0.0).

``build_glide_base(cfg)`` etc. take a mapping of overrides (a DictConfig works too); unknown keys
raise a ``ConfigError`` (a ``ValueError``) naming the key. ``GLIDE_TINY`` holds tiny configs with
the same code paths for tests.

Precision: :func:`apply_glide_precision` is the LDM policy (``apply_compute_dtype``): convs and
Dense layers compute in fp16 / bf16, GroupNorm, LayerNorm and softmax in fp32, parameters fp32;
no-op for fp32 (the CPU default). The SRGAN always runs in fp32 (as in the original).
"""
from __future__ import annotations

import difflib
from collections.abc import Mapping

import mindspore as ms

from ..config import ConfigError, to_plain
from ..nn.layers import apply_compute_dtype

__all__ = [
    "GLIDE_TINY",
    "apply_glide_precision",
    "build_glide_base",
    "build_glide_sr",
    "build_srgan",
    "glide_base_defaults",
    "glide_sr_defaults",
    "merge_config",
    "srgan_defaults",
]


def glide_base_defaults() -> dict:
    """Taichu-GLIDE base model (64 px, Chinese vocabulary of 50001 ids)."""
    return {
        "image_size": 64,
        "in_channels": 3,
        "model_channels": 192,
        "out_channels": 6,
        "num_res_blocks": 3,
        "channel_mult": [1, 2, 3, 4],
        "attention_resolutions": [2, 4, 8],   # downsample factors ds (32, 16, 8 px)
        "num_heads": 1,
        "num_head_channels": 64,
        "num_heads_upsample": -1,
        "num_groups": 32,
        "dropout": 0.1,
        "text_ctx": 128,
        "xf_width": 512,
        "xf_layers": 16,
        "xf_heads": 8,
        "n_vocab": 50001,
        "gelu": "tanh",
        "ln_eps": 1e-7,
        "timestep_fp16": False,
    }


def glide_sr_defaults() -> dict:
    """Taichu-GLIDE / OpenAI upsampler (64 -> 256 px, 50257-row embedding)."""
    cfg = glide_base_defaults()
    cfg.update({
        "image_size": 256,
        "in_channels": 6,
        "num_res_blocks": 2,
        "channel_mult": [1, 1, 2, 2, 4, 4],
        "attention_resolutions": [8, 16, 32],  # ds: 32, 16, 8 px
        "dropout": 0.0,
        "n_vocab": 50257,
    })
    return cfg


def srgan_defaults() -> dict:
    return {"upscale_factor": 4, "num_blocks": 16, "channels": 64}


# Tiny shapes with every code path of the full models (skip convs, up/down ResBlocks, attention
# with several heads in the encoder, middle and decoder, text padding) for fast tests.
GLIDE_TINY = {
    "base": {"image_size": 16, "model_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 2],
             "attention_resolutions": [2], "num_head_channels": 16, "dropout": 0.0,
             "text_ctx": 16, "xf_width": 32, "xf_layers": 2, "xf_heads": 2, "n_vocab": 100},
    "sr": {"image_size": 32, "model_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 1, 2],
           "attention_resolutions": [4], "num_head_channels": 32, "dropout": 0.0,
           "text_ctx": 16, "xf_width": 32, "xf_layers": 2, "xf_heads": 4, "n_vocab": 120},
    "srgan": {"upscale_factor": 4, "num_blocks": 2, "channels": 8},
}


def merge_config(defaults: dict, cfg: Mapping | None, what: str) -> dict:
    """``defaults`` overridden by ``cfg``; an unknown key raises ``ConfigError`` naming it."""
    out = dict(defaults)
    if cfg is None:
        return out
    for key, value in to_plain(cfg).items():
        if key not in defaults:
            close = difflib.get_close_matches(str(key), list(defaults), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{what}: unknown config key '{key}'{hint}; valid keys: "
                              f"{', '.join(sorted(defaults))}")
        out[key] = value
    for key in ("channel_mult", "attention_resolutions"):
        if key in out:
            out[key] = tuple(int(v) for v in out[key])
    return out


def _build(cls, kwargs: dict, deferred_init: bool):
    if not deferred_init:
        return cls(**kwargs)
    from mindspore.nn.utils import no_init_parameters

    with no_init_parameters():
        return cls(**kwargs)


def build_glide_base(cfg: Mapping | None = None, *, deferred_init: bool = False):
    """``GlideText2ImUNet`` from ``glide_base_defaults()`` overridden by ``cfg``.

    ``deferred_init=True`` skips the random initialisation (each parameter is initialised on
    first use, or simply overwritten by a checkpoint load): building the full-size net then
    takes ~1 s instead of ~10 s on CPU."""
    from .unet import GlideText2ImUNet

    return _build(GlideText2ImUNet, merge_config(glide_base_defaults(), cfg, "GLIDE base model"), deferred_init)


def build_glide_sr(cfg: Mapping | None = None, *, deferred_init: bool = False):
    """``GlideSuperResUNet`` from ``glide_sr_defaults()`` overridden by ``cfg`` (see
    :func:`build_glide_base` for ``deferred_init``)."""
    from .unet import GlideSuperResUNet

    return _build(GlideSuperResUNet, merge_config(glide_sr_defaults(), cfg, "GLIDE SR model"), deferred_init)


def build_srgan(cfg: Mapping | None = None, *, deferred_init: bool = False):
    """``SRGANGenerator`` from ``srgan_defaults()`` overridden by ``cfg``."""
    from .srgan import SRGANGenerator

    return _build(SRGANGenerator, merge_config(srgan_defaults(), cfg, "SRGAN generator"), deferred_init)


def apply_glide_precision(net, dtype=ms.float32):
    """Precision policy for a GLIDE UNet: convs / Dense in ``dtype``, norms and softmax fp32.
    (Use ``timestep_fp16=True`` in the config for Taichu's fp16 timestep embedding.)"""
    return apply_compute_dtype(net, dtype)
