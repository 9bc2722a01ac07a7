# Sourced by the run_train_*.sh launchers: the repository root and the Python that runs the
# launcher and the workers ($PYTHON when set, else the repository's .venv, else python3 on PATH).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${PYTHON:-}" ]; then
  PYTHON=$(command -v python3 || command -v python)
  if [ -x "$ROOT/.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then PYTHON="$ROOT/.venv/bin/python"; fi
fi
"$PYTHON" -c "import importlib.util as u, sys; sys.exit(u.find_spec('mindspore') is None)" 2>/dev/null || { echo "error: $PYTHON cannot import mindspore: set PYTHON=/path/to/venv/bin/python (pip install -r requirements.txt)" >&2; exit 2; }
export PYTHON
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's mind_diffusion, in the launcher and its workers
