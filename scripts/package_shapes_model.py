"""Package a finished shapes-world LDM training run as the built-in model folder
(what models/shapes_zh is): config.yaml, model.ckpt (the run checkpoint named by --ckpt, stored in fp16 to keep the
folder small; they load into fp32 parameters), the vocabulary, the training logs of both stages
(metrics_vae.csv, metrics_ldm.csv), their loss curves (loss.png), a sample sheet (samples.png +
samples.md, which lists each sample's prompt) and README.md, the model card (what it is, how it was
trained, how to reproduce and use it, and the adherence table of ``--eval``).

    python scripts/package_shapes_model.py runs/shapes-ldm models/shapes_zh --vae_run runs/shapes-vae \
        --eval runs/shapes-ldm/eval

``--base_run`` names the from-scratch run that ``run_dir`` refined (train_shapes_model.sh's refine
stage: ``init.checkpoint`` = its model.ckpt): its log becomes metrics_ldm.csv / loss.png and the
refining run's metrics_ldm_refine.csv / loss_refine.png, and the card tells both.

``--decoder_run`` swaps in the decoder of a ``train.freeze_encoder`` fine-tune (its vae.ckpt)
after checking that its encoder is, tensor for tensor, the one the LDM was trained with.

Loading the packaged model is checked before the command returns (strict, as infer.sh does).
"""
import argparse
import shutil
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="train_ldm.py output_dir (model.yaml, model_ema.ckpt, vocab, metrics.csv)")
    p.add_argument("model_dir", help="folder to write (created; existing files are replaced)")
    p.add_argument("--vae_run", default=None, help="train_vae.py output_dir, for its log and curve")
    p.add_argument("--base_run", default=None,
                   help="train_ldm.py output_dir of the from-scratch run that run_dir continued (its log and curve)")
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
        from mind_diffusion.ldm.config import ldm_config_defaults
        from mind_diffusion.ldm.pipeline import LDMPipeline
        from mind_diffusion.runtime import init_runtime
        from mind_diffusion.shapes.packaging import SAMPLE_PROMPTS, check_eval_of, decoder_weights, model_card
        from mind_diffusion.utils.images import make_grid, save_png
        from mind_diffusion.utils.plots import plot_loss

        run, out = Path(args.run_dir), Path(args.model_dir)
        for name in ("model.yaml", args.ckpt, "metrics.csv"):
            if not (run / name).is_file():
                raise FileNotFoundError(f"{run}/{name} missing: is {run} a finished train_ldm.py run?")
        if args.eval:
            check_eval_of(Path(args.eval), run / args.ckpt)
        if args.base_run and not (Path(args.base_run) / "metrics.csv").is_file():
            raise FileNotFoundError(f"{Path(args.base_run) / 'metrics.csv'} missing (--base_run must be the "
                                    f"train_ldm.py output_dir that run_dir continued)")
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
        for stale in ("metrics_ldm_refine.csv", "loss_refine.png"):
            (out / stale).unlink(missing_ok=True)      # a card must not describe a refining it did not have
        if args.base_run:
            shutil.copy2(Path(args.base_run) / "metrics.csv", out / "metrics_ldm.csv")
            shutil.copy2(run / "metrics.csv", out / "metrics_ldm_refine.csv")
            plot_loss(out / "metrics_ldm_refine.csv", out / "loss_refine.png",
                      title="latent UNet refined (text encoder frozen)")
        else:
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
        images = pipe(prompts, seed=args.seed).images
        big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 2x nearest for viewing
        sp = pipe.cfg.sampling
        settings = pipe.settings(prompt=" | ".join(SAMPLE_PROMPTS), negative_prompt="", sampler=str(sp.sampler),
                                 steps=int(sp.num_inference_steps), scale=float(sp.guidance_scale),
                                 seed=args.seed, height=int(sp.height), width=int(sp.width))
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
        (out / "README.md").write_text(model_card(cfg, run, out, adherence, decoder=bool(args.decoder_run),
                                                  base_run=Path(args.base_run) if args.base_run else None),
                                       encoding="utf-8")
        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        print(f"packaged {run} -> {out} ({size / 2**20:.1f} MB)")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
