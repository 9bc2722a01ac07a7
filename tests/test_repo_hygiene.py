"""Repository rules that are easy to break silently."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_readme_has_two_one_line_commands_and_ci_runs_the_second():
    cmds = _readme_commands()
    assert len(cmds) == 2 and all("\n" not in c for c in cmds), cmds
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert ci[-1].strip() == cmds[1].strip()


def test_library_never_imports_torch():
    offenders = []
    for f in (ROOT / "mind_diffusion").rglob("*.py"):
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if re.match(r"\s*(import torch|from torch)\b", line):
                offenders.append(f"{f.relative_to(ROOT)}:{i}")
    assert not offenders, offenders


def test_requirements_pin_numpy_below_2():
    req = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^numpy[^\n]*<2", req, re.M) and "mindspore==2.10.0" in req
