"""Shared checks for the scripts' user-facing errors: one ``error:`` line on stderr, exit code 2,
no traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args, timeout: int = 600, env: dict | None = None,
               root: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``scripts/<script>`` (python, or bash for ``.sh`` / ``infer.sh``) from the repo root
    (``root``: another checkout of it). ``root`` leads PYTHONPATH, so a copy of the code imports
    its own ``mind_diffusion``, not the editable install of this checkout."""
    full = dict(os.environ)
    full.pop("MIND_DIFFUSION_DEBUG", None)
    full["PYTHON"] = sys.executable
    full["PYTHONPATH"] = os.pathsep.join([str(root)] + [p for p in [full.get("PYTHONPATH")] if p])
    full.update(env or {})
    path = root / script if (root / script).is_file() else root / "scripts" / script
    cmd = ["bash", str(path)] if script.endswith(".sh") else [sys.executable, str(path)]
    return subprocess.run(cmd + [str(a) for a in args], cwd=root, env=full, capture_output=True, text=True,
                          timeout=timeout)


def check_one_line_error(rc: int, stderr: str, *needles) -> str:
    """Exit code 2, exactly one ``error:`` line containing every needle, no traceback."""
    assert rc == 2, (rc, stderr[-3000:])
    errs = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(errs) == 1 and "Traceback" not in stderr, stderr[-3000:]
    for n in needles:
        assert n in errs[0], errs[0]
    return errs[0]


def one_line_error(proc: subprocess.CompletedProcess, *needles) -> str:
    """:func:`check_one_line_error` on a finished subprocess."""
    return check_one_line_error(proc.returncode, proc.stderr, *needles)


def captured_error(capsys, rc: int, *needles) -> str:
    """:func:`check_one_line_error` on an in-process ``main()`` run (stderr from pytest's capsys)."""
    return check_one_line_error(rc, capsys.readouterr().err, *needles)
