"""The repository is an installable package (pyproject.toml): its package list is complete, its
dependencies are requirements.txt, every script has a console command, the editable install
points at this checkout, and no code edits ``sys.path`` to find the library."""
import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST = "mind-diffusion"
SCRIPTS_PACKAGE = "mind_diffusion_scripts"

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def script_mains() -> set:
    """Names of the scripts/*.py files that define ``main``."""
    out = set()
    for path in (ROOT / "scripts").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body):
            out.add(path.stem)
    return out


def test_package_list_names_every_package():
    tool = pyproject()["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "mind_diffusion").rglob("__init__.py")}
    assert set(tool["packages"]) == found | {SCRIPTS_PACKAGE}, (
        "pyproject.toml [tool.setuptools] packages must list every folder of mind_diffusion/ with an "
        f"__init__.py: missing {sorted(found - set(tool['packages']))}, "
        f"extra {sorted(set(tool['packages']) - found - {SCRIPTS_PACKAGE})}")
    assert tool["package-dir"] == {SCRIPTS_PACKAGE: "scripts"}


def test_dependencies_are_requirements_txt():
    proj = pyproject()
    assert proj["project"]["dynamic"] == ["dependencies"]
    assert proj["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    pins = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    pins = [p for p in pins if p]
    assert all(re.match(r"^[A-Za-z0-9_.-]+\s*[=<>!~]", p) for p in pins), \
        "requirements.txt must hold plain pins only: pyproject.toml reads it as the package's dependencies"
    from packaging.requirements import Requirement  # pytest's own dependency

    def parsed(reqs):
        return sorted((r.name, str(r.specifier)) for r in map(Requirement, reqs))

    assert parsed(metadata.requires(DIST)) == parsed(pins), \
        "the installed metadata is stale: run bash scripts/setup.sh again"


def test_every_script_has_a_console_command():
    commands = pyproject()["project"]["scripts"]
    targets = {}
    for name, target in commands.items():
        module, _, func = target.partition(":")
        package, _, stem = module.rpartition(".")
        assert package == SCRIPTS_PACKAGE and func == "main", (name, target)
        assert name == "md-" + stem.replace("_", "-"), (name, target)
        targets[stem] = name
    assert set(targets) == script_mains(), (
        f"scripts without a command in pyproject.toml: {sorted(script_mains() - set(targets))}; "
        f"commands without a script: {sorted(set(targets) - script_mains())}")
    installed = {ep.name: ep.value for ep in metadata.distribution(DIST).entry_points
                 if ep.group == "console_scripts"}
    assert installed == commands, "the installed commands are stale: run bash scripts/setup.sh again"


def test_editable_install_is_this_checkout_and_a_command_runs(tmp_path):
    code = ("import mind_diffusion, mind_diffusion_scripts; "
            "print(mind_diffusion.__file__); print(mind_diffusion_scripts.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(ROOT / "mind_diffusion" / "__init__.py"), str(ROOT / "scripts" / "__init__.py")]
    exe = Path(sys.executable).parent / "md-fid"
    if not exe.is_file():
        pytest.skip(f"{exe} not found (the commands sit beside the interpreter in a venv)")
    proc = subprocess.run([str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: md-fid"), proc.stderr[-2000:]


def sys_path_edits(path: Path) -> list:
    """``sys.path.<insert|append|extend|...>(...)`` calls and assignments to ``sys.path``."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = node.func.value
        elif isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            target = next((t.value if isinstance(t, ast.Subscript) else t for t in targets), None)
        else:
            continue
        if (isinstance(target, ast.Attribute) and target.attr == "path"
                and isinstance(target.value, ast.Name) and target.value.id == "sys"):
            hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return hits


def test_no_code_edits_sys_path():
    files = [*(ROOT / "mind_diffusion").rglob("*.py"), *(ROOT / "scripts").glob("*.py"), *(ROOT / "bench").glob("*.py"),
             *(ROOT / "tests").rglob("*.py")]
    hits = [h for f in sorted(files) for h in sys_path_edits(f)]
    shell = [f"{f.relative_to(ROOT)}" for f in [*(ROOT / "scripts").glob("*.sh"), ROOT / "infer.sh"]
             if "sys.path" in f.read_text(encoding="utf-8")]
    assert not hits + shell, f"sys.path edited in {hits + shell}: the package is installed (pip install -e .)"
