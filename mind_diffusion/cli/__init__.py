"""Turn the library's user-facing errors into one clear line and a non-zero exit code.

Scripts wrap their work in ``run_cli(job)``: known error types (bad config, missing data, bad
checkpoint, bad argument) print ``error: <message>`` to stderr and exit 2; anything else is a
bug and keeps its traceback. ``MIND_DIFFUSION_DEBUG=1`` shows tracebacks for all errors.
"""
from __future__ import annotations

import os
import signal
import sys
import threading


def user_error_types():
    from ..checkpoint.io import CheckpointError
    from ..config import ConfigError
    from ..runtime import RuntimeConfigError
    from ..train.data import DataError

    return (ConfigError, DataError, CheckpointError, RuntimeConfigError, ValueError, FileNotFoundError,
            FileExistsError, PermissionError, FloatingPointError)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_cli(job) -> int:
    """SIGINT and SIGTERM end the job with one line saying what was written and where (every
    image is written whole, by atomic rename, so what is there is complete), exit 130.
    The graphs this run compiled join the compile cache only when the job succeeded."""
    from .. import compile_cache

    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _raise_interrupt)
    ok = False
    try:
        job()
        ok = True
    except KeyboardInterrupt:
        from ..utils.images import written_summary

        print(f"\ninterrupted: {written_summary()}; every file written is complete and kept",
              file=sys.stderr, flush=True)
        return 130
    except user_error_types() as exc:
        if os.environ.get("MIND_DIFFUSION_DEBUG"):
            raise
        msg = str(exc).strip() or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    finally:
        compile_cache.finish(success=ok)
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    return 0


def run_training(args, make_config, train) -> int:
    """The body of every training script: ``cfg = make_config()`` (loaded and checked), the runtime
    from the script's runtime flags (``add_runtime_args``) seeded with ``cfg.train.seed``, then
    ``result = train(cfg, runtime)``; rank 0 prints ``done: <result>``. All under :func:`run_cli`,
    so bad input is one line and exit 2."""

    def job():
        from ..runtime import cli_options, init_runtime

        cfg = make_config()
        rt = init_runtime(args.device_target, args.mode, seed=int(cfg.train.seed), precision=args.precision,
                          **cli_options(args))
        result = train(cfg, rt)
        if rt.rank == 0:
            print(f"[mind_diffusion] done: {result}")

    return run_cli(job)
