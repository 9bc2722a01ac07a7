"""LDM defaults: the single source of every shape and default of the latent-diffusion family.

``ldm_config_defaults()`` is the inference schema (Wukong-Huahua ``v1-inference-chinese.yaml``;
YAML files under ``configs/wukong/`` and ``configs/sd/`` override it),
``ldm_train_config_defaults()`` the fine-tuning schema (the original's ``train_config.json`` +
argparse), ``vae_train_config_defaults()`` the autoencoder training schema and
``text_encoder_defaults()`` the text tower's shape.
"""
from __future__ import annotations

from ..config import sampling_defaults


def text_encoder_defaults() -> dict:
    """Wukong-Huahua's text tower (its ``text_encoder.py``): CLIP ViT-L/14 text shape, LayerNorm eps
    1e-7 (MindSpore's default there; the HF CLIP config says 1e-5)."""
    return {"vocab_size": 49408, "context_length": 77, "width": 768, "layers": 12, "heads": 12, "ln_eps": 1e-7}


def ldm_config_defaults() -> dict:
    """Schema + defaults: Wukong-Huahua ``v1-inference-chinese.yaml``."""
    return {
        "model": {
            "family": "wukong",
            "scale_factor": 0.18215,
            "schedule": {"kind": "scaled_linear", "num_timesteps": 1000,
                         "beta_start": 0.00085, "beta_end": 0.012,
                         # precision of the sampler's tables: float64, or the original's
                         # float32 tensors (the inpaint release keeps its schedule in fp32)
                         "coeff_dtype": "float64"},
            "unet": {"in_channels": 4, "out_channels": 4, "model_channels": 320,
                     "channel_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                     "attention_resolutions": [4, 2, 1], "num_heads": 8, "context_dim": 768,
                     "transformer_depth": 1, "num_groups": 32, "gelu": "tanh",
                     "attn_slice": None,  # query rows per attention chunk (bounds memory)
                     # timestep frequencies from MindSpore fp32 ops, as the Wukong original
                     "time_freqs": "mindspore_fp32",
                     # LoRA (the original's v1-*-chinese-lora.yaml keys); lora_targets: cell-path
                     # suffixes, null = the attention projections to_q, to_k, to_v, to_out.0
                     "enable_lora": False, "lora_rank": 4, "lora_alpha": 4.0, "lora_targets": None},
            "vae": {"embed_dim": 4, "z_channels": 4, "ch": 128, "ch_mult": [1, 2, 4, 4],
                    "num_res_blocks": 2, "in_channels": 3, "out_ch": 3, "num_groups": 32},
            # LoRA on the text encoder too (mindone's option); lora_targets null = the attention
            # projections attn.attn.in_proj (fused q/k/v) and attn.attn.out_proj
            "text_encoder": {**text_encoder_defaults(), "enable_lora": False, "lora_rank": 4,
                             "lora_alpha": 4.0, "lora_targets": None},
        },
        "tokenizer": {"kind": "wordpiece", "vocab_file": "vocab_zh.txt", "pad_id": 0},
        "checkpoint": {"name": "wukong-huahua-ms.ckpt",
                       "url": "https://download.mindspore.cn/toolkits/minddiffusion/wukong-huahua/"
                              "wukong-huahua-ms.ckpt"},
        # the one sampling vocabulary (the original's steps / scale / H / W are read as
        # num_inference_steps / guidance_scale / height / width)
        "sampling": sampling_defaults(
            sampler="dpm_solver", num_inference_steps=15, guidance_scale=7.5, height=512,
            width=512, num_images_per_prompt=1, seed=42, negative_prompt="",
            quantize="truncate", default_prompt="狗 绘画 写实风格",
            # "original_fp16": DPM-Solver in the Wukong original's fp16 steps
            dpm_solver_precision="fp32"),
    }


def ldm_train_config_defaults() -> dict:
    """Schema + defaults: the original's fine-tuning recipe (``train_config.json`` + argparse)."""
    base = ldm_config_defaults()
    return {
        "model": base["model"],
        "tokenizer": base["tokenizer"],
        "sampling": base["sampling"],   # copied into the exported model.yaml
        "data": {
            "kind": "csv",
            "path": "dataset/",
            "image_size": 512,
            "random_crop": False,
            "filter_small_size": True,
            "image_filter_size": 256,
            # the original has no caption dropout; 0.1 trains the unconditional branch for
            # classifier-free guidance (the built-in model uses it)
            "caption_dropout": 0.0,
            # the original's order is sequential (its GeneratorDataset shuffle index is ignored)
            "shuffle": False,
            # encode every image once with the frozen VAE (mean, logvar) and sample per step;
            # needs random_crop=false (identical losses to the uncached path, see the tests)
            "cache_latents": False,
        },
        "train": {
            "steps": 0,            # 0: epochs x steps_per_epoch
            "epochs": 20,
            "batch_size": 3,       # per worker (train_batch_size)
            # micro-batches per update: global batch = batch_size x workers x grad_accum_steps
            "grad_accum_steps": 1,
            "optim": "adamw",      # adamw -> AdamWeightDecay, adam -> Adam (no decay)
            "start_learning_rate": 1.0e-5,
            "end_learning_rate": 1.0e-7,
            "warmup_steps": 1000,
            "decay_steps": 0,      # 0: the total number of steps
            "betas": [0.9, 0.98],
            "eps": 1.0e-6,
            # the JSON's weight_decay 0.01 is ignored by the original: optim.py hard-codes 1e-6
            "weight_decay": 1.0e-6,
            # the original never freezes the text encoder (cond_stage_trainable is not enforced)
            "train_text_encoder": True,
            # > 0: the text encoder's learning rate is 0 until this step (its Adam moments still
            # accumulate), then follows the schedule. The built-in shapes model needs it: a random
            # encoder's outputs carry the place words, and an encoder trained from step 0 drops them
            # while the UNet learns colour first (0 = trained from the start, as the original)
            "text_encoder_start_step": 0,
            "unet_dropout": 0.1,   # v1-train-chinese.yaml
            "schedule_fp16": True,  # use_fp16: the q_sample coefficients are fp16 tensors
            "loss_weighting": "none",  # the original; "v": see LatentDiffusionLoss
            "loss_scale": "dynamic",
            "init_loss_scale": 65536.0,
            "loss_scale_window": 1000,
            # 0 = none (single device in the original); its parallel cell clips at 1.0
            "clip_grad_norm": 0.0,
            "ema_decay": 0.0,      # 0 = no EMA (the original has none)
            "ema_start": 0,
            "ema_every": 1,
            "ckpt_every": 10000,   # save_checkpoint_steps; 0 = once per epoch
            "keep_checkpoints": 3,
            "log_every": 1,        # callback_size 1
            "output_dir": "output/txt2img",
            "seed": 3407,
        },
        "init": {
            "checkpoint": None,      # e.g. models/wukong-huahua-ms.ckpt (strict load)
            "vae_checkpoint": None,  # first_stage_model.* weights (scripts/train_vae.py output)
            "vocab": None,           # default: tokenizer.vocab_file next to init.checkpoint
        },
    }


def vae_train_config_defaults() -> dict:
    return {
        "model": {"vae": ldm_config_defaults()["model"]["vae"]},
        "data": {"kind": "csv", "path": "dataset/", "image_size": 256, "random_crop": True,
                 "filter_small_size": False, "image_filter_size": 256, "shuffle": True},
        "train": {
            "steps": 0, "epochs": 10, "batch_size": 4, "grad_accum_steps": 1, "lr": 1.0e-4, "betas": [0.5, 0.9],
            "eps": 1.0e-8,
            "kl_weight": 1.0e-6, "l2_weight": 0.0, "contrast_weight": 0.0, "freeze_encoder": False,
            "loss_scale": "none", "init_loss_scale": 65536.0, "loss_scale_window": 1000,
            "clip_grad_norm": 0.0, "ema_decay": 0.0, "ema_start": 0, "ema_every": 1,
            "ckpt_every": 1000, "keep_checkpoints": 3, "log_every": 10, "output_dir": "runs/vae",
            "seed": 0,
        },
        "init": {"checkpoint": None},
    }
