"""Giving memory the graph compiler has freed back to the operating system.

MindSpore's graph compiler allocates a lot of small objects with the C library's ``malloc`` and
frees many of them when it is done (the full-size SD-v1 UNet: RSS grows 1.08 GB during the
compile; about 310 MB of it is free again afterwards). glibc keeps freed memory inside its heaps,
so those pages stay resident, and the runtime memory pool that the first step then fills comes on
top of them: that is the peak a first run shows. ``malloc_trim(0)`` hands the free pages back.
:func:`release_freed` does that where the C library is glibc (elsewhere it does nothing);
:func:`mind_diffusion.timings.call` runs it after an explicit graph compile that grew the process by
``MIN_GROWTH_MB`` or more.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc

_trim = None


def _malloc_trim():
    """glibc's ``malloc_trim``, or False where the C library has none (musl, macOS, Windows)."""
    global _trim
    if _trim is None:
        _trim = False
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
            fn = libc.malloc_trim
        except (OSError, AttributeError, TypeError):
            return _trim
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
        _trim = fn
    return _trim


def resident_mb() -> float | None:
    """This process's resident set now, in MiB (Linux), else None."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


MIN_GROWTH_MB = 64.0   # below this much growth during a compile, nothing worth trimming was freed


def release_freed(grown_from: float | None = None, min_growth_mb: float = MIN_GROWTH_MB) -> bool:
    """Collect Python garbage, then return the C heap's free pages to the OS (glibc's
    ``malloc_trim(0)``). Nothing in use is touched. With ``grown_from`` (the resident MiB before a
    compile), only when the process grew by at least ``min_growth_mb`` since: a graph loaded from the
    compile cache frees little, and the collection and trim cost 0.05-0.25 s. True where the trim ran."""
    if grown_from is not None:
        now = resident_mb()
        if now is None or now - grown_from < min_growth_mb:
            return False
    trim = _malloc_trim()
    if not trim:
        return False
    gc.collect()
    trim(0)
    return True
