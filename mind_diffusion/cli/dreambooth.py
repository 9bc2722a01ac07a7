"""The pipeline DreamBooth draws its missing class images with (prior preservation).

It lives with the entry points, not in ``ldm/dreambooth_training.py``: training code does not
import pipelines (the layering in DESIGN.md), so the script hands this factory to
:func:`mind_diffusion.ldm.dreambooth_training.build_dreambooth_trainer`.
"""
from __future__ import annotations


def class_image_pipeline(cfg, ldm, tokenizer):
    """An :class:`~mind_diffusion.ldm.pipeline.LDMPipeline` over the base model being trained
    (``ldm``), sampling at the training image size with the config's ``sampling:`` defaults."""
    from omegaconf import OmegaConf

    from ..checkpoint.io import file_sha256
    from ..config import to_plain
    from ..ldm.pipeline import LDMPipeline

    samp = to_plain(cfg.sampling)
    samp["height"] = samp["width"] = int(cfg.data.image_size)
    pcfg = OmegaConf.create({"model": to_plain(cfg.model), "tokenizer": to_plain(cfg.tokenizer),
                             "checkpoint": {"name": "model.ckpt", "url": ""}, "sampling": samp})
    ckpt = cfg.init.checkpoint
    return LDMPipeline(ldm, tokenizer, pcfg, str(ckpt) if ckpt else None,
                       file_sha256(ckpt) if ckpt else None)
