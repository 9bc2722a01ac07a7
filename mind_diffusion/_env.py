"""Process-level defaults that must be in place before MindSpore runs its first op.

Imported first by ``mind_diffusion/__init__.py``. Only sets a variable when the user has not:
- ``ONEDNN_MAX_CPU_ISA=AVX2``: on many x86 CPUs MindSpore's bundled oneDNN otherwise picks a
  reference convolution kernel that is about 100x slower.
- ``OMP_WAIT_POLICY=PASSIVE``: the OpenMP threads of the oneDNN convolutions (``cpu_gemm``) sleep as
  soon as a convolution ends instead of spinning for a while; spinning, they took the cores from the
  MindSpore kernels that run between two convolutions (digits DDPM training step: 0.33 s with the
  default policy, 0.21 s with this one; PyTorch's step is the same either way). libgomp reads it once,
  when it loads.
- ``GLOG_v=3``: MindSpore logs errors only (set ``GLOG_v=2`` for warnings, ``1`` for info); except
  in msrun's scheduler process (``MS_ROLE=MS_SCHED``), which always keeps warnings (``GLOG_v`` 2 at
  most): they list the ranks that joined the cluster, and the launcher reads them to name a rank
  that never did (``train/launch.py``).
- ``OPENBLAS_CORETYPE`` (x86 Linux, when numpy is not loaded yet): the kernel family of numpy's
  bundled OpenBLAS, named from the CPU's flags (``Cooperlake`` with AVX-512 BF16, ``SkylakeX`` with
  AVX-512, ``Haswell`` with AVX2 + FMA). numpy's OpenBLAS 0.3.23 does not know newer CPU models
  (seen here: Intel family 6 model 207) and falls back to its generic SSE3 "Prescott" kernels, 7x
  slower (32 against 210-290 GFLOP/s on a 2-core Xeon); the CPU convolution / dense kernels of
  ``cpu_gemm`` run on that sgemm. Named this way the choice is what OpenBLAS picks on the CPUs it
  does know. ``cpu_gemm`` checks the family OpenBLAS really loaded either way.
"""
import os
import sys

DEFAULTS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_WAIT_POLICY": "PASSIVE", "GLOG_v": "3"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none: not Linux, not x86)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def openblas_coretype(flags: set[str]) -> str | None:
    """The OpenBLAS kernel family for a CPU with these flags, or None (leave OpenBLAS to decide)."""
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def apply_env_defaults():
    applied = {}
    if "OPENBLAS_CORETYPE" not in os.environ and "numpy" not in sys.modules:
        core = openblas_coretype(cpu_flags())
        if core is not None:
            os.environ["OPENBLAS_CORETYPE"] = applied["OPENBLAS_CORETYPE"] = core
    for key, value in DEFAULTS.items():
        if key == "GLOG_v" and os.environ.get("MS_ROLE") == "MS_SCHED":
            if os.environ.get(key, "2").strip() not in ("0", "1", "2"):
                os.environ[key] = applied[key] = "2"
            continue
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


APPLIED = apply_env_defaults()
