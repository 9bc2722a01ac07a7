"""Turn the library's user-facing errors into one clear line and a non-zero exit code.

Scripts wrap their work in ``run_cli(job)``: known error types (bad config, missing data, bad
checkpoint, bad argument) print ``error: <message>`` to stderr and exit 2; anything else is a
bug and keeps its traceback. ``MIND_DIFFUSION_DEBUG=1`` shows tracebacks for all errors.
"""
from __future__ import annotations

import os
import sys


def user_error_types():
    from .checkpoint.io import CheckpointError
    from .config import ConfigError
    from .runtime import RuntimeConfigError
    from .train.data import DataError

    return (ConfigError, DataError, CheckpointError, RuntimeConfigError, ValueError, FileNotFoundError,
            PermissionError, FloatingPointError)


def run_cli(job) -> int:
    try:
        job()
    except KeyboardInterrupt:
        print("\ninterrupted (checkpoints and images already written are kept)", file=sys.stderr)
        return 130
    except user_error_types() as exc:
        if os.environ.get("MIND_DIFFUSION_DEBUG"):
            raise
        msg = str(exc).strip() or type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0
