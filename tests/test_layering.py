"""The layering rule of the architecture (README "Architecture", ../shared/DESIGN.md section 6):
the viewer side (the app, viz, report, the zoo catalogue, the exit policy, the table) never imports a
training module, not even lazily inside a function, directly or through what it imports.

Read from the source with ``ast`` (every ``import`` statement anywhere in a file, at any depth), so a
lazy import the tests never execute is caught too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"dynexit": "dynexit", "app": "app", "dynexit_app": "app"}  # import name -> folder (pyproject package-dir)

VIEWER = ["app", "dynexit.viz", "dynexit.report", "dynexit.zoo", "dynexit.zoo.catalog", "dynexit.policy",
          "dynexit.table"]
# building: trains models or builds tables; the viewer side opens what it made
TRAINING = ("dynexit.training", "dynexit.zoo.reproduce", "dynexit.tables", "dynexit.cli", "dynexit.bench",
            "dynexit.bench_timing", "dynexit.tables_stream",
            "dynexit.testing")
# an import the static reading cannot follow: refused on the viewer side
DYNAMIC_NAMES = {"import_module", "__import__", "exec", "eval", "run_module", "run_path"}   # f(...)
DYNAMIC_ATTRS = {"import_module", "run_module", "run_path"}                                # x.f(...)


def module_file(name: str) -> Path | None:
    """The source file of a dynexit/app module (``None`` when it is not one of ours)."""
    top, *rest = name.split(".")
    if top not in PACKAGES:
        return None
    base = ROOT.joinpath(PACKAGES[top], *rest)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imports_of(name: str) -> set[str]:
    """Every module a module's source names in an import statement, with its parent packages."""
    path = module_file(name)
    return imports_in(path, name if path.name == "__init__.py" else name.rpartition(".")[0])


def imports_in(path: Path, package: str) -> set[str]:
    """The dynexit / app modules named by any import statement in the file ``path`` (of ``package``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            found.add(module)
            # `from pkg import sub` may import a submodule
            found.update(f"{module}.{alias.name}" for alias in node.names)
    out = set()
    for mod in found:
        parts = mod.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return {m for m in out if module_file(m) is not None}


def closure(start: str) -> dict[str, str]:
    """Every module reachable from ``start`` through imports: ``{module: the module that imports it}``."""
    seen, todo = {start: ""}, [start]
    while todo:
        mod = todo.pop()
        for dep in imports_of(mod):
            if dep not in seen:
                seen[dep] = mod
                todo.append(dep)
    return seen


def viewer_modules() -> list[str]:
    out = []
    for name in VIEWER:
        path = module_file(name)
        if path is None:
            continue
        if path.name == "__init__.py" and name == "app":  # the whole app package, every view
            out += [".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                    for p in sorted(path.parent.rglob("*.py"))]
        else:
            out.append(name)
    return out


def chain(seen: dict[str, str], mod: str) -> str:
    steps = [mod]
    while seen[steps[-1]]:
        steps.append(seen[steps[-1]])
    return " <- ".join(steps)


@pytest.mark.parametrize("viewer", viewer_modules())
def test_the_viewer_side_never_imports_training(viewer):
    seen = closure(viewer)
    bad = sorted(m for m in seen if m.startswith(TRAINING) and m != viewer)
    assert not bad, f"{viewer} reaches training code: " + "; ".join(chain(seen, m) for m in bad)


def test_the_rule_is_checked_on_real_modules(tmp_path):
    # the test above must not pass because it found nothing: the viewer modules exist and import things
    mods = viewer_modules()
    assert {"dynexit.viz", "dynexit.policy", "dynexit.table", "dynexit.report"} <= set(mods)
    assert any(m.startswith("app.") for m in mods)
    assert "dynexit.table" in closure("dynexit.policy")
    # a lazy import inside a function, and a relative one, are found
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from dynexit.training import loop\n    from . import bench\n")
    assert {"dynexit.training", "dynexit.training.loop", "dynexit.bench"} <= imports_in(lazy, "dynexit")


@pytest.mark.parametrize("viewer", viewer_modules())
def test_the_viewer_side_imports_nothing_by_name_at_run_time(viewer):
    # importlib.import_module("dynexit.training..."), __import__, exec or runpy would pass the static check
    path = module_file(viewer)
    calls = [node.func for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.Call)]
    bad = {f.id for f in calls if isinstance(f, ast.Name) and f.id in DYNAMIC_NAMES}
    bad |= {f.attr for f in calls if isinstance(f, ast.Attribute) and f.attr in DYNAMIC_ATTRS}
    assert not bad, f"{path}: {sorted(bad)}"


def test_importing_the_viewer_side_loads_no_training_module_and_no_torch():
    # the same rule, checked at run time in a fresh interpreter: what importing really loads
    names = [m.replace("app.", "dynexit_app.", 1) if m.startswith("app.") else m for m in viewer_modules()
             if not m.startswith("app.views") and m != "app.streamlit_app"]  # pages run Streamlit on import
    code = ("import sys, importlib\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            f"bad = sorted(m for m in sys.modules if m.startswith({TRAINING!r}))\n"
            "print(bad, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] False", out.stdout


# The README's architecture table, top to bottom: a module imports its own row and the rows below it.
LAYERS = [
    ("building", ("dynexit.training", "dynexit.zoo.reproduce", "dynexit.tables", "dynexit.tables_stream",
                  "dynexit.bench", "dynexit.bench_timing", "dynexit.cli",
                  "dynexit.__main__", "dynexit.testing")),
    ("viewer", ("app", "dynexit_app", "dynexit.viz", "dynexit.report")),
    ("catalogue", ("dynexit.zoo",)),
    ("core", ("dynexit.table", "dynexit.table_npz", "dynexit.table_checks", "dynexit.arrays", "dynexit.criteria",
              "dynexit.policy", "dynexit.result", "dynexit.solvers", "dynexit.cache", "dynexit.metrics", "dynexit.anytime",
              "dynexit.profile", "dynexit.inference", "dynexit.explain")),
    ("files", ("dynexit.io",)),
    ("models", ("dynexit.models", "dynexit.layers", "dynexit.flops")),
    ("data", ("dynexit.data",)),
]
# documented in the README: the policy reads the catalogue's entries to check a rule's zoo model name
ALLOWED_UP = {("dynexit.policy", "dynexit.zoo")}


def layer_of(module: str) -> int | None:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    return None if best is None else best[0]


def all_modules() -> list[str]:
    out = []
    for folder in ("dynexit", "app"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            out.append(".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"))
    return out


def test_every_module_has_a_layer():
    assert [m for m in all_modules() if m != "dynexit" and layer_of(m) is None] == []


def test_imports_point_down_the_layers():
    upward = []
    for mod in all_modules():
        here = layer_of(mod)
        if here is None:
            continue
        for dep in imports_of(mod):
            there = layer_of(dep)
            if dep != "dynexit" and there is not None and there < here and not any(
                    mod.startswith(a) and dep.startswith(b) for a, b in ALLOWED_UP):
                upward.append(f"{mod} ({LAYERS[here][0]}) -> {dep} ({LAYERS[there][0]})")
    assert upward == []
