"""Self-attention of the SD-v1 / Wukong UNet at its three attention sizes (64x64, 32x32 and 16x16
latent positions for a 512 px image, batch 2, 8 heads): ours (``mind_diffusion.ldm.unet.CrossAttention``,
MindSpore GRAPH_MODE, with the fused CPU kernel of ``mind_diffusion/cpu_attention.py`` and with the
composed MindSpore kernels that GPU and Ascend use) against diffusers' ``Attention`` with PyTorch's fused
``scaled_dot_product_attention`` (``AttnProcessor2_0``, the default) and with the classic processor that
materialises the score matrix (``AttnProcessor``), same weights, same input, same thread count.

The composed layer is also split into its three kernels, each timed alone on tensors of the layer's shapes:
``q k^T`` (BatchMatMul), the fp32 softmax over the keys, and ``p v``. The score matrix of the 64x64 level
holds 2 x 8 x 4096 x 4096 floats (1 GiB): the softmax alone streams it twice, which a fused kernel
never does.

Each framework runs in its own subprocess (its own peak RSS and thread pool).

    python bench/attention.py                 # the three levels, 3 timed calls each
    python bench/attention.py --quick         # the 16x16 level only (smoke test)

Writes ``<out>/attention.md`` (default out: bench/results; ``--quick`` only prints).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import mind_diffusion  # noqa: F401  (before numpy and mindspore: ONEDNN_MAX_CPU_ISA, OPENBLAS_CORETYPE)
import numpy as np

from _common import cpu_name

HEADS = 8
LEVELS = ((4096, 320), (1024, 640), (256, 1280))   # (positions, channels) of SD-v1 at 512 px
NAMES = ("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias")


def weights(dim: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, dim])
    w = {n: (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float32) for n in NAMES[:4]}
    w["to_out.0.bias"] = (0.02 * rng.standard_normal(dim)).astype(np.float32)
    return w


def inputs(n: int, dim: int, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, n, dim, 1]).standard_normal((batch, n, dim)).astype(np.float32)


def _timed(fn, repeats: int):
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, first, float(np.median(times))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker_ours(args, levels, out_dir: Path) -> dict:
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    from mind_diffusion.ldm.unet import CrossAttention
    from mind_diffusion import cpu_attention

    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        ms.device_context.cpu.op_tuning.threads_num(args.threads)
    except (AttributeError, RuntimeError) as exc:
        print(f"warning: could not set MindSpore CPU threads: {exc}", file=sys.stderr)

    class SelfAttention(nn.Cell):
        def __init__(self, attn):
            super().__init__()
            self.attn = attn

        def construct(self, x):
            return self.attn(x, x)

    bmm_t = ops.BatchMatMul(transpose_b=True)
    bmm = ops.BatchMatMul()
    softmax = ops.Softmax(axis=-1)

    @ms.jit
    def qk(q, k):
        return bmm_t(q, k)

    @ms.jit
    def soft(s):
        return softmax(s)

    @ms.jit
    def pv(p, v):
        return bmm(p, v)

    def build(dim, fused):
        with contextlib.nullcontext() if fused else cpu_attention.composed():
            attn = CrossAttention(dim, dim, HEADS, dim // HEADS)
        if (attn.fused is not None) != fused:
            raise SystemExit(f"the fused CPU kernel is not available: {cpu_attention.unavailable_reason()}")
        attn.set_train(False)
        w = weights(dim, args.seed)
        for p in attn.get_parameters():
            p.set_data(Tensor(w[p.name.split("attn.", 1)[-1]]))
        return SelfAttention(attn)

    rows = {}
    for n, dim in levels:
        x = Tensor(inputs(n, dim, args.batch, args.seed))
        timed = {}
        for label, fused in (("fused", True), ("composed", False)):
            layer = build(dim, fused)
            out, first, med = _timed(lambda: layer(x).asnumpy(), args.repeats)
            np.save(out_dir / f"ours_{label}_{n}.npy", out)
            timed[label] = (first, med)
            del layer
        rng = np.random.default_rng(0)
        bh, d = args.batch * HEADS, dim // HEADS
        q = Tensor(rng.standard_normal((bh, n, d)).astype(np.float32))
        s = Tensor(rng.standard_normal((bh, n, n)).astype(np.float32))
        parts = {}
        for name, fn in (("q k^T", lambda: qk(q, q).asnumpy()), ("softmax", lambda: soft(s).asnumpy()),
                         ("p v", lambda: pv(s, q).asnumpy())):
            parts[name] = _timed(fn, args.repeats)[2]
        del s
        rows[str(n)] = {"first_s": timed["fused"][0], "s": timed["fused"][1],
                        "composed_s": timed["composed"][1], "parts": parts}
    return {"framework": f"MindSpore {ms.__version__} (graph)", "levels": rows, "peak_rss_mb": peak_rss_mb()}


def worker_torch(args, levels, out_dir: Path) -> dict:
    import diffusers
    import torch
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    torch.set_num_threads(args.threads)
    rows = {}
    for n, dim in levels:
        w = weights(dim, args.seed)
        x = torch.from_numpy(inputs(n, dim, args.batch, args.seed))
        for label, proc in (("sdpa", AttnProcessor2_0()), ("classic", AttnProcessor())):
            attn = Attention(dim, heads=HEADS, dim_head=dim // HEADS).eval()
            attn.set_processor(proc)
            state = dict(attn.named_parameters())
            with torch.no_grad():
                for name in NAMES:
                    state[name].copy_(torch.from_numpy(w[name]))

            def call():
                with torch.no_grad():
                    return attn(x).numpy()

            out, first, med = _timed(call, args.repeats)
            np.save(out_dir / f"torch_{label}_{n}.npy", out)
            rows[f"{label}_{n}"] = {"first_s": first, "s": med}
    return {"framework": f"diffusers {diffusers.__version__} / PyTorch {torch.__version__} (eager)",
            "levels": rows, "peak_rss_mb": peak_rss_mb()}


def run_worker(side: str, args, out_dir: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--out-dir", str(out_dir),
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--batch", str(args.batch),
           "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
    print(f"[{side}] running ...", flush=True)
    res = subprocess.run(cmd, cwd=ROOT, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{side} worker failed with exit code {res.returncode}")
    return json.loads((out_dir / f"{side}.json").read_text())


def report(ours: dict, ref: dict, levels, args, out_dir: Path) -> str:
    lines = ["# Self-attention of the SD-v1 UNet: ours vs diffusers (PyTorch)", "",
             "| positions x channels | ours fused s | ours composed s | q k^T s | softmax s | p v s "
             "| diffusers SDPA s | diffusers classic s | SDPA / fused | SDPA / composed "
             "| max abs diff vs SDPA (fused / composed) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for n, dim in levels:
        o = ours["levels"][str(n)]
        sd, cl = ref["levels"][f"sdpa_{n}"], ref["levels"][f"classic_{n}"]
        sdpa = np.load(out_dir / f"torch_sdpa_{n}.npy")
        diffs = [float(np.abs(np.load(out_dir / f"ours_{label}_{n}.npy") - sdpa).max())
                 for label in ("fused", "composed")]
        p = o["parts"]
        lines.append(f"| {n} x {dim} | {o['s']:.3f} | {o['composed_s']:.3f} | {p['q k^T']:.3f} | {p['softmax']:.3f} "
                     f"| {p['p v']:.3f} | {sd['s']:.3f} | {cl['s']:.3f} | **{sd['s'] / o['s']:.2f}x** "
                     f"| {sd['s'] / o['composed_s']:.2f}x | {diffs[0]:.1e} / {diffs[1]:.1e} |")
    lines += ["",
              f"- Batch {args.batch}, {HEADS} heads, fp32, median of {args.repeats} timed calls after one untimed "
              "call (MindSpore: compilation). `fused`: the default on CPU (one kernel, `mind_diffusion/cpu_attention.py`); "
              "`composed`: MindSpore's BatchMatMul, Softmax, BatchMatMul with the heads transposed in and out (the path of "
              "GPU and Ascend, and of CPU with `MIND_DIFFUSION_FUSED_ATTENTION=off`). The kernel columns time each of the "
              "composed path's three kernels alone on tensors of the layer's shapes (their sum is that layer without its "
              "four projections and the head transposes).",
              f"- Peak RSS: ours {ours['peak_rss_mb']:,.0f} MB, PyTorch side {ref['peak_rss_mb']:,.0f} MB "
              "(each process's maximum over all levels; the ours process also held the kernels' inputs).",
              f"- CPU: {cpu_name()} ({os.cpu_count()} cores), {args.threads} thread(s) for both frameworks.",
              "- `SDPA / ...` > 1: ours faster. PyTorch's SDPA and our fused kernel never write the whole score matrix; "
              "the composed path streams it (1 GiB at 4096 positions) through memory three times.", "",
              "Command: `python bench/attention.py`"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="the 16x16 level only")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--worker", choices=["ours", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    levels = LEVELS[-1:] if args.quick else LEVELS
    if args.worker:
        if args.worker == "ours":
            import mind_diffusion  # noqa: F401  (env defaults before mindspore loads)
        out_dir = Path(args.out_dir)
        res = (worker_ours if args.worker == "ours" else worker_torch)(args, levels, out_dir)
        (out_dir / f"{args.worker}.json").write_text(json.dumps(res))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours = run_worker("ours", args, tmp)
        ref = run_worker("torch", args, tmp)
        text = report(ours, ref, levels, args, tmp)
    print(text)
    if not args.quick:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "attention.md").write_text(text)
        print(f"wrote {out / 'attention.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
