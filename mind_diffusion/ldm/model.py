"""The whole latent-diffusion model as one cell whose parameter names are those of the released
Wukong-Huahua checkpoint (``wukong-huahua-ms.ckpt``):

    model.diffusion_model.*        LDMUNet          (eps prediction)
    first_stage_model.*            AutoencoderKL    (f=8, 4 latent channels)
    cond_stage_model.transformer.* TextEncoder      (CLIP-style, 77 x 768 context)

``LatentDiffusion`` is a container: the pipeline compiles and calls its three parts separately
(text encoder, guided UNet step, VAE decode), as the original does.

Config: ``ldm_config_defaults()`` is the schema (Wukong-Huahua inference values); YAML files
under ``configs/wukong/`` and ``configs/sd/`` override it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from mindspore import nn

from ..checkpoint.io import (CheckpointError, CheckpointMismatchError, LoadReport, load_strict,
                             read_checkpoint)
from ..config import to_plain

PREFIX_UNET = "model.diffusion_model."
PREFIX_VAE = "first_stage_model."
PREFIX_TEXT = "cond_stage_model.transformer."
MODEL_PREFIXES = ("model.", "first_stage_model.", "cond_stage_model.")

# Built by the original AutoencoderKL but never applied, and absent from the released file.
UNUSED_VAE_PARAMS = (
    "first_stage_model.encoder.down.3.downsample.conv.weight",
    "first_stage_model.encoder.down.3.downsample.conv.bias",
    "first_stage_model.decoder.up.0.upsample.conv.weight",
    "first_stage_model.decoder.up.0.upsample.conv.bias",
)

# Keys a MindSpore training checkpoint carries besides the network (optimizer, loss scale...).
TRAINING_STATE_MARKERS = ("adam_m", "adam_v", "moment1", "moment2", "global_step", "learning_rate",
                          "scale_sense", "beta1_power", "beta2_power", "current_iterator_step",
                          "epoch_num", "step_num", "loss_scale", "accum", "ema.")


def ldm_config_defaults() -> dict:
    """Schema + defaults: Wukong-Huahua ``v1-inference-chinese.yaml``."""
    return {
        "model": {
            "family": "wukong",
            "scale_factor": 0.18215,
            "schedule": {"kind": "scaled_linear", "num_timesteps": 1000,
                         "beta_start": 0.00085, "beta_end": 0.012},
            "unet": {"in_channels": 4, "out_channels": 4, "model_channels": 320,
                     "channel_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                     "attention_resolutions": [4, 2, 1], "num_heads": 8, "context_dim": 768,
                     "transformer_depth": 1, "num_groups": 32, "gelu": "tanh",
                     "attn_slice": None,  # query rows per attention chunk (bounds memory)
                     # timestep frequencies from MindSpore fp32 ops, as the Wukong original
                     "time_freqs": "mindspore_fp32"},
            "vae": {"embed_dim": 4, "z_channels": 4, "ch": 128, "ch_mult": [1, 2, 4, 4],
                    "num_res_blocks": 2, "in_channels": 3, "out_ch": 3, "num_groups": 32},
            "text_encoder": {"vocab_size": 49408, "context_length": 77, "width": 768,
                             "layers": 12, "heads": 12, "ln_eps": 1.0e-7},
        },
        "tokenizer": {"kind": "wordpiece", "vocab_file": "vocab_zh.txt", "pad_id": 0},
        "checkpoint": {"name": "wukong-huahua-ms.ckpt",
                       "url": "https://download.mindspore.cn/toolkits/minddiffusion/wukong-huahua/"
                              "wukong-huahua-ms.ckpt"},
        "sampling": {"sampler": "dpm_solver", "steps": 15, "scale": 7.5, "H": 512, "W": 512,
                     "seed": 42, "quantize": "truncate", "default_prompt": "狗 绘画 写实风格",
                     # "original_fp16": DPM-Solver in the Wukong original's fp16 steps
                     "dpm_solver_precision": "fp32"},
    }


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
    if unet_kw["in_channels"] != vae_kw["embed_dim"]:
        raise ValueError(f"model.unet.in_channels ({unet_kw['in_channels']}) must equal "
                         f"model.vae.embed_dim ({vae_kw['embed_dim']}) for text-to-image")
    return LatentDiffusion(LDMUNet(**unet_kw), AutoencoderKL(**vae_kw),
                           TextConditioner(**m["text_encoder"]), m["scale_factor"])


def size_multiple(model_cfg) -> int:
    """Image sizes must be multiples of this: VAE factor x 2^(UNet levels - 1) (64 for SD-v1)."""
    m = to_plain(model_cfg)
    return 2 ** (len(m["vae"]["ch_mult"]) - 1) * 2 ** (len(m["unet"]["channel_mult"]) - 1)


def _is_training_state(name: str) -> bool:
    low = name.lower()
    return any(m in low for m in TRAINING_STATE_MARKERS)


def split_checkpoint_state(state: dict) -> tuple[dict, list]:
    """Model tensors and the names of training-state tensors that a training checkpoint carries
    (optimizer moments, loss scale, step counters, EMA copies). Anything else stays with the
    model tensors, so that ``load_strict`` reports it as unexpected."""
    model, ignored = {}, []
    for name, value in state.items():
        if name.startswith("meta."):  # our own bookkeeping scalars (step, seed)
            continue
        if _is_training_state(name):
            ignored.append(name)
        else:
            model[name] = value
    return model, ignored


def load_ldm_checkpoint(net: LatentDiffusion, path: str | Path, *, state: dict | None = None,
                        dry_run: bool = False) -> LoadReport:
    """Strictly load a Wukong-format checkpoint (the released ``wukong-huahua-ms.ckpt``, a
    fine-tuned ``wkhh_txt2img-*.ckpt``, or a file written by ``scripts/convert_sd_to_ms.py``).

    Allowed quirks of the released file: the 4 never-used VAE tensors may be absent, and the
    two text embeddings may be stored in another float dtype (cast on load). Training-state
    tensors (optimizer moments, loss scale, ...) are ignored. Anything else that is missing,
    unexpected or misshapen raises ``CheckpointMismatchError`` listing the tensors."""
    path = str(path)
    if state is None:
        state = read_checkpoint(path, "LDM checkpoint")
    model_state, ignored = split_checkpoint_state(state)
    if not any(k.startswith(MODEL_PREFIXES) for k in model_state):
        sample = ", ".join(list(state)[:3])
        raise CheckpointError(
            f"{path} is not a latent-diffusion (Wukong-Huahua format) checkpoint: none of its "
            f"{len(state)} tensors starts with model.diffusion_model. / first_stage_model. / "
            f"cond_stage_model. (first names: {sample}). For a Stable Diffusion file run "
            f"scripts/convert_sd_to_ms.py first.")
    try:
        report = load_strict(net, model_state, allow_missing=UNUSED_VAE_PARAMS, path=path,
                             dry_run=dry_run)
    except CheckpointMismatchError as exc:
        r = exc.report
        hint = ""
        if r.mismatched and all(".diffusion_model.input_blocks.0.0.conv.weight" in n
                                for n, _, _ in r.mismatched):
            hint = " (an inpainting checkpoint? its UNet takes 9 input channels)"
        raise CheckpointMismatchError(r, path + hint) from None
    report.ignored = ignored  # type: ignore[attr-defined]
    return report


def manifest_state(manifest: list, rng: np.random.Generator | None = None) -> dict:
    """{name: array} with exactly a manifest's names, shapes and dtypes (tests, tools)."""
    rng = rng or np.random.default_rng(0)
    out = {}
    for name, shape, dtype in manifest:
        np_dtype = {"Float32": np.float32, "Float16": np.float16}[dtype]
        out[name] = rng.standard_normal(shape, dtype=np.float32).astype(np_dtype)
    return out
