"""Packaging a trained shapes-world LDM as a built-in model folder (what models/shapes_zh is), for
scripts/package_shapes_model.py and scripts/train_shapes_model.sh:

- ``decoder_weights``: the decoder of a ``train.freeze_encoder`` VAE fine-tune, checked against the
  LDM's encoder;
- ``check_eval_of``: whether an eval_shapes_model.py folder evaluated exactly this checkpoint;
- ``median_step_seconds`` / ``model_card``: the README.md of the folder;
- ``SAMPLE_PROMPTS``: the rows of its sample sheet.

No MindSpore at import (checkpoints are read inside the functions).
"""
from __future__ import annotations

from pathlib import Path

SAMPLE_PROMPTS = ["一个红色的圆形在左边", "一个蓝色的正方形在右边", "一个黄色的星形在中间", "一个绿色的三角形在上面",
                  "白色背景上的紫色圆形在下面", "一个橙色的星形在右边", "黑色的正方形在中间", "一个红色的三角形在左边"]


# the two sides of the LDM's autoencoder: train.freeze_encoder keeps ENCODER_SIDE fixed and trains DECODER_SIDE
ENCODER_SIDE = ("first_stage_model.encoder.", "first_stage_model.quant_conv.")
DECODER_SIDE = ("first_stage_model.decoder.", "first_stage_model.post_quant_conv.")


def decoder_weights(state: dict, decoder_run: Path) -> dict:
    """The decoder-side tensors (``post_quant_conv``, ``decoder``) of ``decoder_run/vae.ckpt``,
    after checking that every encoder-side tensor (``encoder``, ``quant_conv``) equals the LDM's:
    a UNet trained on one encoder's latents is useless with another's."""
    import numpy as np

    from mind_diffusion.checkpoint.io import read_checkpoint

    path = decoder_run / "vae.ckpt"
    for f in (path, decoder_run / "metrics.csv"):
        if not f.is_file():
            raise FileNotFoundError(f"{f} missing (--decoder_run must be a finished train_vae.py output_dir)")
    vae = {k: v for k, v in read_checkpoint(path).items() if k.startswith("first_stage_model.")}
    enc = [k for k in state if k.startswith(ENCODER_SIDE)]
    differ = [k for k in enc if k not in vae or vae[k].shape != state[k].shape
              or not np.array_equal(vae[k].astype(np.float32), state[k].astype(np.float32))]
    if not enc or differ:
        raise ValueError(f"{path} has another encoder than the LDM ({len(differ)} of {len(enc)} encoder tensors "
                         f"differ, e.g. {differ[:2]}): fine-tune the decoder with train.freeze_encoder: true "
                         f"from the VAE the LDM was trained with (init.checkpoint)")
    dec = {k: v for k, v in vae.items() if k.startswith(DECODER_SIDE)}
    missing = [k for k in state if k.startswith(DECODER_SIDE) and (k not in dec or dec[k].shape != state[k].shape)]
    if missing:
        raise ValueError(f"{path} lacks or misshapes {len(missing)} decoder tensors of the LDM, e.g. {missing[:2]}")
    return dec


def check_eval_of(eval_dir: Path, ckpt: Path):
    """--eval must be scripts/eval_shapes_model.py's output for exactly this checkpoint (by content)."""
    import json

    from mind_diffusion.checkpoint.io import file_sha256

    md = eval_dir / "adherence.md"
    if not md.is_file():
        raise FileNotFoundError(f"{md} missing (--eval must be the --out folder of scripts/eval_shapes_model.py)")
    first = md.read_text(encoding="utf-8").splitlines()[0] if md.stat().st_size else ""
    try:
        settings = json.loads(first.removeprefix("Settings:").strip())
        evaluated = settings["checkpoint_sha256"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{md} does not start with the 'Settings: {{...}}' line scripts/eval_shapes_model.py "
                         f"writes; evaluate again") from None
    if evaluated != file_sha256(ckpt, len(evaluated or "")):
        raise ValueError(f"{md} evaluated another checkpoint ({settings.get('checkpoint')}, sha256 {evaluated}) "
                         f"than {ckpt} (sha256 {file_sha256(ckpt)}): run scripts/eval_shapes_model.py on "
                         f"this run again")


def median_step_seconds(rows: list[dict]) -> float | None:
    """The median time of a training step between consecutive rows of metrics.csv. time_s restarts in
    each resumed segment, and a run that was paused or shared its CPU for a while would make the summed
    wall time say more about the machine's day than about the model; None without two timed rows."""
    import numpy as np

    per_step = []
    for a, b in zip(rows, rows[1:]):
        ds, dt = int(b["step"]) - int(a["step"]), float(b.get("time_s") or 0) - float(a.get("time_s") or 0)
        if ds > 0 and dt > 0:
            per_step.append(dt / ds)
    return float(np.median(per_step)) if per_step else None


def _steps_and_time(path: Path):
    import csv

    rows = list(csv.DictReader(open(path, encoding="utf-8")))
    steps = rows[-1]["step"] if rows else "?"
    sec = median_step_seconds(rows)
    if sec is None:
        return steps, "an unlogged time"
    total = sec * int(steps)
    span = f"{total / 3600:.1f} h" if total >= 360 else f"{total / 60:.1f} min"
    return steps, f"a median {sec:.2f} s a step ({span} at that rate)"


def model_card(cfg: dict, run: Path, out: Path, adherence: str | None, decoder: bool,
               base_run: Path | None = None) -> str:
    """README.md of a packaged shapes model: what it is, its training, reproduction, use, adherence.
    ``base_run``: the from-scratch run that ``run`` refined (its log is metrics_ldm.csv, the refining
    run's metrics_ldm_refine.csv)."""

    m = cfg["model"]
    f = 2 ** (len(m["vae"]["ch_mult"]) - 1)
    sp = cfg["sampling"]
    h, w = int(sp["height"]), int(sp["width"])
    steps, took = _steps_and_time(out / "metrics_ldm.csv")
    training = f"{steps} steps, {took}"
    if base_run is not None:
        r_steps, r_took = _steps_and_time(out / "metrics_ldm_refine.csv")
        tr = {}
        if (run / "config.yaml").is_file():   # the training config train_ldm.py writes beside its run
            from ..config import read_yaml, to_plain

            tr = to_plain(read_yaml(run / "config.yaml")).get("train") or {}
        lr = (f", learning rate {tr['start_learning_rate']:.0e} → {tr['end_learning_rate']:.0e}"
              if "start_learning_rate" in tr and "end_learning_rate" in tr else "")
        training = (f"{steps} steps from scratch, {took}; then {r_steps} steps refining the UNet with the text "
                    f"encoder frozen{lr}, {r_took}")
    u, te = m["unet"], m["text_encoder"]
    lines = [
        f"# {out.name}: the built-in shapes-world text-to-image model", "",
        "A small latent-diffusion model (the Wukong-Huahua / Stable-Diffusion-v1 architecture, scaled down) "
        "trained from scratch by this repository on the procedural shapes world (`mind_diffusion/shapes/`): "
        "Chinese captions of one or two shapes (圆形, 正方形, 三角形, 星形) in eight colours at five places. "
        "`bash infer.sh` uses it when the official Wukong checkpoint is not in `models/`. It knows nothing "
        "outside this world.", "",
        "| part | |", "|---|---|",
        f"| images | {w}×{h} RGB |",
        f"| autoencoder | AutoencoderKL, f={f}: {h // f}×{w // f}×{m['vae']['z_channels']} latents, "
        f"scale_factor {m['scale_factor']}" + (", decoder fine-tuned with the encoder frozen" if decoder else "")
        + " |",
        f"| latent UNet | model_channels {u['model_channels']}, channel_mult {list(u['channel_mult'])}, "
        f"attention at downsampling {list(u['attention_resolutions'])}, context {u['context_dim']} |",
        f"| text encoder | CLIP-style, width {te['width']}, {te['layers']} layers, WordPiece vocab "
        f"of {te['vocab_size']} (`{cfg['tokenizer']['vocab_file']}`) |",
        f"| training | {training} on the machine that trained it; logs "
        f"`metrics_*.csv`, curves `loss*.png` |",
        f"| default sampler | {sp['sampler']} {sp['num_inference_steps']} steps, guidance scale {sp['guidance_scale']} |", "",
        "## Use", "",
        "```bash",
        'bash infer.sh "一个红色的圆形在左边"            # when models/wukong-huahua-ms.ckpt is absent',
        f".venv/bin/python scripts/txt2img.py --config {out}/config.yaml --ckpt_path {out} --ckpt_name model.ckpt "
        '--prompt "黄色背景上的蓝色星形"',
        "```", "",
        "## Reproduce", "",
        "```bash",
        f"bash scripts/train_shapes_model.sh {out}     # export the world, train both stages, "
        + ("refine, " if base_run is not None else "") + "evaluate, package",
        "```", "",
        (f"It trained from `{base_run}` and was refined in `{run}` (the refine stage of that script)"
         if base_run is not None else f"It trained from `{run}`")
        + "; the configs are `configs/shapes/vae.yaml` and `configs/shapes/ldm.yaml`.", "",
        "## Prompt adherence", "",
    ]
    if adherence:
        lines += ["Measured by `scripts/eval_shapes_model.py` at the default sampler: each image is scored by the "
                  "shapes scorer (foreground colour, contour shape, centroid place) against its prompt. Held-out "
                  "combinations never occur in training. The grids are `adherence_grid_*.png`.", "",
                  adherence.strip()]
    else:
        lines += ["Not measured at packaging time: `scripts/eval_shapes_model.py --model <this folder>`."]
    lines += ["", "`samples.png`: the prompts of `samples.md`."]
    return "\n".join(lines) + "\n"
