"""Package a finished shapes-world LDM training run as the built-in model folder
(what models/shapes_zh is): config.yaml, model.ckpt (the run checkpoint named by --ckpt, stored in fp16 to keep the
folder small; they load into fp32 parameters), the vocabulary, the training logs of both stages
(metrics_vae.csv, metrics_ldm.csv), their loss curves (loss.png), a sample sheet (samples.png +
samples.md, which lists each sample's prompt) and README.md, the model card (what it is, how it was
trained, how to reproduce and use it, and the adherence table of ``--eval``).

    python scripts/package_shapes_model.py runs/shapes-ldm models/shapes_zh --vae_run runs/shapes-vae \
        --eval runs/shapes-ldm/eval

``--decoder_run`` swaps in the decoder of a ``train.freeze_encoder`` fine-tune (its vae.ckpt)
after checking that its encoder is, tensor for tensor, the one the LDM was trained with.

Loading the packaged model is checked before the command returns (strict, as infer.sh does).
"""
import argparse
import shutil
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli

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


def model_card(cfg: dict, run: Path, out: Path, adherence: str | None, decoder: bool) -> str:
    """README.md of a packaged shapes model: what it is, its training, reproduction, use, adherence."""
    import csv

    m = cfg["model"]
    f = 2 ** (len(m["vae"]["ch_mult"]) - 1)
    sp = cfg["sampling"]
    h, w = int(sp["H"]), int(sp["W"])
    rows = list(csv.DictReader(open(out / "metrics_ldm.csv", encoding="utf-8")))
    steps = rows[-1]["step"] if rows else "?"
    sec = median_step_seconds(rows)
    if sec is not None:
        total = sec * int(steps)
        span = f"{total / 3600:.1f} h" if total >= 360 else f"{total / 60:.1f} min"
        took = f"a median {sec:.2f} s a step ({span} at that rate)"
    else:
        took = "an unlogged time"
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
        f"| training | {steps} steps, {took} on the machine that trained it; logs "
        f"`metrics_*.csv`, curves `loss*.png` |",
        f"| default sampler | {sp['sampler']} {sp['steps']} steps, guidance scale {sp['scale']} |", "",
        "## Use", "",
        "```bash",
        'bash infer.sh "一个红色的圆形在左边"            # when models/wukong-huahua-ms.ckpt is absent',
        f".venv/bin/python scripts/txt2img.py --config {out}/config.yaml --ckpt_path {out} --ckpt_name model.ckpt "
        '--prompt "黄色背景上的蓝色星形"',
        "```", "",
        "## Reproduce", "",
        "```bash",
        f"bash scripts/train_shapes_model.sh {out}     # export the world, train both stages, evaluate, package",
        "```", "",
        f"It trained from `{run}`; the configs are `configs/shapes/vae.yaml` and `configs/shapes/ldm.yaml`.", "",
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="train_ldm.py output_dir (model.yaml, model_ema.ckpt, vocab, metrics.csv)")
    p.add_argument("model_dir", help="folder to write (created; existing files are replaced)")
    p.add_argument("--vae_run", default=None, help="train_vae.py output_dir, for its log and curve")
    p.add_argument("--decoder_run", default=None,
                   help="train_vae.py output_dir of a decoder fine-tune (train.freeze_encoder): its vae.ckpt "
                        "replaces the decoder, its log goes to metrics_vae_decoder.csv")
    p.add_argument("--ckpt", default="model_ema.ckpt", help="checkpoint in run_dir (default model_ema.ckpt)")
    p.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16)")
    p.add_argument("--eval", default=None, help="scripts/eval_shapes_model.py output folder of this run: its "
                                                "adherence.md goes into the model card, its grids beside it")
    p.add_argument("--per_prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def job():
        import numpy as np

        from mind_diffusion.checkpoint.io import read_checkpoint, save_atomic
        from mind_diffusion.config import load_config, save_config, to_plain
        from mind_diffusion.ldm.model import ldm_config_defaults
        from mind_diffusion.ldm.pipeline import LDMPipeline
        from mind_diffusion.runtime import init_runtime
        from mind_diffusion.utils.images import make_grid, save_png
        from mind_diffusion.utils.plots import plot_loss

        run, out = Path(args.run_dir), Path(args.model_dir)
        for name in ("model.yaml", args.ckpt, "metrics.csv"):
            if not (run / name).is_file():
                raise FileNotFoundError(f"{run}/{name} missing: is {run} a finished train_ldm.py run?")
        if args.eval:
            check_eval_of(Path(args.eval), run / args.ckpt)
        if args.vae_run and not (Path(args.vae_run) / "metrics.csv").is_file():
            raise FileNotFoundError(f"{Path(args.vae_run) / 'metrics.csv'} missing (--vae_run must be a "
                                    f"train_vae.py output_dir)")
        cfg = to_plain(load_config(run / "model.yaml", [], ldm_config_defaults()))
        vocab = run / cfg["tokenizer"]["vocab_file"]
        if not vocab.is_file():
            raise FileNotFoundError(f"{vocab} missing (train_ldm.py copies the vocabulary next to model.yaml)")
        state = {k: v for k, v in read_checkpoint(run / args.ckpt).items() if not k.startswith("meta.")}
        if args.decoder_run:
            state.update(decoder_weights(state, Path(args.decoder_run)))
        out.mkdir(parents=True, exist_ok=True)
        cfg["checkpoint"] = {"name": "model.ckpt", "url": ""}
        save_config(cfg, out / "config.yaml")
        shutil.copy2(vocab, out / vocab.name)  # where config.yaml says the vocabulary is
        if not args.fp32:
            state = {k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in state.items()}
        save_atomic(state, out / "model.ckpt")
        shutil.copy2(run / "metrics.csv", out / "metrics_ldm.csv")
        plot_loss(out / "metrics_ldm.csv", out / "loss.png", title="latent UNet + text encoder")
        if args.vae_run:
            shutil.copy2(Path(args.vae_run) / "metrics.csv", out / "metrics_vae.csv")
            plot_loss(out / "metrics_vae.csv", out / "loss_vae.png", ylabel="L1 + KL", title="autoencoder")
        if args.decoder_run:
            shutil.copy2(Path(args.decoder_run) / "metrics.csv", out / "metrics_vae_decoder.csv")
            plot_loss(out / "metrics_vae_decoder.csv", out / "loss_vae_decoder.png", ylabel="L1 + L2",
                      title="autoencoder decoder fine-tune (encoder frozen)")

        init_runtime("CPU", "graph", seed=args.seed)
        pipe = LDMPipeline.from_pretrained(out / "config.yaml", out / "model.ckpt")
        prompts = [p for p in SAMPLE_PROMPTS for _ in range(args.per_prompt)]
        images = pipe(prompts, seed=args.seed)
        big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 2x nearest for viewing
        sp = pipe.cfg.sampling
        settings = pipe.settings(prompt=" | ".join(SAMPLE_PROMPTS), negative_prompt="", sampler=str(sp.sampler),
                                 steps=int(sp.steps), scale=float(sp.scale), seed=args.seed,
                                 height=int(sp.H), width=int(sp.W))
        save_png(out / "samples.png", make_grid(big, args.per_prompt), settings)
        rows = ["| row | prompt |", "|---:|---|"] + [f"| {i + 1} | {p} |" for i, p in enumerate(SAMPLE_PROMPTS)]
        (out / "samples.md").write_text(
            f"`samples.png`: {args.per_prompt} images per row (seeds {args.seed}, {args.seed + 1}, ...), "
            f"{settings.get('sampler')} {settings.get('steps')} steps, scale {settings.get('scale')}.\n\n"
            + "\n".join(rows) + "\n", encoding="utf-8")
        adherence = None
        if args.eval:
            adherence = (Path(args.eval) / "adherence.md").read_text(encoding="utf-8")
            for grid in sorted(Path(args.eval).glob("grid_*.png")):
                shutil.copy2(grid, out / f"adherence_{grid.name}")
        (out / "README.md").write_text(model_card(cfg, run, out, adherence, decoder=bool(args.decoder_run)),
                                       encoding="utf-8")
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        print(f"packaged {run} -> {out} ({size / 2**20:.1f} MB)")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
