"""One forward step of the full-size SD-v1 / Wukong-Huahua UNet on CPU: Mind-Diffusion
(``LDMUNet``, MindSpore GRAPH_MODE) vs diffusers ``UNet2DConditionModel`` (PyTorch eager),
same random weights, same input, same machine and thread count.

Each side runs in its own subprocess so that its peak RSS is its own. Both build the network,
then fill it with the same deterministic random weights (generated per CompVis tensor name
from a seed, moved through ``mind_diffusion.checkpoint.convert_unet``; no zero-initialised
layers, so the output is non-trivial). The first call (MindSpore: graph compilation) is timed
separately, then ``--warmup`` untimed calls, then ``--repeats`` timed calls (median reported).
Ours uses ``gelu="exact"`` (what diffusers computes) so the two outputs are comparable;
Wukong's tanh-GELU costs the same. On CPU our side runs twice (``--kernels both``, the default):
with its convolutions, dense layers and norms through OpenBLAS (``mind_diffusion/cpu_gemm.py``, the
default path on CPU) and through MindSpore's own kernels (``MIND_DIFFUSION_BLAS=off``);
``--attention both`` adds a row with MindSpore's composed attention kernels (the path of GPU and
Ascend) instead of the fused attention kernel (``mind_diffusion/cpu_attention.py``). ``--pynative`` adds
a row of our side in PYNATIVE_MODE (fused attention): no graph compilation, so its peak RSS shows
how much of the graph row's is the compiled graph and its memory pool rather than the model.

Usage (from the repository root)::

    python bench/ldm_unet_step.py                  # 64x64 latent, batch 2, context (2, 77, 768)
    python bench/ldm_unet_step.py --quick          # tiny config, smoke test (~1 min)
    python bench/ldm_unet_step.py --size 32 --repeats 5 --threads 2
    python bench/ldm_unet_step.py --device GPU --fp16  # both sides on the GPU in fp16 (fp32 norms)

Writes ``<out>/ldm_unet_step.md`` (default out: bench/results; ``--quick`` only prints).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import mind_diffusion  # noqa: F401  (before numpy and mindspore: ONEDNN_MAX_CPU_ISA, OPENBLAS_CORETYPE)
import numpy as np

from _common import cpu_name

FULL = {}  # LDMUNet defaults = SD-v1 / Wukong
QUICK = {"model_channels": 32, "channel_mult": (1, 2), "num_res_blocks": 1, "attention_resolutions": (2, 1),
         "num_heads": 2, "context_dim": 64, "num_groups": 8}


_NORM = re.compile(r"(?:^|\.)(?:in_layers\.0|out_layers\.0|norm[123]?|out\.0)\.weight$")


def compvis_weight(name: str, shape, seed: int) -> np.ndarray:
    """Deterministic random tensor for a CompVis UNet name: norm gamma 1 +- 0.1, biases 0.02 N(0,1),
    weights N(0, 1/fan_in)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    shape = tuple(shape)
    leaf = name.rsplit(".", 1)[-1]
    if _NORM.search(name):
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if leaf == "bias":
        return (0.02 * rng.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def make_inputs(size: int, batch: int, context_dim: int, seed: int):
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, 4, size, size)).astype(np.float32)
    t = np.array([999, 500, 250, 1][:batch] + [500] * max(0, batch - 4), np.int64)
    ctx = rng.standard_normal((batch, 77, context_dim)).astype(np.float32)
    return x, t, ctx


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time_calls(fn, warmup: int, repeats: int):
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, first, times


def worker_ours(cfg, args, out_dir: Path) -> dict:
    import mindspore as ms
    from mindspore import Tensor

    from mind_diffusion.checkpoint.convert_unet import (
        compvis_unet_to_ours,
        ours_to_compvis_unet,
    )
    from mind_diffusion import timings
    from mind_diffusion.ldm.unet import LDMUNet
    from mind_diffusion.nn.layers import apply_compute_dtype

    ms.set_context(mode=ms.PYNATIVE_MODE if args.mode == "pynative" else ms.GRAPH_MODE)
    ms.set_device(args.device)
    if args.device == "CPU":
        try:
            ms.device_context.cpu.op_tuning.threads_num(args.threads)
        except (AttributeError, RuntimeError) as exc:
            print(f"warning: could not set MindSpore CPU threads: {exc}", file=sys.stderr)
    t0 = time.perf_counter()
    net = LDMUNet(gelu="exact", attn_slice=args.attn_slice, **cfg)
    if args.fp16:
        apply_compute_dtype(net, ms.float16)
    net.set_train(False)
    params = {p.name: p for p in net.get_parameters()}
    names = ours_to_compvis_unet({n: None for n in params})
    back = compvis_unet_to_ours({cv: cv for cv in names})          # our name -> CompVis name
    for ours_name, cv_name in back.items():
        p = params[ours_name]
        p.set_data(Tensor(compvis_weight(cv_name, p.shape, args.seed)))
    build_s = time.perf_counter() - t0
    rss_weights = peak_rss_mb()
    x, t, ctx = make_inputs(args.size, args.batch, net_context_dim(cfg), args.seed)
    xs, ts, cs = Tensor(x), Tensor(t.astype(np.int32)), Tensor(ctx)
    # through the library's entry for compiled calls (what the pipelines use): in graph mode the first
    # call compiles explicitly and returns the compiler's freed memory before the step runs
    out, first, times = _time_calls(lambda: timings.call(net, xs, ts, cs).asnumpy().astype(np.float32), args.warmup,
                                    args.repeats)
    np.save(out_dir / f"{args.worker_tag}.npy", out)
    dev_mb = ms.runtime.max_memory_allocated() / 2**20 if args.device != "CPU" else None
    from mind_diffusion.ldm.unet import CrossAttention

    fused = any(c.fused is not None for _, c in net.cells_and_names() if isinstance(c, CrossAttention))
    if args.device == "CPU" and fused != (args.attention == "fused"):
        from mind_diffusion import cpu_attention

        raise SystemExit(f"asked for {args.attention} attention, got the other: {cpu_attention.unavailable_reason()}")
    blas = any(getattr(c, "_blas", False) for _, c in net.cells_and_names())
    if args.device == "CPU" and blas != (args.kernels == "blas"):
        from mind_diffusion import cpu_gemm

        raise SystemExit(f"asked for {args.kernels} kernels, got the other: {cpu_gemm.unavailable_reason()}")
    kernels = "MindSpore conv/dense/norm kernels"
    if blas:
        from mind_diffusion import cpu_gemm

        kernels = ("oneDNN conv, OpenBLAS dense/norm kernels" if cpu_gemm.conv_backend() == "onednn"
                   else "OpenBLAS conv/dense/norm kernels")
    attention = f", {kernels}, {'fused' if fused else 'composed'} attention" if args.device == "CPU" else ""
    return {"framework": f"MindSpore {ms.__version__} ({args.mode}, {args.device}{', fp16' if args.fp16 else ''}{attention})",
            "build_s": build_s, "first_s": first, "device_peak_mb": dev_mb,
            "times": times, "rss_weights_mb": rss_weights, "peak_rss_mb": peak_rss_mb(),
            "params": int(sum(int(np.prod(p.shape)) for p in params.values()))}


def worker_diffusers(cfg, args, out_dir: Path) -> dict:
    import diffusers
    import torch

    from mind_diffusion.checkpoint.convert_unet import (
        compvis_unet_config_to_diffusers,
        diffusers_unet_to_compvis,
    )

    torch.set_num_threads(args.threads)
    dev = "cuda" if args.device == "GPU" else "cpu"
    if args.device not in ("CPU", "GPU"):
        raise SystemExit(f"diffusers side: no PyTorch device for {args.device}")
    t0 = time.perf_counter()
    dcfg = compvis_unet_config_to_diffusers(cfg)
    unet = diffusers.UNet2DConditionModel(**dcfg).eval()
    state = dict(unet.named_parameters())
    to_cv = diffusers_unet_to_compvis({n: n for n in state}, dcfg)  # CompVis name -> diffusers name
    with torch.no_grad():
        for cv_name, d_name in to_cv.items():
            p = state[d_name]
            p.copy_(torch.from_numpy(compvis_weight(cv_name, p.shape, args.seed)))
    dtype = torch.float16 if args.fp16 else torch.float32
    unet = unet.to(dev, dtype)
    build_s = time.perf_counter() - t0
    rss_weights = peak_rss_mb()
    x, t, ctx = make_inputs(args.size, args.batch, net_context_dim(cfg), args.seed)
    xs, ts = torch.from_numpy(x).to(dev, dtype), torch.from_numpy(t).to(dev)
    cs = torch.from_numpy(ctx).to(dev, dtype)

    def step():
        with torch.no_grad():
            return unet(xs, ts, encoder_hidden_states=cs).sample.float().cpu().numpy()

    out, first, times = _time_calls(step, args.warmup, args.repeats)
    np.save(out_dir / "diffusers.npy", out)
    dev_mb = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else None
    return {"framework": f"diffusers {diffusers.__version__} / PyTorch {torch.__version__} "
                         f"(eager, {dev}{', fp16' if args.fp16 else ''})", "device_peak_mb": dev_mb,
            "build_s": build_s, "first_s": first, "times": times, "rss_weights_mb": rss_weights,
            "peak_rss_mb": peak_rss_mb(), "params": int(sum(p.numel() for p in state.values()))}


def net_context_dim(cfg) -> int:
    return int(cfg.get("context_dim", 768))


def run_worker(side: str, args, out_dir: Path, attention: str = "fused", mode: str = "graph",
               kernels: str = "blas", cache: str | None = None, tag: str | None = None) -> dict:
    """One row in its own process; ``cache``: a MindSpore compile cache folder (``MS_COMPILER_CACHE_*``)."""
    if tag is None:
        tag = side if side == "diffusers" or attention == "fused" else f"{side}_{attention}"
        if side != "diffusers" and kernels != "blas":
            tag += f"_{kernels}"
        if side != "diffusers" and mode != "graph":
            tag += f"_{mode}"
    env = dict(os.environ)
    if cache is not None:
        env.update(MS_COMPILER_CACHE_ENABLE="1", MS_COMPILER_CACHE_PATH=cache)
    if attention == "composed":
        env["MIND_DIFFUSION_FUSED_ATTENTION"] = "off"
    if kernels == "mindspore":
        env["MIND_DIFFUSION_BLAS"] = "off"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--out-dir", str(out_dir),
           "--worker-tag", tag, "--attention", attention, "--mode", mode, "--kernels", kernels,
           "--threads", str(args.threads), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--size", str(args.size), "--batch", str(args.batch), "--seed", str(args.seed),
           "--device", args.device] + (["--fp16"] if args.fp16 else [])
    if args.quick:
        cmd.append("--quick")
    if args.attn_slice:
        cmd += ["--attn-slice", str(args.attn_slice)]
    print(f"[{tag}] running ...", flush=True)
    res = subprocess.run(cmd, cwd=ROOT, check=False, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{tag} worker failed with exit code {res.returncode}")
    return {**json.loads((out_dir / f"{tag}.json").read_text()), "tag": tag}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="CPU threads for both frameworks (default: all cores)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per side (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls after the first one")
    ap.add_argument("--size", type=int, default=None, help="latent size (default 64; 16 with --quick)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--attn-slice", type=int, default=None,
                    help="LDMUNet attn_slice for our side (query rows per chunk; default: unsliced)")
    ap.add_argument("--quick", action="store_true", help="tiny UNet config for a smoke test")
    ap.add_argument("--device", default="CPU", choices=["CPU", "GPU"],
                    help="where both sides run (GPU: MindSpore GPU vs PyTorch CUDA)")
    ap.add_argument("--fp16", action="store_true", help="fp16 compute on both sides (ours: fp32 norms)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--kernels", choices=["both", "blas", "mindspore"], default="both",
                    help="CPU: our convolutions, dense layers and norms through OpenBLAS (the default path, "
                         "mind_diffusion/cpu_gemm.py), through MindSpore's own kernels (MIND_DIFFUSION_BLAS=off), "
                         "or both rows")
    ap.add_argument("--attention", choices=["both", "fused", "composed"], default="fused",
                    help="our side's attention on CPU: the fused kernel (the default path), MindSpore's "
                         "composed kernels (GPU / Ascend's path, MIND_DIFFUSION_FUSED_ATTENTION=off), or both rows")
    ap.add_argument("--cached", action=argparse.BooleanOptionalAction, default=True,
                    help="on CPU, a row of ours in a second process that loads its graph from the compile "
                         "cache the first one wrote (what later runs of the scripts do); --no-cached: skip it")
    ap.add_argument("--pynative", action="store_true",
                    help="add a row of our side in PYNATIVE_MODE (no graph compilation; fused attention on CPU)")
    ap.add_argument("--mode", choices=["graph", "pynative"], default="graph", help=argparse.SUPPRESS)
    ap.add_argument("--worker", choices=["ours", "diffusers"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-tag", help=argparse.SUPPRESS)
    ap.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.size is None:
        args.size = 16 if args.quick else 64
    cfg = QUICK if args.quick else FULL
    down = 2 ** (len(cfg.get("channel_mult", (1, 2, 4, 4))) - 1)
    if args.size % down:
        ap.error(f"--size must be divisible by {down}")

    if args.worker:
        out_dir = Path(args.out_dir)
        fn = worker_ours if args.worker == "ours" else worker_diffusers
        res = fn(cfg, args, out_dir)
        (out_dir / f"{args.worker_tag or args.worker}.json").write_text(json.dumps(res))
        return res

    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="ldm_unet_bench_") as tmp:
        tmp = Path(tmp)
        kinds = ["fused", "composed"] if args.attention == "both" else [args.attention]
        if args.device != "CPU":
            kinds = ["fused"]      # the fused kernel is CPU-only: one row of the device's own path
        main_kernels = "mindspore" if args.kernels == "mindspore" else "blas"
        rows = [run_worker("ours", args, tmp, kind, kernels=main_kernels) for kind in kinds]
        if args.device == "CPU" and args.kernels == "both":
            rows.append(run_worker("ours", args, tmp, "fused", kernels="mindspore"))
        if args.pynative:
            rows.append(run_worker("ours", args, tmp, "fused", "pynative"))
        if args.cached and args.device == "CPU":
            # what every later run of a script is (the scripts keep a compile cache by default): one
            # process fills the cache, the next one loads its graph from it instead of compiling
            cache = str(tmp / "compile_cache")
            run_worker("ours", args, tmp, cache=cache, tag="ours_cachefill")
            rows.append(run_worker("ours", args, tmp, cache=cache, tag="ours_cached"))
        rows.append(run_worker("diffusers", args, tmp))
        outs = {r["tag"]: np.load(tmp / f"{r['tag']}.npy") for r in rows}
    for r in rows:
        if r["tag"] == "ours_cached":
            r["framework"] += " (compile cache hit)"
    ref = outs.pop("diffusers")
    diffs = {tag: float(np.abs(o - ref).max()) for tag, o in outs.items()}
    scale = float(np.abs(ref).max())
    for r in rows:
        r["median_s"] = statistics.median(r["times"])
    ratios = {r["tag"]: rows[-1]["median_s"] / r["median_s"] for r in rows[:-1]}
    label = {"ours": "ours" if args.device != "CPU" else "ours (the library's CPU kernels, fused attention)",
             "ours_composed": "ours (composed attention)", "ours_pynative": "ours (pynative)",
             "ours_mindspore": "ours (MindSpore's own conv/dense/norm kernels, fused attention)",
             "ours_cached": "ours (compile cache hit)"}

    cfg_name = "tiny (--quick)" if args.quick else "SD-v1 / Wukong (320, [1,2,4,4], 8 heads, ctx 768)"
    header = ("| implementation | params | build + load s | first call s | s/step (median) | steps | "
              "RSS after weights MB | peak RSS MB | device peak MB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['framework']} | {r['params']:,} | {r['build_s']:.1f} | {r['first_s']:.1f} | "
             f"{r['median_s']:.3f} | {len(r['times'])} (+{args.warmup} warm-up) | {r['rss_weights_mb']:,.0f} | "
             f"{r['peak_rss_mb']:,.0f} | "
             f"{'-' if r.get('device_peak_mb') is None else format(r['device_peak_mb'], ',.0f')} |"
             for r in rows]
    notes = [f"- UNet: {cfg_name}; latent {args.size}x{args.size}, batch {args.batch}, context "
             f"({args.batch}, 77, {net_context_dim(cfg)}), {'fp16' if args.fp16 else 'fp32'} on {args.device}, "
             "random weights (same on both sides)"
             + (f"; ours with attn_slice={args.attn_slice}" if args.attn_slice else "") + ".",
             "- Speed: diffusers s/step / ours s/step = "
             + ", ".join(f"**{ratios[t]:.2f}x** {label[t]}" for t in ratios) + " (>1: ours faster).",
             "- Peak RSS: ours / diffusers = "
             + ", ".join(f"**{r['peak_rss_mb'] / rows[-1]['peak_rss_mb']:.2f}x** {label[r['tag']]}" for r in rows[:-1])
             + " (<1: ours smaller).",
             "- Outputs on the same input: max abs difference "
             + ", ".join(f"**{diffs[t]:.2e}** {label[t]}" for t in diffs) + f" (output max abs {scale:.2f}).",
             (f"- CPU: {cpu_name()} ({os.cpu_count()} cores), {args.threads} thread(s) for both frameworks. "
             "First call = MindSpore graph compilation + one step / PyTorch first eager step. Peak RSS is "
             "each subprocess's own maximum resident set (weights + activations + framework); RSS after weights "
             "is that process once the network is built and filled (weights + framework), so peak minus it is "
             "what running takes (MindSpore graph mode: the compiled graph and its activation memory pool)."),
             ]
    if load_at_start is not None and load_at_start > 0.5 * (os.cpu_count() or 1):
        notes.append(f"- WARNING: 1-min load average was {load_at_start:.2f} at start: other processes "
                     "shared the cores, so absolute timings are noisy.")
    md = "\n".join(["# LDM (SD-v1) UNet forward step", "", header, *lines, "", *notes, ""])
    print()
    print(md)
    if args.quick:
        print("(--quick: smoke test, no results file written)")
        return rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "ldm_unet_step.md" if args.device == "CPU" and not args.fp16 else \
        f"ldm_unet_step_{args.device.lower()}{'_fp16' if args.fp16 else ''}.md"
    (out / name).write_text(md)
    print(f"wrote {out / name}")
    return rows


if __name__ == "__main__":
    main()
