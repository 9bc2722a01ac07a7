"""Training throughput of the DDPM UNet: Mind-Diffusion (MindSpore, GRAPH mode) vs the same
UNet in PyTorch (bench/torch_ddpm_unet.py), one process, same machine, same threads.

Both sides run the same model with the same initial weights (copied from MindSpore into torch)
on the same fixed batch ``(x0, y, t, noise)`` with the simple DDPM loss
``mean((eps_theta(sqrt(abar_t) x0 + sqrt(1-abar_t) noise, t, y) - noise)^2)`` and Adam(lr=1e-3):

* MindSpore: ``TrainStep(NoisePredictionLoss(net), nn.Adam)`` compiled as one graph; the first
  call (compilation + one step) is reported separately as ``compile s``; up to three times
  (``--kernels all``): with the library's CPU kernels as installed (``mind_diffusion/cpu_gemm.py``, the
  default on CPU: convolutions on oneDNN where the onednn wheels are installed, dense layers on
  OpenBLAS), with the convolutions on OpenBLAS instead (``MIND_DIFFUSION_DNNL=off``; only when oneDNN
  is in use) and with MindSpore's own kernels;
* PyTorch: eager ``zero_grad / forward / backward / torch.optim.Adam.step``.

``--warmup`` further steps are excluded from the timing, then ``--steps`` steps are timed. Run it
on an otherwise idle machine: the report warns when the load average was high at start.
The ``loss@1`` column (first step) must agree between the frameworks when dropout is 0.

Usage (from the repository root)::

    python bench/ddpm_train.py                       # digits (batch 64) + cifar10 (batch 8), < 4 min
    python bench/ddpm_train.py --config cifar10 --batch 16 --steps 5

Writes ``<out>/ddpm_train.md`` and ``<out>/ddpm_train.csv`` (default out: bench/results).
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from _common import cpu_name  # noqa: E402
import mind_diffusion  # noqa: E402,F401  (sets ONEDNN_MAX_CPU_ISA etc. before mindspore loads)
import numpy as np  # noqa: E402

# name -> (model options, image size, default batch, default timed steps, default warm-up steps)
CONFIGS = {
    "cifar10": (dict(img_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                     time_emb_dim=512, dropout=0.1, attention_resolutions=(1,), num_classes=10,
                     num_groups=32), 32, 8, 2, 0),
    "tiny": (dict(img_channels=3, base_channels=32, channel_mults=(1, 2), num_res_blocks=1,
                  time_emb_dim=64, dropout=0.0, attention_resolutions=(1,), num_classes=10,
                  num_groups=8), 16, 16, 5, 1),
    "digits": (dict(img_channels=1, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
                    time_emb_dim=128, dropout=0.0, attention_resolutions=(1,), num_classes=10,
                    num_groups=8), 16, 64, 5, 1),
}
NUM_TIMESTEPS = 1000


def make_batch(cfg: dict, image_size: int, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    shape = (batch, cfg["img_channels"], image_size, image_size)
    x0 = np.tanh(rng.standard_normal(shape)).astype(np.float32)
    y = rng.integers(0, cfg["num_classes"], size=batch).astype(np.int32)
    t = rng.integers(0, NUM_TIMESTEPS, size=batch).astype(np.int32)
    noise = rng.standard_normal(shape).astype(np.float32)
    return x0, y, t, noise


def alphas_cumprod() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, NUM_TIMESTEPS, dtype=np.float64))


def bench_mindspore(cfg, batch_np, steps, warmup, lr, seed, kernels="blas"):
    import contextlib

    import mindspore as ms
    from mindspore import Tensor, nn

    from mind_diffusion import cpu_gemm

    from mind_diffusion.ddpm.unet import DDPMUNet
    from mind_diffusion.nn.layers import count_params
    from mind_diffusion.train.objectives import NoisePredictionLoss
    from mind_diffusion.train.step import TrainStep

    ms.set_seed(seed)
    switch = {"mindspore": cpu_gemm.mindspore_kernels, "openblas": cpu_gemm.openblas_convolutions}
    with switch.get(kernels, contextlib.nullcontext)():
        net = DDPMUNet(**cfg)
    init_state = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    net.set_train(True)
    loss_net = NoisePredictionLoss(net, alphas_cumprod(), conditional=cfg["num_classes"] is not None)
    step = TrainStep(loss_net, nn.Adam(net.trainable_params(), learning_rate=lr))
    inputs = tuple(Tensor(a) for a in batch_np)

    t0 = time.perf_counter()
    loss, _, _ = step(*inputs)
    first_loss = float(loss.asnumpy())
    compile_s = time.perf_counter() - t0
    for _ in range(warmup):
        step(*inputs)[0].asnumpy()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step(*inputs)[0]
        loss.asnumpy()                       # wait for the step to finish
    per_step = (time.perf_counter() - t0) / steps
    return dict(params=count_params(net), compile_s=compile_s, s_per_step=per_step,
                first_loss=first_loss, last_loss=float(loss.asnumpy())), init_state


def bench_torch(cfg, batch_np, steps, warmup, lr, init_state):
    import torch

    from torch_ddpm_unet import TorchDDPMUNet, load_from_mindspore

    net = TorchDDPMUNet(**cfg)
    load_from_mindspore(net, init_state)      # identical initial weights
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
    abar = alphas_cumprod()
    sqrt_a = torch.from_numpy(np.sqrt(abar).astype(np.float32))
    sqrt_1ma = torch.from_numpy(np.sqrt(1.0 - abar).astype(np.float32))
    x0, y, t, noise = (torch.from_numpy(a) for a in batch_np)
    y, t = y.long(), t.long()
    conditional = cfg["num_classes"] is not None

    def train_step():
        x_t = sqrt_a[t].view(-1, 1, 1, 1) * x0 + sqrt_1ma[t].view(-1, 1, 1, 1) * noise
        eps = net(x_t, t, y if conditional else None)
        loss = ((eps - noise) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    t0 = time.perf_counter()
    first_loss = train_step()
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        train_step()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = train_step()
    per_step = (time.perf_counter() - t0) / steps
    return dict(params=sum(p.numel() for p in net.parameters()), compile_s=first_s, s_per_step=per_step,
                first_loss=first_loss, last_loss=loss)


def set_threads(threads: int):
    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    try:
        ms.device_context.cpu.op_tuning.threads_num(threads)
    except (AttributeError, RuntimeError) as exc:  # older MindSpore / already configured
        print(f"warning: could not set MindSpore CPU threads: {exc}", file=sys.stderr)
    try:
        import torch
    except ImportError:
        return False
    torch.set_num_threads(threads)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", choices=sorted(CONFIGS), default=["digits", "cifar10"],
                    help="model configuration(s) to benchmark (default: digits cifar10)")
    ap.add_argument("--batch", type=int, nargs="+", default=None,
                    help="batch size, one for all configs or one per config "
                         "(default: digits 64, tiny 16, cifar10 8)")
    ap.add_argument("--steps", type=int, default=None,
                    help="timed steps per framework (default: 5 for digits/tiny, 2 for cifar10)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed steps after the first one, which is never timed "
                         "(default: 1 for digits/tiny, 0 for cifar10)")
    ap.add_argument("--image_size", type=int, default=None,
                    help="override the image size (default: 32 for cifar10, 16 otherwise)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                    help="CPU threads for both frameworks (default: all cores)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--kernels", choices=["all", "both", "blas", "openblas", "mindspore"], default="all",
                    help="blas: the library's CPU kernels as installed (the default path on CPU, "
                         "mind_diffusion/cpu_gemm.py: oneDNN convolutions where available, OpenBLAS dense "
                         "layers); openblas: the convolutions on OpenBLAS (MIND_DIFFUSION_DNNL=off); mindspore: "
                         "MindSpore's own kernels; both: blas + mindspore; all: every one of them that differs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args(argv)

    batches = args.batch or [None]
    if len(batches) not in (1, len(args.config)):
        ap.error("--batch takes one value or one per --config")
    batches = batches * len(args.config) if len(batches) == 1 else batches

    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    have_torch = set_threads(args.threads)
    if have_torch:
        import torch
        torch_version = torch.__version__
    else:
        torch_version = None
        print("PyTorch is not installed: only MindSpore is measured", file=sys.stderr)
    import mindspore as ms

    from mind_diffusion import cpu_gemm

    ms.set_context(device_target="CPU")
    backend = cpu_gemm.conv_backend()
    labels = {"blas": ("oneDNN convolutions, OpenBLAS dense" if backend == "onednn" else "OpenBLAS kernels"),
              "openblas": "OpenBLAS kernels", "mindspore": "MindSpore's own kernels"}
    rows = []
    for name, batch in zip(args.config, batches):
        cfg, size, default_batch, default_steps, default_warmup = CONFIGS[name]
        size = args.image_size or size
        batch = batch or default_batch
        steps = args.steps or default_steps
        warmup = default_warmup if args.warmup is None else args.warmup
        batch_np = make_batch(cfg, size, batch, args.seed)
        print(f"[{name}] batch {batch}, {size}x{size}, {steps} timed steps ...", flush=True)
        kinds = {"both": ["blas", "mindspore"],
                 "all": ["blas", "openblas", "mindspore"] if backend == "onednn" else ["blas", "mindspore"]}
        for kind in kinds.get(args.kernels, [args.kernels]):
            res, init_state = bench_mindspore(cfg, batch_np, steps, warmup, args.lr, args.seed, kind)
            label = labels[kind]
            rows.append(dict(framework=f"MindSpore {ms.__version__} (graph, {label})", config=name,
                             image_size=size, batch=batch, steps=steps, warmup=warmup, kernels=kind, **res))
            print(f"  mindspore ({label}): compile {res['compile_s']:.1f} s, {res['s_per_step']:.3f} s/step",
                  flush=True)
        if have_torch:
            res_t = bench_torch(cfg, batch_np, steps, warmup, args.lr, init_state)
            rows.append(dict(framework=f"PyTorch {torch_version} (eager)", config=name, image_size=size,
                             batch=batch, steps=steps, warmup=warmup, kernels="torch", **res_t))
            print(f"  torch:     first {res_t['compile_s']:.1f} s, {res_t['s_per_step']:.3f} s/step",
                  flush=True)
    for r in rows:
        r["img_per_s"] = r["batch"] / r["s_per_step"]

    header = ("| framework | config | params | image | batch | compile / first step s | warm-up + timed steps "
              "| s/step | img/s | loss@1 |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [f"| {r['framework']} | {r['config']} | {r['params']:,} | {r['image_size']} | {r['batch']} "
             f"| {r['compile_s']:.1f} | {r['warmup']} + {r['steps']} | {r['s_per_step']:.3f} "
             f"| {r['img_per_s']:.1f} | {r['first_loss']:.5f} |"
             for r in rows]
    ratios = []
    for name in dict.fromkeys(r["config"] for r in rows):
        torch_row = [r for r in rows if r["config"] == name and r["kernels"] == "torch"]
        for r in rows:
            if torch_row and r["config"] == name and r["kernels"] != "torch":
                label = labels[r["kernels"]]
                ratios.append(f"- {name}: ours ({label}) / torch throughput = "
                              f"{r['img_per_s'] / torch_row[0]['img_per_s']:.2f}x")
    notes = (f"CPU: {cpu_name()} ({os.cpu_count()} cores), {args.threads} thread(s) for both frameworks; "
             "the first step (MindSpore: with compilation) and the warm-up steps are not timed; "
             f"fp32; Adam lr={args.lr}; convolutions: {cpu_gemm.dnnl_info() if backend == 'onednn' else backend}; "
             f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')} (both frameworks). "
             "`loss@1` is the loss of the first step (same weights and batch; equal when dropout=0).")
    if load_at_start is not None and load_at_start > 0.5:
        notes += (f" WARNING: 1-min load average was {load_at_start:.2f} at start: other processes shared "
                  "the cores, so these timings are not representative (oversubscribed OpenMP threads "
                  "slow PyTorch down most).")
    md = "\n".join(["# DDPM UNet training throughput", "", header, *lines, "", *ratios, "", notes, ""])
    print()
    print(md)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ddpm_train.md").write_text(md)
    fields = ["framework", "config", "params", "image_size", "batch", "warmup", "steps", "compile_s", "s_per_step",
              "img_per_s", "first_loss", "last_loss"]
    with open(out / "ddpm_train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in fields})
    print(f"wrote {out / 'ddpm_train.md'} and {out / 'ddpm_train.csv'}")
    return rows


if __name__ == "__main__":
    main()
