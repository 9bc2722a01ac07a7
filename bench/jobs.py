"""Whole jobs, as a user runs them: seconds, peak memory, and the PyTorch / diffusers equivalent
where one exists, side by side in one run.

Jobs (each side in its own subprocess, so its peak RSS is its own; MindSpore in graph mode with a
new, empty compile cache, so every row includes its compilation, shown in its own column):

- ``builtin``: ``bash infer.sh`` on the built-in shapes model, twice (the first run compiles and
  fills the cache, the second loads it). No PyTorch equivalent (the model is this repository's).
- ``wukong``: one Wukong-Huahua-size image, 512x512, 15 DPM-Solver++ steps, guidance 7.5, random
  full-size weights (``bench/startup.py``'s job), against diffusers' ``StableDiffusionPipeline``
  with the same network sizes (UNet SD-v1, AutoencoderKL, a 12-layer 768-wide CLIP text
  encoder with Wukong's 21128-token vocabulary), ``DPMSolverMultistepScheduler`` (DPM-Solver++,
  order 2), random weights.
- ``glide``: the Taichu-GLIDE cascade at full size with random weights, one image: base 64 px
  (60 ancestral steps, guidance 5), super-resolution 256 px (DDIM "fast27"), SRGAN 1024 px,
  through ``GlidePipeline`` exactly as ``scripts/glide_txt2img.py`` runs it. No PyTorch
  equivalent is installed (OpenAI's glide-text2im is not on PyPI).
- ``finetune``: LDM fine-tuning at full size, the original's recipe (``configs/wukong/
  train-finetune.yaml``: UNet and text encoder trained, AdamW, VAE encode in every step) through
  this repository's trainer, batch 1 at ``--finetune_size`` px, ``--finetune_steps`` steps (the
  first compiles), against the same step in PyTorch (diffusers UNet + AutoencoderKL + CLIP text
  encoder, ``torch.optim.AdamW`` with the same betas, eps and weight decay).

    python bench/jobs.py                          # every job, writes bench/results/jobs.md
    python bench/jobs.py --jobs builtin wukong    # some of them
    python bench/jobs.py --quick                  # builtin + the tiny-size smoke of the others, prints

The table is rewritten after every row, so a run stopped half way keeps what it measured. A side
that fails (e.g. killed for memory) gets a row that says so; the others still run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from _common import cpu_name, run_process  # noqa: E402
from startup import PROMPT  # noqa: E402

SHAPES_VOCAB = ROOT / "models" / "shapes_zh" / "vocab.txt"
SHAPES_SP = ROOT / "models" / "glide_shapes" / "shapes-sp.model"
WUKONG_VOCAB = 21128          # vocab_zh.txt's size (the released text encoder's embedding rows)
CFG_SCALE = 7.5


def parse_timings(text: str) -> dict:
    """{phase: seconds} from the ``[mind_diffusion] timings:`` line (phase names may hold digits:
    "base 64 px 12.30 s")."""
    line = next((ln for ln in text.splitlines() if ln.startswith("[mind_diffusion] timings:")), None)
    out = {}
    for part in ([] if line is None else line.split(":", 1)[1].split(",")):
        name, value, unit = part.strip().rsplit(" ", 2)
        out[name] = float(value)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _emit(result: dict):
    print("JOBRESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- children: ours
def child_ours_glide(args):
    """The three GLIDE stages at full size (or the test-size nets with --quick), random weights."""
    from mind_diffusion.cli import run_cli

    def job():
        from mind_diffusion.glide.pipeline import GlidePipeline
        from mind_diffusion.runtime import init_runtime

        over = []
        if args.quick:  # small nets of the same architecture (smoke test of the bench itself)
            over = ["model.base.model_channels=32", "model.base.channel_mult=[1,2]", "model.base.num_res_blocks=1",
                    "model.base.attention_resolutions=[2]", "model.base.xf_width=64", "model.base.xf_layers=1",
                    "model.base.xf_heads=2", "model.base.num_head_channels=32", "model.base.text_ctx=16",
                    "model.sr.model_channels=32", "model.sr.channel_mult=[1,2]", "model.sr.num_res_blocks=1",
                    "model.sr.attention_resolutions=[4]", "model.sr.xf_width=64", "model.sr.xf_layers=1",
                    "model.sr.xf_heads=2", "model.sr.num_head_channels=32", "model.sr.text_ctx=16",
                    "model.srgan.num_blocks=1", "model.srgan.channels=8"]
        cfg = GlidePipeline.load_config(ROOT / "configs" / "glide" / "infer.yaml", over)
        rt = init_runtime(args.device_target, "graph", seed=0, compile_cache=args.compile_cache_dir,
                          cache_key={"config": cfg, "bench": "jobs glide random"}, timings=True)
        pipe = GlidePipeline.from_pretrained(cfg, tokenizer=SHAPES_SP, stages=1024, allow_random=True,
                                             compute_dtype=rt.precision.ms_dtype())
        steps = 4 if args.quick else int(cfg.sampling.num_inference_steps)
        out = pipe("一个红色的圆形在左边", num_images_per_prompt=1, seed=0, num_inference_steps=steps,
                   progress=False)
        _emit({"framework": f"MindSpore graph, {args.device_target}", "images": _shapes(out),
               "peak_rss_mb": peak_rss_mb()})

    sys.exit(run_cli(job))


def _shapes(out) -> str:
    imgs = getattr(out, "images", out)
    if isinstance(imgs, dict):
        return ", ".join(f"{k}: {tuple(v[0].shape)}" for k, v in imgs.items())
    try:
        return str(tuple(imgs[0].shape))
    except (TypeError, IndexError, AttributeError):
        return type(out).__name__


def child_ours_finetune(args):
    """Fine-tuning steps of the full-size LDM through this repository's trainer."""
    from mind_diffusion.cli import run_cli

    def job():
        from mind_diffusion.config import load_config
        from mind_diffusion.ldm.config import ldm_train_config_defaults
        from mind_diffusion.ldm.training import build_ldm_trainer
        from mind_diffusion.runtime import init_runtime

        out = Path(args.out_dir) / "finetune_run"
        cfg_path = ROOT / "configs" / ("ldm/tiny-csv.yaml" if args.quick else "wukong/train-finetune.yaml")
        over = ["init.checkpoint=null", f"init.vocab={SHAPES_VOCAB}", f"data.path={args.data}",
                f"data.image_size={args.size}", f"train.output_dir={out}", f"train.steps={args.steps}",
                "train.batch_size=1", "train.log_every=1", f"train.ckpt_every={10 ** 6}", "train.loss_scale=none",
                "train.warmup_steps=0", "data.cache_latents=false"]
        cfg = load_config(cfg_path, over, ldm_train_config_defaults())
        rt = init_runtime(args.device_target, "graph", seed=0)
        t0 = time.perf_counter()
        trainer, make = build_ldm_trainer(cfg, rt, progress=False)
        build_s = time.perf_counter() - t0
        n_train = sum(int(p.size) for p in trainer.model.trainable_params())
        t0 = time.perf_counter()
        trainer.fit(make)
        fit_s = time.perf_counter() - t0
        rows = (out / "metrics.csv").read_text().strip().splitlines()[1:]
        times = [float(r.split(",")[-1]) for r in rows]
        per_step = [b - a for a, b in zip(times, times[1:])]
        _emit({"framework": f"MindSpore graph, {args.device_target} (trainer)", "trainable": n_train,
               "build_s": build_s, "first_s": times[0], "step_s": statistics.median(per_step) if per_step else None,
               "fit_s": fit_s, "peak_rss_mb": peak_rss_mb()})

    sys.exit(run_cli(job))


# ----------------------------------------------------------------------------- children: PyTorch
def _torch_nets(quick: bool, with_vae: bool = True):
    """diffusers UNet2DConditionModel (SD-v1), AutoencoderKL (SD) and a CLIP text encoder of
    Wukong's size, random weights (PyTorch's own initialisation)."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    if quick:
        unet = diffusers.UNet2DConditionModel(
            sample_size=16, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=64,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8, norm_num_groups=8)
        vae = diffusers.AutoencoderKL(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                      up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                                      norm_num_groups=8) if with_vae else None
        te = CLIPTextModel(CLIPTextConfig(vocab_size=WUKONG_VOCAB, hidden_size=64, intermediate_size=128,
                                          num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=77))
        return unet, vae, te
    unet = diffusers.UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8)
    vae = diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=512) if with_vae else None
    te = CLIPTextModel(CLIPTextConfig(vocab_size=WUKONG_VOCAB, hidden_size=768, intermediate_size=3072,
                                      num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                      hidden_act="quick_gelu"))
    return unet, vae, te


def _token_ids(batch: int):
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 500, (batch, 77), generator=g)


def child_torch_wukong(args):
    import diffusers
    import torch

    torch.set_num_threads(args.threads)
    phases = {}
    t0 = time.perf_counter()
    unet, vae, te = _torch_nets(args.quick)
    unet.eval(), vae.eval(), te.eval()
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                                  beta_schedule="scaled_linear", algorithm_type="dpmsolver++",
                                                  solver_order=2)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=None, unet=unet, scheduler=sched,
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    phases["build"] = time.perf_counter() - t0
    size = 64 if args.quick else 512
    t0 = time.perf_counter()
    with torch.no_grad():
        ids = _token_ids(2)
        emb = te(ids).last_hidden_state
    phases["text encode"] = time.perf_counter() - t0
    calls = {"unet": 0.0, "decode": 0.0}

    def timed(fn, key):
        def wrapper(*a, **k):
            s = time.perf_counter()
            r = fn(*a, **k)
            calls[key] += time.perf_counter() - s
            return r
        return wrapper

    unet.forward = timed(unet.forward, "unet")
    vae.decode = timed(vae.decode, "decode")
    t0 = time.perf_counter()
    out = pipe(prompt_embeds=emb[:1], negative_prompt_embeds=emb[1:], height=size, width=size,
               num_inference_steps=15, guidance_scale=CFG_SCALE, output_type="np",
               generator=torch.Generator().manual_seed(42))
    total = time.perf_counter() - t0
    phases["sampling"] = calls["unet"]
    phases["decode"] = calls["decode"]
    phases["other"] = total - calls["unet"] - calls["decode"]
    _emit({"framework": f"diffusers {diffusers.__version__} / PyTorch {torch.__version__} (eager, CPU)",
           "phases": phases, "images": str(tuple(out.images[0].shape)), "peak_rss_mb": peak_rss_mb()})


def child_torch_finetune(args):
    import diffusers
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    unet, vae, te = _torch_nets(args.quick)
    vae.eval().requires_grad_(False)
    unet.train(), te.train()
    params = list(unet.parameters()) + list(te.parameters())
    # the original's AdamWeightDecay settings (configs/wukong/train-finetune.yaml)
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=1e-6)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                    beta_schedule="scaled_linear")
    build_s = time.perf_counter() - t0
    size = args.size
    g = torch.Generator().manual_seed(0)
    times = []
    for _ in range(args.steps):
        s = time.perf_counter()
        img = torch.rand(1, 3, size, size, generator=g) * 2 - 1
        ids = _token_ids(1)
        with torch.no_grad():
            lat = vae.encode(img).latent_dist.sample(generator=g) * 0.18215
        noise = torch.randn(lat.shape, generator=g)
        t = torch.randint(0, 1000, (1,), generator=g)
        noisy = sched.add_noise(lat, noise, t)
        ctx = te(ids).last_hidden_state
        loss = F.mse_loss(unet(noisy, t, encoder_hidden_states=ctx).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - s)
    _emit({"framework": f"PyTorch {torch.__version__} + diffusers {diffusers.__version__} (eager, CPU)",
           "trainable": sum(p.numel() for p in params), "build_s": build_s, "first_s": times[0],
           "step_s": statistics.median(times[1:]) if len(times) > 1 else None, "fit_s": sum(times),
           "peak_rss_mb": peak_rss_mb()})


CHILDREN = {"ours_glide": child_ours_glide, "ours_finetune": child_ours_finetune,
            "torch_wukong": child_torch_wukong, "torch_finetune": child_torch_finetune}


# ----------------------------------------------------------------------------- parent
def run(cmd: list, env: dict) -> dict:
    """Run ``cmd``: wall time, its own peak RSS, load average, its output and result."""
    res = run_process(cmd, env, ROOT)
    out, code = res["output"], res["code"]
    line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("JOBRESULT ")), None)
    res["result"] = json.loads(line[len("JOBRESULT "):]) if line else {}
    if "[mind_diffusion] timings:" in out:
        res["phases"] = parse_timings(out)
    if code != 0:
        why = "killed (out of memory?)" if code in (-9, 137) else f"exit code {code}"
        res["error"] = why
        print(f"FAILED ({why}): {' '.join(map(str, cmd))}\n{out[-2000:]}", flush=True)
    return res


class Table:
    HEADER = ("| job | implementation | wall s | of which compile | main work | peak RSS MB | "
              "PyTorch wall / ours | load 1-min |\n|---|---|---:|---:|---|---:|---:|---|")

    def __init__(self, path: Path | None, args):
        self.path, self.args, self.rows, self.notes = path, args, [], []

    def add(self, job: str, impl: str, r: dict, main: str, ref: dict | None = None):
        if r.get("error"):
            self.rows.append(f"| {job} | {impl} | - | - | failed: {r['error']} | {r['rss_mb']:,.0f} | - | "
                             f"{r['load'][0]:.1f} → {r['load'][1]:.1f} |")
        else:
            comp = r.get("phases", {}).get("compile")
            ratio = "-" if ref is None or ref.get("error") else f"**{ref['wall'] / r['wall']:.2f}x**"
            self.rows.append(f"| {job} | {impl} | **{r['wall']:.1f}** | {'-' if comp is None else f'{comp:.1f}'} | "
                             f"{main} | {r['rss_mb']:,.0f} | {ratio} | {r['load'][0]:.1f} → {r['load'][1]:.1f} |")
        self.write()

    def text(self) -> str:
        return "\n".join([
            "# Whole jobs: seconds and peak memory, ours against PyTorch where an equivalent exists", "",
            f"Machine: {cpu_name()}, {os.cpu_count()} cores, {self.args.threads} threads for each side; "
            f"{time.strftime('%Y-%m-%d')}. Each row is its own process (peak RSS = that process's maximum "
            "resident set). `wall s` counts from process start to exit (imports, building, compiling, the "
            "work, writing). `PyTorch wall / ours` > 1: ours faster. load = 1-minute load average before → "
            "after the row (> 2 on 2 cores: something else shared the CPU).", "",
            self.HEADER, *self.rows, "", *self.notes,
            *(["- `--quick`: small nets, and not the same ones on both sides: a smoke test of the bench, the "
               "ratios mean nothing."] if self.args.quick else []), "",
            "Command: `python bench/jobs.py" + (" --quick" if self.args.quick else "")
            + (f" --jobs {' '.join(self.args.jobs)}" if self.args.jobs != list(JOBS) else "") + "`", ""])

    def write(self):
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(self.text(), encoding="utf-8")
            os.replace(tmp, self.path)


def _phase_text(ph: dict, keys) -> str:
    return ", ".join(f"{k} {ph[k]:.1f} s" for k in keys if k in ph and ph[k] >= 0.05)


def job_builtin(args, env, tmp: Path, table: Table):
    cache = tmp / "builtin-cache"
    for k in (1, 2):
        cmd = ["bash", str(ROOT / "infer.sh"), PROMPT, "--output_path", str(tmp / "builtin-out"),
               "--compile_cache_dir", str(cache), "--timings", "--skip_grid"]
        r = run(cmd, env)
        ph = r.get("phases", {})
        table.add(f"`bash infer.sh` built-in shapes model, 64x64, run {k} "
                  f"({'compiles' if k == 1 else 'cache hit'})", "ours", r,
                  _phase_text(ph, ("import", "checkpoint load", "sampling", "decode")))


def job_wukong(args, env, tmp: Path, table: Table):
    size = "64x64 (--quick: tiny nets)" if args.quick else "512x512"
    cmd = [sys.executable, str(ROOT / "bench" / "startup.py"), "--child", "wukong", "--compile_cache_dir",
           str(tmp / "wukong-cache"), "--out", str(tmp / "wukong-out"), "--device_target", "CPU", "--precision", "fp32"]
    if args.quick:
        cmd = None  # the startup child has no small size; the smoke test runs the PyTorch side only
    ours = run(cmd, env) if cmd else None
    ref = run(_child_cmd("torch_wukong", args, tmp), env)
    job = f"Wukong-size image, {size}, 15 DPM-Solver++ steps, CFG {CFG_SCALE}"
    if ours is not None:
        table.add(job, "ours (random full-size weights)", ours,
                  _phase_text(ours.get("phases", {}), ("build", "text encode", "sampling", "decode")), ref)
    table.add(job, ref["result"].get("framework", "diffusers StableDiffusionPipeline"), ref,
              _phase_text(ref["result"].get("phases", {}), ("build", "text encode", "sampling", "decode")))


def job_glide(args, env, tmp: Path, table: Table):
    r = run(_child_cmd("ours_glide", args, tmp), env)
    what = "test-size nets (--quick)" if args.quick else "full size"
    table.add(f"Taichu-GLIDE 64 → 256 → 1024, {what}, 1 image (60 + 27 steps + SRGAN)",
              "ours (random weights); no PyTorch equivalent installed", r,
              _phase_text(r.get("phases", {}), ("build", "base 64 px", "super-res 256 px", "SRGAN 1024 px")))


def job_finetune(args, env, tmp: Path, table: Table):
    from mind_diffusion.shapes.world import export_csv

    data = tmp / "ft-data"
    if not (data / "data.csv").is_file():
        export_csv(data, max(4, args.finetune_steps + 1), image_size=args.finetune_size, progress=False)
    what = "tiny config (--quick)" if args.quick else "full size (UNet + text encoder trained)"
    job = f"LDM fine-tune, {what}, batch 1 at {args.finetune_size} px, {args.finetune_steps} steps"
    res = {}
    for side in ("ours_finetune", "torch_finetune"):
        res[side] = run(_child_cmd(side, args, tmp, data=data), env)
    for side, impl in (("ours_finetune", "ours (trainer, random init)"), ("torch_finetune", None)):
        r = res[side]
        x = r["result"]
        main = "-" if not x else (f"{x['trainable']:,} trainable; build {x['build_s']:.1f} s, first step "
                                  f"{x['first_s']:.1f} s, then **{x['step_s']:.2f} s/step**" if x.get("step_s")
                                  else f"first step {x['first_s']:.1f} s")
        table.add(job, impl or x.get("framework", "PyTorch"), r, main,
                  res["torch_finetune"] if side == "ours_finetune" else None)
    o, t = res["ours_finetune"]["result"], res["torch_finetune"]["result"]
    if o.get("step_s") and t.get("step_s"):
        table.notes.append(f"- Fine-tune step alone (after the first): PyTorch {t['step_s']:.2f} s / ours "
                           f"{o['step_s']:.2f} s = **{t['step_s'] / o['step_s']:.2f}x**.")
        table.write()


JOBS = {"builtin": job_builtin, "wukong": job_wukong, "glide": job_glide, "finetune": job_finetune}


def _child_cmd(name: str, args, tmp: Path, data: Path | None = None) -> list:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out_dir", str(tmp),
           "--compile_cache_dir", str(tmp / f"{name}-cache"), "--threads", str(args.threads)]
    if name.endswith("finetune"):
        cmd += ["--data", str(data), "--size", str(args.finetune_size), "--steps", str(args.finetune_steps)]
    return cmd + (["--quick"] if args.quick else [])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", nargs="+", choices=list(JOBS), default=list(JOBS))
    ap.add_argument("--quick", action="store_true", help="small nets: a smoke test of the bench (prints only)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch threads (MindSpore uses all cores)")
    ap.add_argument("--finetune_size", type=int, default=None, help="fine-tune image size (default 512; 64 with --quick)")
    ap.add_argument("--finetune_steps", type=int, default=3, help="fine-tune steps per side (the first one compiles)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--out_dir", help=argparse.SUPPRESS)
    ap.add_argument("--compile_cache_dir", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--device_target", default="CPU", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        if args.child.startswith("ours"):
            import mind_diffusion  # noqa: F401  (CPU settings before MindSpore loads)
        return CHILDREN[args.child](args)
    if args.finetune_size is None:
        args.finetune_size = 64 if args.quick else 512
    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    env.pop("MIND_DIFFUSION_COMPILE_CACHE", None)
    table = Table(None if args.quick else Path(args.out) / "jobs.md", args)
    with tempfile.TemporaryDirectory(prefix="jobs_bench_") as tmp:
        for job in args.jobs:
            print(f"== {job}", flush=True)
            JOBS[job](args, env, Path(tmp), table)
    print(table.text())
    if table.path is not None:
        print(f"wrote {table.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
