"""Learning-rate schedules (MindSpore cells, evaluated in the graph at each step) and their
host-side closed forms."""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import nn, ops


class WarmupLR(nn.learning_rate_schedule.LearningRateSchedule):
    """lr * min(1, (step+1) / warmup): Ho et al.'s linear warmup (0 = constant lr)."""

    def __init__(self, lr: float, warmup: int):
        super().__init__()
        self.lr, self.warmup = float(lr), max(int(warmup), 1)

    def construct(self, global_step):
        frac = ops.cast(global_step + 1, ms.float32) / self.warmup
        return self.lr * ops.minimum(frac, ops.ones_like(frac))


class WarmupCosineLR(nn.learning_rate_schedule.LearningRateSchedule):
    """The original's ``LearningRate``: ``start * step / warmup`` while ``step < warmup``, then
    ``end + 0.5 (start - end) (1 + cos(pi * min(step, decay) / decay))`` — the cosine runs
    from step 0, *not* from the end of the warmup (so it is already partly decayed there)."""

    def __init__(self, start_lr: float, end_lr: float, warmup_steps: int, decay_steps: int):
        super().__init__()
        if decay_steps < 1:
            raise ValueError(f"decay_steps must be >= 1, got {decay_steps}")
        self.start, self.end = float(start_lr), float(end_lr)
        self.warmup = float(max(int(warmup_steps), 0))
        self.warmup_div = float(max(int(warmup_steps), 1))
        self.decay = float(decay_steps)

    def construct(self, global_step):
        step = ops.cast(global_step, ms.float32)
        warm = self.start * step / self.warmup_div
        p = ops.minimum(step, self.decay)
        cos = self.end + 0.5 * (self.start - self.end) * (1.0 + ops.cos(math.pi * p / self.decay))
        return ops.select(step < self.warmup, warm, cos)


class DelayedLR(nn.learning_rate_schedule.LearningRateSchedule):
    """``base(step)`` from ``start_step`` on and 0 before: a parameter group on this schedule is
    left exactly as it is for the first ``start_step`` updates (AdamWeightDecay moves a parameter
    by ``lr * (adam_update + weight_decay * p)``), then trained on the common schedule."""

    def __init__(self, base, start_step: int):
        super().__init__()
        if int(start_step) < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        self.base = base
        self.start_step = float(int(start_step))

    def construct(self, global_step):
        lr = self.base(global_step)
        return ops.select(ops.cast(global_step, ms.float32) < self.start_step, ops.zeros_like(lr), lr)


class PivotLR(nn.learning_rate_schedule.LearningRateSchedule):
    """``pivot_lr`` for the first ``pivot_steps`` updates, then ``base(step)``: pivotal tuning's group
    (textual inversion's rows alone at their own rate, while every other group waits on a
    :class:`DelayedLR` of the same ``pivot_steps``), which then joins the common schedule."""

    def __init__(self, base, pivot_steps: int, pivot_lr: float):
        super().__init__()
        if int(pivot_steps) < 0 or float(pivot_lr) < 0:
            raise ValueError(f"pivot_steps and pivot_lr must be >= 0, got {pivot_steps}, {pivot_lr}")
        self.base = base
        self.pivot_steps = float(int(pivot_steps))
        self.pivot_lr = float(pivot_lr)

    def construct(self, global_step):
        lr = self.base(global_step)
        return ops.select(ops.cast(global_step, ms.float32) < self.pivot_steps, ops.ones_like(lr) * self.pivot_lr, lr)


def check_delay_start(key: str, start: int, total: int, what: str, consequence: str) -> None:
    """A :class:`DelayedLR` group's start ``key=start`` must come before the run's end ``total`` (0:
    not known yet, checked later); else one ``ConfigError`` line: ``consequence`` says what would happen."""
    from ..config import ConfigError

    if 0 < total <= start:
        raise ConfigError(f"{key}={start} is not below {what}: {consequence}")


def lr_at(step: int, start: float, end: float, warmup: int, decay: int) -> float:
    """Closed form of :class:`WarmupCosineLR` (host side, for logs and tests)."""
    if step < warmup:
        return start * step / warmup
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * min(step, decay) / decay))
