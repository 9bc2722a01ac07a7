"""Process-level defaults that must be in place before MindSpore runs its first op.

Imported first by ``mind_diffusion/__init__.py``. Only sets a variable when the user has not:
- ``ONEDNN_MAX_CPU_ISA=AVX2``: on many x86 CPUs MindSpore's bundled oneDNN otherwise picks a
  reference convolution kernel that is about 100x slower.
- ``GLOG_v=3``: MindSpore logs errors only (set ``GLOG_v=2`` for warnings, ``1`` for info); except
  in msrun's scheduler process (``MS_ROLE=MS_SCHED``), which always keeps warnings (``GLOG_v`` 2 at
  most): they list the ranks that joined the cluster, and the launcher reads them to name a rank
  that never did (``train/launch.py``).
"""
import os

DEFAULTS = {"ONEDNN_MAX_CPU_ISA": "AVX2", "GLOG_v": "3"}


def apply_env_defaults():
    applied = {}
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
