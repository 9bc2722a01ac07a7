"""``--set KEY=VALUE ...`` given more than once adds up: a second ``--set`` must not silently drop the
first one's overrides (it did, with argparse's plain ``nargs="*"``, and a tokenizer or network override
vanished without a word)."""
import argparse
import ast
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), ROOT / "scripts" / name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_glide_txt2img_repeated_set_adds_up():
    args = _load_script("glide_txt2img.py").parse_args(
        ["--prompt", "一个红色的圆形在左边", "--set", "a.b=1", "c=2", "--set", "d=3"])
    assert args.set == ["a.b=1", "c=2", "d=3"]
    assert _load_script("glide_txt2img.py").parse_args(["--prompt", "x"]).set == []


def test_ldm_cli_repeated_set_adds_up():
    from mind_diffusion.cli.ldm import add_ldm_args

    p = argparse.ArgumentParser()
    add_ldm_args(p)
    assert p.parse_args(["--set", "x=1", "--set", "y=2", "z=3"]).set == ["x=1", "y=2", "z=3"]
    # the default list is not shared between parses
    assert p.parse_args([]).set == []


def _set_options(path: Path):
    """(line, action) of every ``add_argument("--set", ...)`` call in a Python file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args
                and isinstance(node.args[0], ast.Constant) and node.args[0].value == "--set"):
            kw = {k.arg: k.value for k in node.keywords}
            action = kw["action"].value if "action" in kw and isinstance(kw["action"], ast.Constant) else None
            out.append((node.lineno, action))
    return out


def test_every_set_option_accumulates():
    files = sorted((ROOT / "scripts").glob("*.py")) + sorted((ROOT / "mind_diffusion").rglob("*.py"))
    found = {f: _set_options(f) for f in files}
    found = {f: v for f, v in found.items() if v}
    assert len(found) >= 5, "expected the GLIDE, LDM and SRGAN command lines to take --set"
    bad = [f"{f.relative_to(ROOT)}:{line}" for f, v in found.items() for line, action in v if action != "extend"]
    assert not bad, f"--set without action='extend' (a second --set would drop the first): {bad}"
