"""Helpers shared by the benchmark scripts."""
import os
import platform
import subprocess
import time
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo with its family and model numbers (virtual machines often
    name different CPUs alike, e.g. "Intel(R) Xeon(R) Processor"); falls back to platform info."""
    try:
        fields = {}
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break
        if "model name" in fields:
            ids = (f" (family {fields['cpu family']} model {fields['model']})"
                   if "cpu family" in fields and "model" in fields else "")
            return fields["model name"] + ids
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_process(cmd: list, env: dict, cwd) -> dict:
    """Run ``cmd`` to its end: wall time, its own peak RSS (wait4), exit code, the 1-minute load
    average before and after, its output (stdout and stderr together)."""
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    return {"wall": time.perf_counter() - t0, "rss_mb": usage.ru_maxrss / 1024,
            "code": os.waitstatus_to_exitcode(status), "load": (load0, os.getloadavg()[0]), "output": out}
