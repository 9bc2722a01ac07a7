"""GLIDE defaults: the single source of each network's hyper-parameters and of the inference
config's schema.

``glide_base_defaults()`` / ``glide_sr_defaults()`` / ``srgan_defaults()`` hold the values of
Taichu-GLIDE's ``model_configs/model_config.json`` / ``supres_model_config.json`` (and ``Generator(4)``
of ``model/glide_text2im/model/srgan.py``) plus the numerics options of this implementation:

* ``gelu`` / ``ln_eps``: text-transformer GELU ('tanh' Taichu, 'exact' OpenAI) and LayerNorm eps
  (1e-7 Taichu, 1e-5 OpenAI);
* ``timestep_fp16``: compute the timestep embedding in fp16 as Taichu does (default False: fp32,
  as OpenAI);
* ``timestep_freqs``: the kernels of the timestep frequency table, ``"mindspore"`` (default):
  Taichu-GLIDE's run-time MindSpore kernels in its op order and dtype, the numbers the released
  checkpoints were run with; ``"numpy"``: OpenAI glide-text2im's / PyTorch's float32 table
  (fp16: numpy's fp16 ``exp``);
* ``dropout`` is a drop probability (Taichu's ``keep_prob`` 0.9 = 0.1; SR 0.0).

``network_config(defaults, cfg, what)`` overrides them through the one config checker
(``mind_diffusion.config.merge_overrides``): an unknown key or a wrong type raises a
``ConfigError`` (a ``ValueError``) naming the key. ``GLIDE_TINY`` holds tiny configs with the
same code paths for tests. ``glide_config_defaults()`` is the schema of configs/glide/infer.yaml.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..config import merge_overrides, sampling_defaults

GLIDE_URL = "https://download.mindspore.cn/toolkits/minddiffusion/Taichu-GLIDE/"


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
        # "mindspore": Taichu's MindSpore-kernel frequencies (the released checkpoints' numbers);
        # "numpy": OpenAI glide-text2im's / PyTorch's float32 table
        "timestep_freqs": "mindspore",
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


def network_config(defaults: dict, cfg: Mapping | None, what: str) -> dict:
    """``defaults`` overridden by ``cfg`` (checked: unknown keys and wrong types raise
    ``ConfigError`` naming the key), with ``channel_mult`` / ``attention_resolutions`` as int
    tuples."""
    out = merge_overrides(defaults, cfg, what)
    for key in ("channel_mult", "attention_resolutions"):
        if key in out:
            out[key] = tuple(int(v) for v in out[key])
    return out


def glide_config_defaults() -> dict:
    """Schema and defaults of a GLIDE inference config (configs/glide/infer.yaml)."""
    return {
        # base_expert.attention_resolutions ([]: the base's): the low-noise expert's network is the base's
        # with text attention at these levels (a superset of the base's; the blocks it adds are in its file)
        "model": {"family": "taichu-glide", "base": glide_base_defaults(),
                  "sr": glide_sr_defaults(), "srgan": srgan_defaults(),
                  "base_expert": {"attention_resolutions": []}},
        "tokenizer": {"is_chinese": True, "sp_model": "cog-pretrain.model",
                      "bpe_dir": "gpt2-bpe"},
        # gen_expert_ckpt (null: none, the original): the base's low-noise expert, the tensors a copy of
        # the base changed when trained on t < diffusion.base_expert_below only; it denoises those steps
        # and the base the others (a relative name is in the base checkpoint's folder)
        "checkpoint": {"ckpt_path": "models/glide", "gen_ckpt": "glide_gen.ckpt",
                       "super_ckpt": "glide_super_res.ckpt", "srgan_ckpt": "srgan.ckpt",
                       "gen_expert_ckpt": None, "url": GLIDE_URL},
        # base stage: ancestral sampling over respacing "60" of the cosine schedule (the
        # original); any core sampler by name. Super-resolution: DDIM over "fast27" (27 only), from
        # noise (super_res_strength 1, the original) or, below 1, from the noised enlarged low-res image.
        # the chains the networks were trained on: snr_scale s multiplies the base (or SR) cosine
        # (linear) schedule's signal-to-noise ratios (1: the released models; a model trained with
        # diffusion.snr_scale s is sampled with the same s)
        "diffusion": {"base_snr_scale": 1.0, "sr_snr_scale": 1.0, "base_expert_below": 0},
        "sampling": sampling_defaults(
            sampler="ddpm", num_inference_steps=60, guidance_scale=5.0, height=64, width=64,
            num_images_per_prompt=8, seed=0, negative_prompt="", super_res_steps=27, super_res_strength=1.0,
            uncond="random", stages=1024, coeff_dtype="auto",
            prompts_file="configs/glide/prompts.txt"),
    }
