"""One trainer for every family.

Given a model, a loss cell over it, an optimizer and a random-access batch source
(``source[step] -> batch tuple`` for this rank), it runs the compiled ``TrainStep`` with EMA,
logs to stdout and ``metrics.csv``, writes checkpoints atomically every ``ckpt_every`` steps
(rank 0 only) and resumes exactly: model, optimizer moments, loss scale, EMA, step and data
position (the batch stream is a pure function of the step).

Run folder layout::

    <out_dir>/config.yaml          the resolved config
    <out_dir>/metrics.csv          step, loss, ema-smoothed loss, scale, overflow, img/s, time
    <out_dir>/checkpoints/step_0000500.ckpt   full training state (+ meta.train_step, meta.seed)
    <out_dir>/checkpoints/latest.txt          name of the newest complete checkpoint
    <out_dir>/model_ema.ckpt       EMA weights under the model's names (for sampling)
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mindspore import nn

from ..checkpoint.io import CheckpointError, load_strict, read_checkpoint, save_atomic
from ..utils.images import check_output_dir
from .step import EMA, LossScaler, TrainStep


@dataclass
class TrainOptions:
    total_steps: int
    log_every: int = 50
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    ema_decay: float = 0.9999
    ema_start: int = 2000
    ema_every: int = 1
    clip_grad_norm: float = 0.0
    loss_scale: str = "none"  # none | static | dynamic
    init_loss_scale: float = 65536.0
    loss_scale_window: int = 1000
    seed: int = 0
    progress: bool = True


class Trainer:
    def __init__(self, model: nn.Cell, loss_net: nn.Cell, optimizer: nn.Optimizer, source, opts: TrainOptions,
                 out_dir: str | Path, runtime=None, images_per_step: int | None = None):
        if opts.total_steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {opts.total_steps}")
        if opts.ckpt_every < 1 or opts.log_every < 1:
            raise ValueError("train.ckpt_every and train.log_every must be >= 1")
        self.model, self.source, self.opts = model, source, opts
        self.rank = runtime.rank if runtime else 0
        self.distributed = bool(runtime and runtime.distributed)
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        if opts.loss_scale not in ("none", "static", "dynamic"):
            raise ValueError(f"train.loss_scale must be none, static or dynamic, got {opts.loss_scale!r}")
        scale = 1.0 if opts.loss_scale == "none" else opts.init_loss_scale
        self.scaler = LossScaler(scale, dynamic=opts.loss_scale == "dynamic", window=opts.loss_scale_window)
        self.train_step = TrainStep(loss_net, optimizer, self.scaler, opts.clip_grad_norm, self.distributed)
        self.train_step.set_train(True)
        self.ema = EMA(model, opts.ema_decay, opts.ema_start, opts.ema_every)
        self.step = 0
        self.images_per_step = images_per_step
        if self.rank == 0:
            check_output_dir(self.out_dir)

    # ---------------------------------------------------------------- state
    def _state_params(self):
        seen, out = set(), []
        for p in list(self.train_step.get_parameters()) + list(self.ema.ema):
            if p.name not in seen:
                seen.add(p.name)
                out.append(p)
        return out

    def save(self, name: str | None = None) -> Path | None:
        if self.rank != 0:
            return None
        name = name or f"step_{self.step:07d}.ckpt"
        path = self.ckpt_dir / name
        save_atomic({p.name: p.asnumpy() for p in self._state_params()}, path,
                    extra={"meta.train_step": int(self.step), "meta.seed": int(self.opts.seed)})
        tmp = self.ckpt_dir / ".latest.txt.tmp"
        tmp.write_text(name + "\n")
        os.replace(tmp, self.ckpt_dir / "latest.txt")
        self._prune()
        return path

    def _prune(self):
        ckpts = sorted(self.ckpt_dir.glob("step_*.ckpt"))
        for old in ckpts[:-self.opts.keep_checkpoints] if self.opts.keep_checkpoints > 0 else []:
            old.unlink(missing_ok=True)

    def export(self) -> dict:
        """model_ema.ckpt and model.ckpt under the model's own parameter names (rank 0)."""
        if self.rank != 0:
            return {}
        paths = {
            "ema": save_atomic(self.ema.model_state(), self.out_dir / "model_ema.ckpt",
                               extra={"meta.step": int(self.step)}),
            "model": save_atomic({p.name: p.asnumpy() for p in self.model.get_parameters()},
                                 self.out_dir / "model.ckpt", extra={"meta.step": int(self.step)}),
        }
        return paths

    @staticmethod
    def find_resume(resume: str | Path, out_dir: str | Path) -> Path:
        """'auto' -> newest checkpoint in out_dir/checkpoints; else a path to a .ckpt."""
        if str(resume) == "auto":
            latest = Path(out_dir) / "checkpoints" / "latest.txt"
            if not latest.is_file():
                raise CheckpointError(f"--resume auto: no checkpoint in {latest.parent} yet "
                                      f"(start without --resume, or pass a .ckpt path)")
            return latest.parent / latest.read_text().strip()
        return Path(resume)

    def resume(self, path: str | Path):
        state = read_checkpoint(path, "training checkpoint")
        if "meta.train_step" not in state:
            raise CheckpointError(f"{path} is not a training checkpoint (no optimizer / EMA state); "
                                  f"to start from model weights use --init_from instead of --resume")
        step = int(np.asarray(state.pop("meta.train_step")))
        state.pop("meta.seed", None)

        load_strict(self._state_params(), state, path=str(path))
        self.step = step
        if self.rank == 0:
            print(f"[mind_diffusion] resumed from {path} at step {step}", flush=True)

    def _trim_metrics(self, log_path: Path):
        """Drop the log rows past the step this run (re)starts from: they belong to a segment that ran
        beyond the resumed checkpoint and was lost (killed between checkpoints), and would otherwise
        appear twice in the log and its curve."""
        lines = log_path.read_text().splitlines(keepends=True)
        keep = lines[:1] + [ln for ln in lines[1:] if not ln.split(",", 1)[0].isdigit()
                            or int(ln.split(",", 1)[0]) <= self.step]
        if len(keep) < len(lines):
            tmp = log_path.with_name(log_path.name + ".tmp")
            tmp.write_text("".join(keep))
            os.replace(tmp, log_path)
            print(f"[mind_diffusion] {log_path}: dropped {len(lines) - len(keep)} row(s) past step {self.step}, "
                  f"logged after the checkpoint this run resumes from", flush=True)

    # ---------------------------------------------------------------- loop
    def fit(self, make_dataset) -> dict:
        """``make_dataset(start, end)`` -> mindspore.dataset over steps [start, end)."""
        o = self.opts
        if self.step >= o.total_steps:
            # a finished run resumed (e.g. train.steps lowered to an earlier checkpoint's step):
            # (re)write the exports from the resumed state, so they match train.steps
            paths = self.export()
            print(f"[mind_diffusion] already at step {self.step} >= train.steps={o.total_steps}; nothing to "
                  f"train, exported {', '.join(str(p) for p in paths.values()) or 'nothing (rank > 0)'}")
            return {"step": self.step, **{k: str(v) for k, v in paths.items()}}
        dataset = make_dataset(self.step, o.total_steps)
        log_path = self.out_dir / "metrics.csv"
        writer, log_file = None, None
        if self.rank == 0:
            new = not log_path.exists()
            if not new:
                self._trim_metrics(log_path)
            log_file = open(log_path, "a", newline="")
            writer = csv.writer(log_file)
            if new:
                writer.writerow(["step", "loss", "loss_smooth", "loss_scale", "overflow", "img_per_s", "time_s"])
        bar = None
        if o.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=o.total_steps, initial=self.step, desc="train", dynamic_ncols=True)
        smooth, t_start, t_last, last_step = None, time.time(), time.time(), self.step
        loss_val = float("nan")
        try:
            for batch in dataset.create_tuple_iterator(num_epochs=1, output_numpy=False):
                loss, finite, scale = self.train_step(*batch)
                self.ema.step(self.step)
                self.step += 1
                loss_val = float(loss.asnumpy())
                if not math.isfinite(loss_val) and o.loss_scale == "none":
                    raise FloatingPointError(f"loss became {loss_val} at step {self.step}; lower train.lr or "
                                             f"enable train.clip_grad_norm")
                smooth = loss_val if smooth is None else 0.98 * smooth + 0.02 * loss_val
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{smooth:.4f}")
                if self.rank == 0 and (self.step % o.log_every == 0 or self.step == o.total_steps):
                    now = time.time()
                    ips = (self.step - last_step) * (self.images_per_step or 0) / max(now - t_last, 1e-9)
                    writer.writerow([self.step, f"{loss_val:.6f}", f"{smooth:.6f}", float(scale.asnumpy()),
                                     int(not bool(finite.asnumpy())), f"{ips:.2f}", f"{now - t_start:.1f}"])
                    log_file.flush()
                    if bar is None:
                        print(f"step {self.step} loss {loss_val:.5f} (smooth {smooth:.5f}) {ips:.1f} img/s",
                              flush=True)
                    t_last, last_step = now, self.step
                if self.step % o.ckpt_every == 0 and self.step < o.total_steps:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            if log_file is not None:
                log_file.close()
        self.save()
        paths = self.export()
        return {"step": self.step, "loss": loss_val, "loss_smooth": smooth, **{k: str(v) for k, v in paths.items()}}
