"""One trainer for every family.

Given a model, a loss cell over it, an optimizer and a random-access batch source
(``source[step] -> batch tuple`` for this rank, ``source.global_batch`` samples over all ranks), it
runs the compiled ``TrainStep`` (``AccumulatingTrainStep`` over ``grad_accum_steps`` micro-batches
per update, each rank's batch split on the host) with EMA,
logs to stdout and ``metrics.csv``, writes checkpoints atomically every ``ckpt_every`` steps
(rank 0 only) and resumes exactly: model, optimizer moments, loss scale, EMA, step and data
position (the batch stream is a pure function of the step). Steps count *updates*. Checkpoints
record the global position (``meta.samples_seen`` = updates x global batch) and the global batch
(``meta.global_batch``), nothing per rank, so a run saved on 8 workers resumes on 4 (per-worker
batch or accumulation doubled) with the same data order; a different global batch is refused.

Run folder layout::

    <out_dir>/config.yaml          the resolved config
    <out_dir>/metrics.csv          step, loss, ema-smoothed loss, scale, overflow, img/s, time
    <out_dir>/checkpoints/step_0000500.ckpt   full training state (+ meta.train_step, meta.seed)
    <out_dir>/checkpoints/latest.txt          name of the newest complete checkpoint
    <out_dir>/model_ema.ckpt       EMA weights under the model's names (for sampling)

Who may write there (``--resume`` / ``--overwrite``), how ``--resume auto`` picks its checkpoint
and which checkpoints keep-last-N keeps: :mod:`.run_dir`. Dropout layers are keyed on
(seed, step) (:mod:`..nn.dropout`), so identical runs and resumed runs are bit-identical.
SIGTERM / SIGINT: the step in flight finishes, a checkpoint is saved, and the process exits 130
with one line naming it (a second signal stops at once, without saving).
"""
from __future__ import annotations

import csv
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mindspore import Tensor, nn

from .. import timings
from ..checkpoint.io import CheckpointError, load_strict, save_atomic
from ..nn.dropout import RNG_MICRO_NAME, RNG_STEP_NAME, attach_dropout_keys, make_micro_counter
from ..utils.images import check_output_dir
from . import run_dir
from .data import micro_batches
from .step import EMA, GRAD_BUFFER_PREFIX, AccumulatingTrainStep, LossScaler, TrainStep, check_accum_steps


def model_tensors(cell) -> dict:
    """{name: Parameter} of a model's parameters for an exported model file (the trainer's dropout
    step counter, which lives on the model's dropout layers during training, left out), not copied:
    the exports hand them to ``save_atomic``, which writes one tensor at a time (a host copy of a
    full-size model's weights, 3.9 GB for Wukong's UNet and text encoder, would come on top of
    training's)."""
    return {p.name: p for p in cell.get_parameters() if p.name != RNG_STEP_NAME}


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
    grad_accum_steps: int = 1


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
        self.accum_steps = check_accum_steps(opts.grad_accum_steps)
        self.global_batch = getattr(source, "global_batch", None)
        # dropout masks keyed on (seed, layer, step, global row): identical and resumed runs draw the same masks
        micro = make_micro_counter() if self.accum_steps > 1 else None
        self.rng_step = attach_dropout_keys(loss_net, opts.seed, self.rank, self.accum_steps, micro)
        if self.accum_steps > 1:
            self.train_step = AccumulatingTrainStep(
                loss_net, optimizer, self.accum_steps, self.scaler, opts.clip_grad_norm, self.distributed,
                rng_step=self.rng_step, rng_micro=micro if self.rng_step is not None else None)
        else:
            self.train_step = TrainStep(loss_net, optimizer, self.scaler, opts.clip_grad_norm, self.distributed,
                                        rng_step=self.rng_step)
        self.train_step.set_train(True)
        self.ema = EMA(model, opts.ema_decay, opts.ema_start, opts.ema_every)
        self.step = 0
        self.resumed = False
        self.images_per_step = images_per_step
        self._stop = None
        if self.rank == 0:
            check_output_dir(self.out_dir)

    # ------------------------------------------------------------ run folder
    def run_file_names(self) -> tuple:
        """Top-level files of this trainer's run folder (beyond checkpoints/): what ``--overwrite``
        removes and what makes a folder "another run's"."""
        return run_dir.RUN_FILES

    def start(self, resume=None, overwrite: bool = False):
        """Take the run folder before anything is written: refuse another run's folder unless
        ``resume`` (continue it: ``'auto'`` or a .ckpt path) or ``overwrite`` (its files are listed and
        removed); sweep temp files left by an interrupted write; resume."""
        files = run_dir.check_run_dir(self.out_dir, resume, overwrite, self.run_file_names(), rank=self.rank)
        if self.rank == 0:
            run_dir.clear_run_dir(self.out_dir, files)
            run_dir.sweep_temp_files(self.out_dir)
        if resume:
            self.resume(resume)

    # ---------------------------------------------------------------- state
    def _state_params(self):
        seen, out = set(), []
        for p in list(self.train_step.get_parameters()) + list(self.ema.ema):
            if p.name.startswith(GRAD_BUFFER_PREFIX) or p.name == RNG_MICRO_NAME:
                continue  # zero at every update boundary, where checkpoints are taken
            if p.name not in seen:
                seen.add(p.name)
                out.append(p)
        return out

    def save(self, name: str | None = None) -> Path | None:
        if self.rank != 0:
            return None
        name = name or f"step_{self.step:07d}.ckpt"
        path = self.ckpt_dir / name
        extra = {"meta.train_step": int(self.step), "meta.seed": int(self.opts.seed)}
        if self.global_batch:
            extra.update({"meta.global_batch": int(self.global_batch),
                          "meta.samples_seen": int(self.step) * int(self.global_batch)})
        # the parameters themselves (weights, optimizer moments, EMA), written one at a time: a
        # host copy of them all first (3x the weights with Adam) is what ran a full-size
        # fine-tune out of memory at its first save
        save_atomic({p.name: p for p in self._state_params()}, path, extra=extra)
        run_dir.mark_latest(self.ckpt_dir, name, self.opts.keep_checkpoints)
        return path

    def export(self) -> dict:
        """model_ema.ckpt and model.ckpt under the model's own parameter names (rank 0)."""
        if self.rank != 0:
            return {}
        paths = {
            "ema": save_atomic(self.ema.model_tensors(), self.out_dir / "model_ema.ckpt",
                               extra={"meta.step": int(self.step)}),
            "model": save_atomic(model_tensors(self.model), self.out_dir / "model.ckpt",
                                 extra={"meta.step": int(self.step)}),
        }
        return paths

    @staticmethod
    def resume_candidates(resume: str | Path, out_dir: str | Path) -> list[Path]:
        """'auto' -> the checkpoints of out_dir/checkpoints, newest first (latest.txt's, then by
        step); else [the given .ckpt path]."""
        if str(resume) == "auto":
            ckpt_dir = Path(out_dir) / run_dir.CKPT_DIR
            found = run_dir.resume_candidates(ckpt_dir)
            if not found:
                raise CheckpointError(f"--resume auto: no checkpoint in {ckpt_dir} yet "
                                      f"(start without --resume, or pass a .ckpt path)")
            return found
        return [Path(resume)]

    @staticmethod
    def find_resume(resume: str | Path, out_dir: str | Path) -> Path:
        """'auto' -> newest checkpoint in out_dir/checkpoints; else a path to a .ckpt."""
        return Trainer.resume_candidates(resume, out_dir)[0]

    def resume(self, path: str | Path):
        """Restore the full training state from ``path``; ``'auto'`` walks back from the newest
        checkpoint of the run folder to the newest one that reads (one warning line per bad file)."""
        path, state = run_dir.read_resume_checkpoint(path, self.out_dir, "training checkpoint", self.rank)
        if "meta.train_step" not in state:
            raise CheckpointError(f"{path} is not a training checkpoint (no optimizer / EMA state); "
                                  f"to start from model weights use --init_from instead of --resume")
        step = int(np.asarray(state.pop("meta.train_step")))
        state.pop("meta.seed", None)
        self._check_global_batch(path, state.pop("meta.global_batch", None), state.pop("meta.samples_seen", None),
                                 step)
        if self.rng_step is not None:  # checkpoints written before dropout was keyed lack the counter
            state[RNG_STEP_NAME] = np.asarray(step, np.int32)
        elif RNG_STEP_NAME in state and not any(p.name == RNG_STEP_NAME for p in self._state_params()):
            state.pop(RNG_STEP_NAME)  # resumed with train dropout switched off
        load_strict(self._state_params(), state, path=str(path))
        self.step = step
        self.resumed = True
        if self.rank == 0:
            print(f"[mind_diffusion] resumed from {path} at step {step}", flush=True)

    def _check_global_batch(self, path, saved_batch, samples_seen, step: int):
        """A resumed run continues the global sample sequence only with the same global batch (the
        worker count and the accumulation may change). Checkpoints written before the global batch
        was recorded are taken as they are."""
        if saved_batch is None or not self.global_batch:
            return
        saved = int(np.asarray(saved_batch))
        if samples_seen is not None and int(np.asarray(samples_seen)) != step * saved:
            raise CheckpointError(f"{path}: meta.samples_seen={int(np.asarray(samples_seen))} is not "
                                  f"{step} updates x global batch {saved}; the checkpoint is inconsistent")
        if saved != int(self.global_batch):
            raise CheckpointError(
                f"{path} was trained with a global batch of {saved} samples per update, this run's is "
                f"{self.global_batch}{self._batch_words(saved)}")

    def _batch_words(self, target: int) -> str:
        describe = getattr(self.source, "describe_global_batch", None)
        reach = getattr(self.source, "reach_global_batch", None)
        how = f" ({describe()})" if describe else ""
        fix = reach(target) if reach else f"set train.batch_size / train.grad_accum_steps to give {target}"
        return f"{how}; resuming needs the same global batch: {fix}"

    def _trim_metrics(self, log_path: Path):
        run_dir.trim_metrics(log_path, self.step)

    # ---------------------------------------------------------------- signals
    def _catch_stop_signals(self) -> dict:
        """SIGINT / SIGTERM during fit: finish the step in flight, save, exit 130; a second signal
        stops at once (KeyboardInterrupt, nothing saved)."""
        self._stop = None
        if threading.current_thread() is not threading.main_thread():
            return {}

        def on_signal(signum, frame):
            if self._stop is not None:
                raise KeyboardInterrupt
            self._stop = signal.Signals(signum).name

        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, on_signal)
            except (ValueError, OSError):
                pass
        return old

    @staticmethod
    def _restore_signals(old: dict):
        for sig, handler in old.items():
            signal.signal(sig, handler)

    def _save_and_exit(self):
        saved = None
        if self.rank == 0 and self.step > 0:
            existing = self.ckpt_dir / f"step_{self.step:07d}.ckpt"
            saved = existing if run_dir.latest_name(self.ckpt_dir) == existing.name and existing.is_file() \
                else self.save()
        if self.rank == 0:
            what = (f"saved step {self.step} to {saved} (continue with --resume auto)" if saved else
                    "nothing to save (no step finished)")
            print(f"[mind_diffusion] stopped by {self._stop} at step {self.step}: {what}", flush=True)
        raise SystemExit(130)

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
            # a fresh run starts its own log (start() refused or removed another run's); a resumed one
            # drops the rows past its checkpoint and appends
            new = not (self.resumed and log_path.exists())
            if not new:
                self._trim_metrics(log_path)
            log_file = open(log_path, "a" if not new else "w", newline="")
            writer = csv.writer(log_file)
            if new:
                writer.writerow(["step", "loss", "loss_smooth", "loss_scale", "overflow", "img_per_s", "time_s"])
        bar = None
        if o.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=o.total_steps, initial=self.step, desc="train", dynamic_ncols=True)
        smooth, t_start, t_last, last_step = None, time.time(), time.time(), self.step
        loss_val = float("nan")
        old_handlers = self._catch_stop_signals()
        try:
            accum = self.accum_steps > 1
            for batch in dataset.create_tuple_iterator(num_epochs=1, output_numpy=accum):
                if accum:  # this rank's rows of the update, fed as A micro-batches
                    loss, finite, scale = self.train_step.run(
                        [tuple(Tensor(a) for a in mb) for mb in micro_batches(batch, self.accum_steps)])
                else:
                    loss, finite, scale = timings.call(self.train_step, *batch)
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
                if self._stop is not None:
                    break
        finally:
            self._restore_signals(old_handlers)
            if bar is not None:
                bar.close()
            if log_file is not None:
                log_file.close()
        if self._stop is not None and self.step < o.total_steps:
            self._save_and_exit()
        self.save()
        paths = self.export()
        return {"step": self.step, "loss": loss_val, "loss_smooth": smooth, **{k: str(v) for k, v in paths.items()}}


class NoEMA:
    """Stands in for :class:`EMA` when a run keeps none (``train.ema_decay <= 0``): no copy of the
    weights is made."""
    ema = ()

    def step(self, step):
        return None

    def state(self):
        return {}

    def model_state(self):
        return {}

    def model_tensors(self):
        return {}


def resolve_total_steps(tcfg, steps_per_epoch: int) -> int:
    """``train.steps`` when > 0, else ``train.epochs`` x the steps of one epoch."""
    if int(tcfg.steps) > 0:
        return int(tcfg.steps)
    if int(tcfg.epochs) < 1:
        raise ValueError("set train.steps >= 1 or train.epochs >= 1")
    return int(tcfg.epochs) * steps_per_epoch


def make_train_options(tcfg, total: int, steps_per_epoch: int, progress: bool) -> TrainOptions:
    """:class:`TrainOptions` from a ``train:`` section (``ckpt_every`` 0 = once per epoch)."""
    ckpt_every = int(tcfg.ckpt_every) if int(tcfg.ckpt_every) > 0 else steps_per_epoch
    return TrainOptions(total_steps=total, log_every=int(tcfg.log_every), ckpt_every=ckpt_every,
                        keep_checkpoints=int(tcfg.keep_checkpoints),
                        ema_decay=float(tcfg.ema_decay), ema_start=int(tcfg.ema_start),
                        ema_every=int(tcfg.ema_every), clip_grad_norm=float(tcfg.clip_grad_norm),
                        loss_scale=str(tcfg.loss_scale), init_loss_scale=float(tcfg.init_loss_scale),
                        loss_scale_window=int(tcfg.loss_scale_window), seed=int(tcfg.seed), progress=progress,
                        grad_accum_steps=int(tcfg.grad_accum_steps))
