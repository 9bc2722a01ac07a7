"""Running the one-command model builders (scripts/train_shapes_model.sh, scripts/train_glide_shapes.sh)
on a tiny budget from a test: DATA and RUNS under the test's folder, PYTHON the test's interpreter."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_builder(script: str, tmp: Path, tiny: dict, *args, timeout: int = 1800, **env_over):
    env = {**os.environ, "PYTHON": sys.executable, "DATA": str(tmp / "data"), "RUNS": str(tmp / "runs"),
           **tiny, **env_over}
    return subprocess.run(["bash", str(ROOT / "scripts" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def first_build(tmp_path_factory, script: str, tiny: dict, configs: str):
    """(folder, the first run's process, {tracked config: its bytes before}) for a module fixture: the
    builder's first run from nothing into <folder>/model; ``configs`` is the glob of the tracked
    configs it must leave alone."""
    tmp = tmp_path_factory.mktemp(Path(script).stem)
    tracked = {p: p.read_bytes() for p in ROOT.glob(configs)}
    return tmp, run_builder(script, tmp, tiny, str(tmp / "model")), tracked
