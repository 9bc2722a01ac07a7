"""Package a finished DDPM training run as a model folder (what models/ddpm_digits16 is):
config.yaml, model_ema.ckpt (EMA weights only), classes.txt, the training log metrics.csv,
a loss curve PNG and a sample grid PNG (one row per class).

    python scripts/package_ddpm_model.py runs/ddpm_digits16 models/ddpm_digits16
"""
import argparse
import shutil
import sys
from pathlib import Path

from mind_diffusion.cli import run_cli


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("model_dir")
    p.add_argument("--per_class", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    def job():
        import numpy as np

        from mind_diffusion.ddpm.pipeline import DDPMPipeline
        from mind_diffusion.runtime import init_runtime
        from mind_diffusion.utils.images import make_grid, save_png
        from mind_diffusion.utils.plots import plot_loss

        run, out = Path(args.run_dir), Path(args.model_dir)
        for name in ("config.yaml", "model_ema.ckpt", "metrics.csv"):
            if not (run / name).is_file():
                raise FileNotFoundError(f"{run}/{name} missing: is {run} a finished training run?")
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "model_ema.ckpt", "metrics.csv", "classes.txt"):
            if (run / name).is_file():
                shutil.copy2(run / name, out / name)
        plot_loss(out / "metrics.csv", out / "loss.png")
        init_runtime("CPU", "graph", seed=args.seed)
        pipe = DDPMPipeline.from_pretrained(out)
        labels = np.repeat(np.arange(pipe.num_classes), args.per_class)
        images = pipe(labels, seed=args.seed, batch_size=len(labels)).images
        big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 2x nearest for viewing
        save_png(out / "samples.png", make_grid(big, args.per_class), pipe.settings(seed=args.seed))
        print(f"packaged {run} -> {out}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
