"""One runtime entry for every script: device, execution mode, seeds, precision, distribution.

``init_runtime`` picks the device (Ascend -> GPU -> CPU unless ``device_target`` overrides it),
the execution mode (graph or pynative), seeds numpy / Python / MindSpore, decides the precision
policy, points MindSpore's graph compile cache at the folder of this run's key (see
:mod:`mind_diffusion.compile_cache`: on by default, ``--no_compile_cache`` turns it off) and,
when asked, initialises data-parallel communication (msrun or rank-table launch).
It prints one line saying what it chose (rank 0 only). Scripts never hard-code a device.
"""
from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

from . import _env  # noqa: F401  (env defaults before mindspore is imported)

import numpy as np

DEVICE_ORDER = ("Ascend", "GPU", "CPU")
MODES = {"graph": "GRAPH_MODE", "pynative": "PYNATIVE_MODE"}
_ALIASES = {"ascend": "Ascend", "npu": "Ascend", "gpu": "GPU", "cuda": "GPU", "cpu": "CPU"}


class RuntimeConfigError(ValueError):
    """A device / mode / precision request that cannot be honoured."""


@dataclass(frozen=True)
class Precision:
    """Where each kind of op runs. ``compute`` is the dtype name of convs / matmuls;
    norms and softmax always stay in fp32 (``norm`` is informative)."""

    compute: str = "float32"
    norm: str = "float32"

    @property
    def is_fp32(self) -> bool:
        return self.compute == "float32"

    def ms_dtype(self):
        import mindspore as ms

        return {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}[self.compute]


@dataclass
class Runtime:
    device_target: str
    mode: str
    seed: int | None
    precision: Precision
    rank: int = 0
    group_size: int = 1
    distributed: bool = False
    device_id: int = 0
    notes: list = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        parts = [
            f"device={self.device_target}",
            f"mode={self.mode}",
            f"precision={self.precision.compute} (norms fp32)",
            f"seed={self.seed}",
        ]
        if self.distributed:
            parts.append(f"rank={self.rank}/{self.group_size}")
        return "[mind_diffusion] runtime: " + ", ".join(parts) + "".join(f"; {n}" for n in self.notes)


def normalize_device(name: str | None) -> str | None:
    """'auto' / None -> None; 'gpu' -> 'GPU' etc. Raises for unknown names."""
    if name is None or str(name).lower() in ("", "auto"):
        return None
    key = str(name).lower()
    if key not in _ALIASES:
        raise RuntimeConfigError(
            f"unknown device_target {name!r}: use one of auto, Ascend, GPU, CPU"
        )
    return _ALIASES[key]


def available_devices() -> list[str]:
    """Devices this MindSpore build can use here, in preference order."""
    import mindspore as ms

    found = []
    for dev in DEVICE_ORDER:
        try:
            if ms.hal.is_available(dev):
                found.append(dev)
        except Exception:  # a plugin that fails to load means the device is not usable
            continue
    return found or ["CPU"]


def resolve_precision(device_target: str, precision: str | None) -> Precision:
    """fp32 on CPU; fp16 compute (fp32 norms) on Ascend/GPU unless overridden."""
    if precision in (None, "", "auto"):
        return Precision("float32" if device_target == "CPU" else "float16")
    aliases = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
               "bf16": "bfloat16", "bfloat16": "bfloat16"}
    if precision not in aliases:
        raise RuntimeConfigError(f"unknown precision {precision!r}: use auto, fp32, fp16 or bf16")
    value = aliases[precision]
    if device_target == "CPU" and value != "float32":
        raise RuntimeConfigError(
            f"precision {precision} is not supported on CPU (MindSpore CPU kernels are fp32): use fp32"
        )
    return Precision(value)


#: MindSpore's ``set_seed`` takes 0 .. 2**32 - 1
SEED_LIMIT = 2**32


def check_seed(seed, what: str = "seed") -> int | None:
    """``seed`` as an int, or :class:`RuntimeConfigError` unless ``0 <= seed < 2**32``."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise RuntimeConfigError(f"{what} must be an integer in 0..{SEED_LIMIT - 1}, got {seed!r}")
    if not 0 <= int(seed) < SEED_LIMIT:
        raise RuntimeConfigError(f"{what} {seed} is out of range: use an integer in 0..{SEED_LIMIT - 1}")
    return int(seed)


def seed_everything(seed: int | None):
    if seed is None:
        return
    seed = check_seed(seed)
    import mindspore as ms

    random.seed(seed)
    np.random.seed(seed % (2**32))
    ms.set_seed(seed)


def _launched_distributed() -> bool:
    """True when started by msrun (MS_WORKER_NUM / MS_ROLE) or a rank-table launcher."""
    if os.environ.get("MS_ROLE") == "MS_WORKER" or int(os.environ.get("MS_WORKER_NUM", "1")) > 1:
        return True
    return bool(os.environ.get("RANK_TABLE_FILE")) and int(os.environ.get("RANK_SIZE", "1")) > 1


def check_rank_env(rank: int, group: int, env=None):
    """A rank-table launch exports RANK_ID and RANK_SIZE per process (the HCCL rank of the device):
    the rank and world the communication init gave this process must be those. msrun's own
    RANK_ID (not always set per worker) is not checked."""
    env = os.environ if env is None else env
    if not env.get("RANK_TABLE_FILE") or (env.get("MS_ROLE") and env.get("MIND_DIFFUSION_LAUNCHER") != "ranktable"):
        return
    want = (env.get("RANK_ID"), env.get("RANK_SIZE"))
    if want[0] is not None and int(want[0]) != rank or want[1] is not None and int(want[1]) != group:
        raise RuntimeConfigError(
            f"communication init gave rank {rank} of {group}, but the rank table launch exported RANK_ID="
            f"{want[0]} RANK_SIZE={want[1]}: relaunch with scripts/run_train_*_ranktable.sh, which exports "
            f"them per device from {env.get('RANK_TABLE_FILE')}")


def init_runtime(
    device_target: str | None = "auto",
    mode: str = "graph",
    seed: int | None = None,
    precision: str | None = "auto",
    distributed: bool | str = "auto",
    verbose: bool = True,
    compile_cache=None,
    cache_key: dict | None = None,
    timings: bool = False,
) -> Runtime:
    """Initialise MindSpore once for this process and return what was chosen.

    distributed: True (require), False (never) or "auto" (when launched by msrun / rank table).
    compile_cache: None (on: ``$MIND_DIFFUSION_COMPILE_CACHE`` or the per-user folder), a
    folder, or False (off). cache_key: what decides this job's graphs besides device, mode,
    precision and code (e.g. ``{"config": cfg, "shapes": ...}``); default: the command line
    and the files it names. timings: print a phase breakdown at exit (as
    ``MIND_DIFFUSION_TIMINGS=1``).
    """
    from . import compile_cache as cc
    from . import timings as tm

    if timings:
        tm.enable()
    t_start = time.time()
    import mindspore as ms

    check_seed(seed)
    if mode not in MODES:
        raise RuntimeConfigError(f"unknown mode {mode!r}: use 'graph' or 'pynative'")
    requested = normalize_device(device_target)
    avail = available_devices()
    notes = []
    if requested is None:
        target = avail[0]
    elif requested in avail:
        target = requested
    else:
        raise RuntimeConfigError(
            f"device_target={requested} is not available in this MindSpore installation "
            f"(available: {', '.join(avail)}); pass --device_target {avail[0]} or auto"
        )
    want_dist = _launched_distributed() if distributed == "auto" else bool(distributed)
    device_id = int(os.environ.get("DEVICE_ID", os.environ.get("LOCAL_RANK", "0")) or 0)
    ms.set_context(mode=getattr(ms, MODES[mode]))
    if target == "CPU":
        ms.set_device("CPU")
    elif want_dist and os.environ.get("MS_ROLE"):
        ms.set_device(target)  # msrun assigns the device id per local rank
    else:
        ms.set_device(target, device_id)
    prec = resolve_precision(target, precision)

    rank, group = 0, 1
    if want_dist:
        from mindspore.communication import get_group_size, get_rank, init

        init()
        rank, group = get_rank(), get_group_size()
        check_rank_env(rank, group)
        ms.set_auto_parallel_context(
            parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=group
        )
    if seed is not None:
        seed_everything(seed)
    cache = cc.setup(compile_cache, device_target=target, mode=mode, precision=prec.compute,
                     rank=rank if want_dist else 0, script_key=cache_key)
    if cache is not None:
        notes.append(cache.describe())
    if _env.APPLIED:
        notes.append("set " + ", ".join(f"{k}={v}" for k, v in _env.APPLIED.items()))
    rt = Runtime(target, mode, seed, prec, rank, group, want_dist, device_id, notes)
    tm.add("runtime", time.time() - t_start)
    if verbose and rt.is_main:
        print(rt.describe(), flush=True)
    return rt


def add_runtime_args(parser, default_mode: str = "graph"):
    """The runtime flags every script shares."""
    parser.add_argument("--device_target", default="auto",
                        help="auto (Ascend -> GPU -> CPU), Ascend, GPU or CPU")
    parser.add_argument("--mode", default=default_mode, choices=sorted(MODES),
                        help="MindSpore execution mode")
    parser.add_argument("--precision", default="auto",
                        help="auto (fp32 on CPU, fp16 with fp32 norms on Ascend/GPU), fp32, fp16, bf16")
    return add_cache_args(parser)


def add_cache_args(parser):
    """--compile_cache_dir, --no_compile_cache, --timings (part of :func:`add_runtime_args`)."""
    parser.add_argument("--compile_cache_dir", default=None,
                        help="graph compile cache folder (default: $MIND_DIFFUSION_COMPILE_CACHE, "
                             "else ~/.cache/mind_diffusion/compile)")
    parser.add_argument("--no_compile_cache", action="store_true",
                        help="compile every graph afresh (no reading or writing of the cache)")
    parser.add_argument("--timings", action="store_true",
                        help="print where the time went (import, load, compile, sampling, ...)")
    return parser


def cli_options(args) -> dict:
    """init_runtime's keyword arguments from the flags of :func:`add_runtime_args`."""
    off = getattr(args, "no_compile_cache", False)
    return {"compile_cache": False if off else getattr(args, "compile_cache_dir", None),
            "timings": bool(getattr(args, "timings", False))}
