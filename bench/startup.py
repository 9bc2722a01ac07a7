"""Start-up: the first and the second run of a user-facing job with a fresh compile cache, each
broken into phases (``--timings``: import, runtime, build, checkpoint load, compile, text
encode, sampling, decode, write, other), with wall time, peak RSS and the load average.

Jobs:
- ``builtin``: ``bash infer.sh`` on the built-in shapes model (64x64, DPM-Solver, its config's
  steps), exactly as a new user runs it, plus ``--compile_cache_dir`` and ``--timings``;
- ``wukong`` (``--wukong``): one Wukong-Huahua-size image (512x512, 15 DPM-Solver++ steps,
  scale 7.5) through the same pipeline with random full-size weights built in memory (no
  checkpoint file: ``build`` includes the random initialisation; the shipped shapes vocabulary
  stands in for vocab_zh.txt). About 10 minutes a run and 9 GB on a 2-core CPU.

Each round uses a new, empty cache folder: run 1 compiles and publishes, run 2 loads. The runs
of one job follow each other directly, so their ratio is measured under the same load.

    python bench/startup.py                      # builtin, 3 rounds
    python bench/startup.py --rounds 1 --wukong  # + the Wukong-size job
Writes bench/results/startup.md (``--out``).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from _common import cpu_name, run_process  # noqa: E402

PHASES = ("import", "runtime", "build", "checkpoint load", "compile", "text encode", "sampling",
          "decode", "write", "other")
PROMPT = "一个红色的圆形在左边"


def parse_timings(text: str) -> dict:
    line = next((ln for ln in text.splitlines() if ln.startswith("[mind_diffusion] timings:")), None)
    if line is None:
        raise SystemExit("no timings line in the job's output:\n" + text[-3000:])
    return {k.strip(): float(v) for k, v in re.findall(r"([a-z ]+?) ([0-9.]+) s", line.split(":", 1)[1])}


def run_job(cmd: list, env: dict) -> dict:
    """Run ``cmd``; wall time, peak RSS (its own, via wait4), load average before/after."""
    r = run_process(cmd, env, ROOT)
    if r["code"] != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed ({r['code']}):\n{r['output'][-3000:]}")
    return {**r, "phases": parse_timings(r["output"]), "hit": "compile cache hit" in r["output"]}


def image_hash(folder: Path) -> str:
    files = sorted((folder / "samples").glob("*.png"))
    return hashlib.sha256(files[-1].read_bytes()).hexdigest()[:12] if files else "-"


def job_command(job: str, cache: Path, out: Path) -> list:
    if job == "builtin":
        return ["bash", str(ROOT / "infer.sh"), PROMPT, "--output_path", str(out),
                "--compile_cache_dir", str(cache), "--timings", "--skip_grid"]
    return [sys.executable, str(Path(__file__).resolve()), "--child", "wukong",
            "--compile_cache_dir", str(cache), "--out", str(out), "--device_target", DEVICE[0],
            "--precision", DEVICE[1]]


DEVICE = ["CPU", "fp32"]


WUKONG = ROOT / "configs" / "wukong" / "v1-inference-chinese.yaml"


def make_random_checkpoint(folder: Path, overrides=(), seed: int = 0) -> Path:
    """``folder``/wukong-random.ckpt (random full-size Wukong weights; layers that start at zero
    get small random values, so every layer takes part) and vocab_zh.txt (the shipped shapes
    vocabulary), for ``bash infer.sh --ckpt_path folder --ckpt_name wukong-random.ckpt``."""
    import shutil

    import numpy as np

    from mind_diffusion.checkpoint.io import save_atomic
    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults
    from mind_diffusion.ldm.model import build_ldm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(WUKONG, list(overrides), ldm_config_defaults())
    rng = np.random.default_rng(seed)
    state = {}
    for p in build_ldm(cfg.model).get_parameters():
        v = p.asnumpy()
        state[p.name] = v if v.any() else (0.02 * rng.standard_normal(v.shape)).astype(v.dtype)
    ckpt = save_atomic(state, folder / "wukong-random.ckpt")
    shutil.copyfile(ROOT / "models" / "shapes_zh" / "vocab.txt", folder / "vocab_zh.txt")
    return ckpt


def child_wukong(args):
    """One 512x512 image, 15 DPM-Solver++ steps, random full-size Wukong weights."""
    from mind_diffusion.cli import run_cli

    def job():
        from mind_diffusion.config import load_config
        from mind_diffusion.ldm.config import ldm_config_defaults
        from mind_diffusion.ldm.pipeline import LDMPipeline
        from mind_diffusion.runtime import init_runtime
        from mind_diffusion.utils.images import next_index, save_png

        cfg = load_config(WUKONG, [], ldm_config_defaults())
        shape = {"H": 512, "W": 512, "n": 1, "bench": "random weights"}
        rt = init_runtime(args.device_target, "graph", seed=42, precision=args.precision,
                          compile_cache=args.compile_cache_dir, cache_key={"config": cfg, **shape}, timings=True)
        pipe = LDMPipeline.from_pretrained(WUKONG, None, vocab=ROOT / "models" / "shapes_zh" / "vocab.txt",
                                           compute_dtype=rt.precision.ms_dtype())
        images = pipe(PROMPT, num_images_per_prompt=1, height=512, width=512, num_inference_steps=15,
                      guidance_scale=7.5, sampler="dpm_solver", seed=42).images
        out = Path(args.out) / "samples"
        save_png(out / f"{next_index(out):05d}.png", images[0],
                 {"prompt": PROMPT, "bench": "startup wukong-size, random weights"})

    sys.exit(run_cli(job))


def fmt_row(job, rnd, k, r, digest):
    ph = r["phases"]
    cells = [f"{ph.get(p, 0.0):.2f}" for p in PHASES]
    return (f"| {job} | {rnd} | {k} ({'hit' if r['hit'] else 'compiled'}) | **{r['wall']:.2f}** | "
            + " | ".join(cells) + f" | {r['rss_mb']:,.0f} | {r['load'][0]:.1f} → {r['load'][1]:.1f} | {digest} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="fresh-cache rounds of the built-in job")
    ap.add_argument("--wukong", action="store_true", help="also the Wukong-size job (one round)")
    ap.add_argument("--skip_builtin", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--device_target", default="CPU", help="device of the wukong job (CPU, GPU, Ascend)")
    ap.add_argument("--precision", default="auto", help="precision of the wukong job (auto: fp32 on CPU, fp16 else)")
    ap.add_argument("--make_random_ckpt", metavar="DIR",
                    help="only write DIR/wukong-random.ckpt + vocab_zh.txt (random full-size weights) and exit")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for --make_random_ckpt")
    ap.add_argument("--child", choices=["wukong"], help=argparse.SUPPRESS)
    ap.add_argument("--compile_cache_dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.make_random_ckpt:
        print(f"wrote {make_random_checkpoint(args.make_random_ckpt, args.set)}")
        return
    if args.child:
        return child_wukong(args)
    DEVICE[:] = [args.device_target, args.precision]

    env = {**os.environ, "PYTHON": sys.executable,
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    env.pop("MIND_DIFFUSION_COMPILE_CACHE", None)
    jobs = ([] if args.skip_builtin else [("builtin", args.rounds)]) + ([("wukong", 1)] if args.wukong else [])
    rows, ratios, seconds = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="startup_bench_") as tmp:
        for job, rounds in jobs:
            for rnd in range(1, rounds + 1):
                cache, out = Path(tmp) / f"{job}{rnd}-cache", Path(tmp) / f"{job}{rnd}-out"
                res = []
                for k in (1, 2):
                    print(f"[{job}] round {rnd} run {k} ...", flush=True)
                    r = run_job(job_command(job, cache, out), env)
                    res.append(r)
                    rows.append(fmt_row(job, rnd, k, r, image_hash(out)))
                    print(rows[-1], flush=True)
                ratios.setdefault(job, []).append(res[1]["wall"] / res[0]["wall"])
                seconds.setdefault(job, []).append(res[1]["wall"])
    header = ("| job | round | run | wall s | " + " | ".join(PHASES) + " | peak RSS MB | load 1-min | image |\n"
              "|---|---:|---|---:|" + "---:|" * len(PHASES) + "---:|---|---|")
    summary = [f"- **{job}**: second run {statistics.median(seconds[job]):.2f} s wall (median of "
               f"{len(seconds[job])}), {statistics.median(ratios[job]):.2f}x the first run's time "
               f"(per round: {', '.join(f'{x:.2f}' for x in ratios[job])})." for job in ratios]
    md = "\n".join([
        "# Start-up: first and second run with a fresh compile cache", "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores; load = 1-minute load average before → after "
        "each run (the machine is shared: > 1 per core means other jobs took CPU time). "
        "Phases from `--timings` (seconds); `import` runs from process start; `compile` is graph "
        "compilation (run 2: loading the cached graphs and the backend's kernel set-up). "
        "`image`: sha256 prefix of the PNG written (run 1 and run 2 must match).", "",
        header, *rows, "", *summary, "",
        "Command: `python bench/startup.py" + (" --wukong" if args.wukong else "") + "`", ""])
    print(md)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "startup.md" if not args.skip_builtin else "startup_wukong.md"
    (out / name).write_text(md)
    print(f"wrote {out / name}")


if __name__ == "__main__":
    main()
