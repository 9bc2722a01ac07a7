"""Where a run's time goes: ``--timings`` (or ``MIND_DIFFUSION_TIMINGS=1``) prints, at exit,

    [mind_diffusion] timings: import 2.1 s, runtime 0.1 s, checkpoint load 1.6 s, compile 4.0 s,
    text encode 0.1 s, sampling 2.0 s, decode 0.3 s, write 0.0 s, other 0.2 s, total 10.4 s

``import`` runs from the start of the process (Linux: /proc) to the first phase; ``compile``
is the time of the explicit graph compilation of each cell's first call per input signature
(graph mode only: :func:`call`, which compiles that way with timings off too), kept out of the
phase of that call; ``other`` is the rest of the wall time. Off, every phase hook costs one
dict lookup.
"""
from __future__ import annotations

import atexit
import os
import sys
import time
import weakref
from contextlib import contextmanager

ENV = "MIND_DIFFUSION_TIMINGS"
_enabled = os.environ.get(ENV, "").strip().lower() not in ("", "0", "off", "false", "no")
_phases: dict = {}
_first = None
_compiled = weakref.WeakKeyDictionary()   # cell -> input signatures compiled (graph mode)
_compiled_by_id: dict = {}
_registered = False


def process_start() -> float:
    """Wall-clock time the process started (Linux), else this module's import time."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/self/stat") as fh:
            start = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return btime + start / ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED


_IMPORTED = time.time()


def enabled() -> bool:
    return _enabled


def enable():
    global _enabled, _registered
    _enabled = True
    if not _registered:
        _registered = True
        atexit.register(_print_report)


def add(name: str, seconds: float):
    global _first
    if not _enabled:
        return
    if _first is None:
        _first = time.time() - seconds
    _phases[name] = _phases.get(name, 0.0) + seconds


@contextmanager
def phase(name: str):
    if not _enabled:
        yield
        return
    global _first
    t0 = time.time()
    if _first is None:
        _first = t0
    before = _phases.get("compile", 0.0)
    try:
        yield
    finally:
        inner = _phases.get("compile", 0.0) - before if name != "compile" else 0.0
        _phases[name] = _phases.get(name, 0.0) + time.time() - t0 - inner


def _signature(args) -> tuple:
    sig = []
    for a in args:
        shape = getattr(a, "shape", None)
        sig.append((tuple(shape), str(a.dtype)) if shape is not None else repr(a))
    return tuple(sig)


def call(cell, *args):
    """``cell(*args)``. In graph mode an ``nn.Cell``'s first call per input signature compiles it
    first, explicitly (``cell.compile``; with timings on, timed as ``compile``). When that compile grew
    the process by 64 MiB or more, the memory the compiler freed goes back to the OS
    (:func:`mind_diffusion.memory.release_freed`) before the step's memory pool is filled, which
    lowers the first run's peak RSS. The call then reuses the compiled graph."""
    import mindspore as ms

    # a Cell in graph mode; anything else (a function, a test's stand-in) is just called
    if isinstance(cell, ms.nn.Cell) and ms.get_context("mode") == ms.GRAPH_MODE:
        try:
            seen = _compiled.setdefault(cell, set())
        except TypeError:                       # a cell that cannot be weakly referenced
            seen = _compiled_by_id.setdefault(id(cell), set())
        sig = _signature(args)
        if sig not in seen:
            from . import memory

            before = memory.resident_mb()
            with phase("compile"):
                cell.compile(*args)
            seen.add(sig)
            memory.release_freed(grown_from=before)
    return cell(*args)


def report() -> dict:
    """{phase: seconds} with ``import``, ``other`` and ``total`` (wall time so far)."""
    now = time.time()
    start = process_start()
    out = {"import": max(0.0, (_first or now) - start)}
    out.update(_phases)
    out["total"] = now - start
    out["other"] = max(0.0, out["total"] - sum(v for k, v in out.items() if k != "total"))
    return out


def format_report(rep: dict | None = None) -> str:
    rep = report() if rep is None else rep
    order = [k for k in rep if k not in ("other", "total")] + ["other", "total"]
    return "[mind_diffusion] timings: " + ", ".join(f"{k} {rep[k]:.2f} s" for k in order)


def _print_report():
    if _enabled:
        print(format_report(), file=sys.stderr, flush=True)


if _enabled:
    _enabled = False
    enable()
