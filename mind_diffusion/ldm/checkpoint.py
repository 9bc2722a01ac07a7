"""Wukong-Huahua checkpoints: the released file's name prefixes, and strict loading of it (and of
fine-tuned or converted files in its layout) into ``LatentDiffusion``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..checkpoint.io import (CheckpointError, CheckpointMismatchError, LoadReport, load_strict,
                             read_checkpoint)
from ..nn.lora import lora_parameters

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
                          "epoch_num", "step_num", "loss_scale", "scale_good_steps", "accum", "ema.")


def _is_training_state(name: str) -> bool:
    low = name.lower()
    return any(m in low for m in TRAINING_STATE_MARKERS)


def _is_lora_tensor(name: str) -> bool:
    low = name.lower()
    return "_delta_lora_" in low or ".lora_" in low or low.startswith("lora_")


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


def load_ldm_checkpoint(net, path: str | Path, *, state: dict | None = None,
                        dry_run: bool = False) -> LoadReport:
    """Strictly load a Wukong-format checkpoint (the released ``wukong-huahua-ms.ckpt``, a
    fine-tuned ``wkhh_txt2img-*.ckpt``, or a file written by ``scripts/convert_sd_to_ms.py``).

    Allowed quirks of the released file: the 4 never-used VAE tensors may be absent, and the
    two text embeddings may be stored in another float dtype (cast on load). Training-state
    tensors (optimizer moments, loss scale, ...) are ignored. The LoRA tensors of a network
    built with LoRA (``*.tk_delta_lora_a/b``) may be absent: a base checkpoint leaves them at
    their initial values (B = 0, no effect) until a LoRA file is loaded. Anything else that is missing,
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
    if model_state and all(_is_lora_tensor(k) for k in model_state):
        raise CheckpointError(
            f"{path} is a LoRA file ({len(model_state)} LoRA tensors), not a model checkpoint: keep the "
            f"base model in --ckpt_path/--ckpt_name and pass this file with --lora {Path(path).name}")
    try:
        lora = [p.name for p in lora_parameters(net)] if hasattr(net, "cells_and_names") else []
        report = load_strict(net, model_state, allow_missing=UNUSED_VAE_PARAMS + tuple(lora), path=path,
                             dry_run=dry_run)
    except CheckpointMismatchError as exc:
        r = exc.report
        raise CheckpointMismatchError(r, path + _channels_hint(r.mismatched)) from None
    report.ignored = ignored  # type: ignore[attr-defined]
    return report


def _channels_hint(mismatched) -> str:
    """Which script and config fit a file whose only misfit is the UNet's input channels."""
    if not mismatched or not all(".diffusion_model.input_blocks.0.0.conv.weight" in n
                                 for n, _, _ in mismatched):
        return ""
    _, file_shape, net_shape = mismatched[0]
    if len(file_shape) == 4 and file_shape[1] == 9:
        return (" (an inpainting checkpoint: its UNet takes 9 input channels; use it with "
                "scripts/inpaint.py and configs/wukong/inpaint-inference.yaml, or "
                "configs/sd/v1-inpainting-inference.yaml for a converted SD inpainting model)")
    if len(file_shape) == 4 and file_shape[1] == 4 and len(net_shape) == 4 and net_shape[1] == 9:
        return (" (a text-to-image checkpoint: its UNet takes 4 input channels, the config "
                "describes the 9-channel inpainting UNet; use it with a text-to-image config "
                "such as configs/wukong/v1-inference-chinese.yaml: scripts/txt2img.py, "
                "scripts/img2img.py, or scripts/inpaint.py in blend mode)")
    return ""


def manifest_state(manifest: list, rng: np.random.Generator | None = None) -> dict:
    """{name: array} with exactly a manifest's names, shapes and dtypes (tests, tools)."""
    rng = rng or np.random.default_rng(0)
    out = {}
    for name, shape, dtype in manifest:
        np_dtype = {"Float32": np.float32, "Float16": np.float16}[dtype]
        out[name] = rng.standard_normal(shape, dtype=np.float32).astype(np_dtype)
    return out
