"""The whole latent-diffusion model as one cell whose parameter names are those of the released
Wukong-Huahua checkpoint (``wukong-huahua-ms.ckpt``):

    model.diffusion_model.*        LDMUNet          (eps prediction)
    first_stage_model.*            AutoencoderKL    (f=8, 4 latent channels)
    cond_stage_model.transformer.* TextEncoder      (CLIP-style, 77 x 768 context)

``LatentDiffusion`` is a container: the pipeline compiles and calls its three parts separately
(text encoder, guided UNet step, VAE decode), as the original does.

Config: ``ldm.config.ldm_config_defaults()`` is the schema; the checkpoint's name prefixes and
its strict loader are in ``ldm.checkpoint``.
"""
from __future__ import annotations

from mindspore import nn

from ..config import to_plain
from ..nn.lora import TEXT_ATTN_TARGETS, inject_lora


class DiffusionWrapper(nn.Cell):
    """Holds the UNet as ``diffusion_model`` (the original's parameter prefix)."""

    def __init__(self, unet: nn.Cell):
        super().__init__()
        self.diffusion_model = unet

    def construct(self, x, t, context):
        return self.diffusion_model(x, t, context)


class LatentDiffusion(nn.Cell):
    def __init__(self, unet: nn.Cell, vae: nn.Cell, text: nn.Cell, scale_factor: float = 0.18215):
        super().__init__()
        self.model = DiffusionWrapper(unet)
        self.first_stage_model = vae
        self.cond_stage_model = text
        self.scale_factor = float(scale_factor)

    @property
    def unet(self):
        return self.model.diffusion_model

    @property
    def vae(self):
        return self.first_stage_model

    @property
    def text_encoder(self):
        return self.cond_stage_model

    def construct(self, *args):
        raise RuntimeError("LatentDiffusion is a container: call .unet, .vae or .text_encoder "
                           "(or use mind_diffusion.ldm.pipeline.LDMPipeline)")


def build_ldm(model_cfg) -> LatentDiffusion:
    """``model_cfg``: the ``model`` section of an LDM config."""
    from .autoencoder import AutoencoderKL
    from .text_encoder import TextConditioner
    from .unet import LDMUNet

    m = to_plain(model_cfg)
    unet_kw = dict(m["unet"])
    for key in ("channel_mult", "attention_resolutions"):
        unet_kw[key] = tuple(unet_kw[key])
    vae_kw = dict(m["vae"])
    vae_kw["ch_mult"] = tuple(vae_kw["ch_mult"])
    if unet_kw["context_dim"] != m["text_encoder"]["width"]:
        raise ValueError(f"model.unet.context_dim ({unet_kw['context_dim']}) must equal "
                         f"model.text_encoder.width ({m['text_encoder']['width']})")
    latent = vae_kw["embed_dim"]
    if unet_kw["out_channels"] != latent or unet_kw["in_channels"] not in (latent, 2 * latent + 1):
        raise ValueError(f"model.unet.in_channels / out_channels ({unet_kw['in_channels']} / "
                         f"{unet_kw['out_channels']}) must be {latent} / {latent} (text-to-image) or "
                         f"{2 * latent + 1} / {latent} (inpainting: latents, mask, masked-image "
                         f"latents) for model.vae.embed_dim {latent}")
    text_kw = dict(m["text_encoder"])
    text_lora = {k: text_kw.pop(k) for k in ("enable_lora", "lora_rank", "lora_alpha", "lora_targets")
                 if k in text_kw}
    text = TextConditioner(**text_kw)
    if text_lora.get("enable_lora"):
        inject_lora(text, text_lora.get("lora_rank", 4), text_lora.get("lora_alpha", 4.0),
                    tuple(text_lora.get("lora_targets") or TEXT_ATTN_TARGETS))
    return LatentDiffusion(LDMUNet(**unet_kw), AutoencoderKL(**vae_kw), text, m["scale_factor"])


def is_inpaint_unet(model_cfg) -> bool:
    """True for the inpainting UNet: input ``concat[x_t, mask, masked-image latents]``."""
    m = to_plain(model_cfg)
    return int(m["unet"]["in_channels"]) == 2 * int(m["vae"]["embed_dim"]) + 1


def size_multiple(model_cfg) -> int:
    """Image sizes must be multiples of this: VAE factor x 2^(UNet levels - 1) (64 for SD-v1)."""
    m = to_plain(model_cfg)
    return 2 ** (len(m["vae"]["ch_mult"]) - 1) * 2 ** (len(m["unet"]["channel_mult"]) - 1)
