"""GEGLU of the SD-v1 UNet's feed-forward on CPU: the one-kernel inference path
(``cpu_gemm.geglu_op``, ``mind_diffusion/gemm_cpu.cc``) against the composed MindSpore ops it replaces
(split, erf or MindSpore's tanh GeLU, multiplies), in one run, both GELU forms, at the four levels
of the full-size UNet (latent 64x64, batch 2: 8192 / 2048 / 512 / 128 tokens).

The input is the projection's output ``h = [a | gate]`` (the projection itself is the same
``nn.Dense`` on both paths and is not timed). Each row: median of ``--repeats`` timed calls after one
warm-up, GRAPH_MODE, and the largest difference between the two outputs.

Usage (from the repository root)::

    python bench/geglu.py                 # writes bench/results/geglu.md
    python bench/geglu.py --repeats 20 --out /tmp
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import mind_diffusion  # noqa: E402,F401  (before numpy and mindspore: ONEDNN_MAX_CPU_ISA, OPENBLAS_CORETYPE)
import numpy as np  # noqa: E402

from _common import cpu_name  # noqa: E402

# (tokens = batch x positions, inner width) at the UNet's levels 64x64, 32x32, 16x16, 8x8 (latent 64, batch 2)
SHAPES = [(8192, 1280), (2048, 2560), (512, 5120), (128, 5120)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)

    import mindspore as ms
    from mindspore import Tensor, nn

    from mind_diffusion import cpu_gemm
    from mind_diffusion.ldm.unet import GEGLU

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    if not cpu_gemm.enabled():
        raise SystemExit(f"the CPU kernels are not available here: {cpu_gemm.unavailable_reason()}")

    class Fused(nn.Cell):
        def __init__(self, exact):
            super().__init__()
            self.op, self.p = cpu_gemm.geglu_op(exact), cpu_gemm.geglu_params(exact)

        def construct(self, h):
            return self.op(h, self.p)

    class Composed(nn.Cell):       # ldm/unet.py GEGLU's composed path, on the projection's output
        def __init__(self, exact, inner):
            super().__init__()
            with cpu_gemm.mindspore_kernels():
                self.geglu = GEGLU(8, inner, "exact" if exact else "tanh")

        def construct(self, h):
            return self.geglu.composed(h)

    def timed(cell, h):
        cell(h).asnumpy()
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            cell(h).asnumpy()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    rng = np.random.default_rng(0)
    rows = []
    for tokens, inner in SHAPES:
        h = Tensor((rng.standard_normal((tokens, 2 * inner)) * 2).astype(np.float32))
        for exact in (True, False):
            fused, composed = Fused(exact), Composed(exact, inner)
            diff = float(np.abs(fused(h).asnumpy() - composed(h).asnumpy()).max())
            tf, tc = timed(fused, h), timed(composed, h)
            rows.append(f"| {tokens} x {inner} | {'erf (exact)' if exact else 'tanh (Wukong)'} | "
                        f"{tf * 1e3:.1f} | {tc * 1e3:.1f} | **{tc / tf:.1f}x** | {diff:.1e} |")
            print(rows[-1], flush=True)
    md = "\n".join([
        "# GEGLU on CPU: one kernel against the composed ops", "",
        "| tokens x inner | GELU | kernel ms | composed ms | composed / kernel | max abs diff |",
        "|---|---|---:|---:|---:|---:|", *rows, "",
        f"- CPU: {cpu_name()}; MindSpore {ms.__version__}, GRAPH_MODE; median of {args.repeats} calls after a "
        "warm-up; input N(0, 4); the projection before it is not timed. In the SD-v1 UNet (latent 64x64, "
        "batch 2) there are 5 GEGLUs at the first shape, 5 at the second, 5 at the third and 1 at the fourth.", ""])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "geglu.md").write_text(md)
    print(f"wrote {out / 'geglu.md'}")


if __name__ == "__main__":
    main()
