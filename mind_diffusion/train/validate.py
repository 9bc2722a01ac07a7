"""Training configs checked up front: every numeric key of the ``train:`` section (and the few
model / data keys a trainer depends on) against its range, before any data is read or any
network is built, so that ``train.lr=-1`` or ``train.batch_size=0`` is one clear line instead
of a silently wrong run or a traceback from deep inside the step.

    check_train_section(cfg.train)                 # DDPM / LDM / VAE train: sections
    check_ddpm_model(cfg.model)                    # image size vs the UNet's downsampling
    check_classes(num_classes, class_names)        # the data's classes vs the model's
"""
from __future__ import annotations

import math

from ..config import ConfigError

SEED_LIMIT = 2**32

# key -> (low, high, low inclusive, high inclusive, integer); None = unbounded. A key absent from a family's section is not checked.
_INF = None
TRAIN_RANGES = {
    "steps": (1, _INF, True, True, True),
    "epochs": (1, _INF, True, True, True),
    "batch_size": (1, _INF, True, True, True),
    "grad_accum_steps": (1, _INF, True, True, True),
    "lr": (0, _INF, False, True, False),
    "start_learning_rate": (0, _INF, False, True, False),
    "end_learning_rate": (0, _INF, True, True, False),
    "warmup_steps": (0, _INF, True, True, True),
    "decay_steps": (0, _INF, True, True, True),
    "adam_eps": (0, _INF, False, True, False),
    "eps": (0, _INF, False, True, False),
    "weight_decay": (0, _INF, True, True, False),
    "clip_grad_norm": (0, _INF, True, True, False),
    "init_loss_scale": (0, _INF, False, True, False),
    "loss_scale_window": (1, _INF, True, True, True),
    "ema_decay": (0, 1, True, True, False),
    "ema_start": (0, _INF, True, True, True),
    "ema_every": (1, _INF, True, True, True),
    "log_every": (1, _INF, True, True, True),
    "ckpt_every": (1, _INF, True, True, True),
    "keep_checkpoints": (0, _INF, True, True, True),
    "seed": (0, SEED_LIMIT, True, False, True),
    "text_encoder_start_step": (0, _INF, True, True, True),
    "unet_dropout": (0, 1, True, False, False),
    "kl_weight": (0, _INF, True, True, False),
    "l2_weight": (0, _INF, True, True, False),
    "contrast_weight": (0, _INF, True, True, False),
}
#: keys whose 0 means something in the LDM / VAE trainers (0 steps: epochs x steps per epoch;
#: 0 ckpt_every: once per epoch)
ZERO_MEANS_DEFAULT = ("steps", "ckpt_every")
LOSS_SCALES = ("none", "static", "dynamic")


def _interval(low, high, lo_in, hi_in) -> str:
    if high is None:
        return f">= {low}" if lo_in else f"> {low}"
    return f"in {'[' if lo_in else '('}{low}, {high}{']' if hi_in else ')'}"


def check_number(value, where: str, low=None, high=None, low_inclusive=True, high_inclusive=True,
                 integer=False, hint: str = ""):
    """``value`` is a finite number (an integer when ``integer``) in the range, or
    :class:`ConfigError` naming ``where`` and the range."""
    rng = _interval(low, high, low_inclusive, high_inclusive)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (integer and not float(value).is_integer()):
        raise ConfigError(f"{where} must be {kind} {rng}, got {value!r}{hint}")
    v = float(value)
    ok = math.isfinite(v)
    if ok and low is not None:
        ok = v >= low if low_inclusive else v > low
    if ok and high is not None:
        ok = v <= high if high_inclusive else v < high
    if not ok:
        raise ConfigError(f"{where} must be {rng}, got {value!r}{hint}")


def check_train_section(t, section: str = "train", zero_ok: tuple = ()) -> None:
    """Every known numeric key of a ``train:`` section in its range (see :data:`TRAIN_RANGES`);
    ``zero_ok``: keys for which 0 is allowed (a documented default, e.g. LDM's
    ``train.steps=0`` = epochs x steps per epoch). Betas in [0, 1), a known loss scale."""
    for key, (low, high, lo_in, hi_in, integer) in TRAIN_RANGES.items():
        if key not in t or t[key] is None:
            continue
        if key in zero_ok and t[key] == 0 and not isinstance(t[key], bool):
            continue
        hint = " (0 = the default)" if key in zero_ok else ""
        check_number(t[key], f"{section}.{key}", low, high, lo_in, hi_in, integer, hint)
    for key in ("adam_betas", "betas"):
        if key in t and t[key] is not None:
            betas = list(t[key])
            if len(betas) != 2:
                raise ConfigError(f"{section}.{key} must be two numbers [beta1, beta2], got {betas}")
            for i, b in enumerate(betas):
                check_number(b, f"{section}.{key}[{i}]", 0, 1, True, False)
    if "loss_scale" in t and str(t.loss_scale) not in LOSS_SCALES:
        raise ConfigError(f"{section}.loss_scale must be one of {', '.join(LOSS_SCALES)}, got {t.loss_scale!r}")


def check_ddpm_model(m, section: str = "model") -> None:
    """The DDPM UNet's shape keys: positive sizes, dropout in [0, 1), and an image size the
    UNet can halve ``len(channel_mults) - 1`` times (else graph compilation fails deep inside)."""
    mults = list(m.channel_mults)
    if not mults:
        raise ConfigError(f"{section}.channel_mults must list at least one multiplier, got []")
    for i, v in enumerate(mults):
        check_number(v, f"{section}.channel_mults[{i}]", 1, None, True, True, True)
    for key in ("image_size", "img_channels", "base_channels", "num_res_blocks", "time_emb_dim",
                "num_groups"):
        check_number(m[key], f"{section}.{key}", 1, None, True, True, True)
    check_number(m.dropout, f"{section}.dropout", 0, 1, True, False)
    if m.num_classes is not None:
        check_number(m.num_classes, f"{section}.num_classes", 1, None, True, True, True,
                     " (or null for an unconditional model)")
    factor = 2 ** (len(mults) - 1)
    size = int(m.image_size)
    if size % factor:
        lower, upper = max(factor, size // factor * factor), (size // factor + 1) * factor
        raise ConfigError(f"{section}.image_size={size} must be a multiple of {factor} (the UNet halves "
                          f"the image {len(mults) - 1} times for {section}.channel_mults={mults}): use "
                          f"{lower} or {upper}, or fewer channel_mults")
    ch = [int(m.base_channels) * int(c) for c in mults]
    if any(c % int(m.num_groups) for c in ch):
        raise ConfigError(f"{section}.num_groups={m.num_groups} must divide every channel count "
                          f"({section}.base_channels x channel_mults = {ch})")


def check_classes(num_classes, class_names, where: str = "model.num_classes") -> None:
    """A class-conditional model's ``num_classes`` equals the number of classes in the data
    (an unconditional model, ``None``, ignores the labels)."""
    if num_classes is None:
        return
    names = list(class_names)
    if int(num_classes) != len(names):
        shown = ", ".join(str(n) for n in names[:10]) + (" ..." if len(names) > 10 else "")
        raise ConfigError(f"the data has {len(names)} classes ({shown}) but {where}={num_classes}: set "
                          f"{where}={len(names)} (or null for an unconditional model)")
