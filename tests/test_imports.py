"""Tests of the import rules in DESIGN.md, read from the source with ast.

- The numpy core (config, data, model, optim, schedules, train, lr_find, diagnose)
  imports no mlflow, optuna or matplotlib at module level.
- Dependencies point one way: a module never imports one to its right in
  config → data → model → optim + schedules → train → lr_find → diagnose →
  tracking → sweep → report → cli/batch (lazy imports inside functions count too;
  imports under ``if TYPE_CHECKING:`` do not, as they never run).
- ``import bpexp.cli`` (what ``bpexp --help`` runs) imports neither mlflow nor optuna.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "bpexp"

# DESIGN.md's order; modules on one rank (optim + schedules, cli/batch) may import each other.
ORDER = [
    ["config"],
    ["data"],
    ["model"],
    ["optim", "schedules"],
    ["train"],
    ["lr_find", "clr"],
    ["diagnose", "labelled_suite"],
    ["tracking", "tracking_process", "tracking_sql", "tracking_direct"],
    ["sweep"],
    ["report"],
    ["cli", "batch"],
]
RANK = {name: rank for rank, names in enumerate(ORDER) for name in names}
RANK["errors"] = -1  # the shared exceptions sit under everything
CORE = ["config", "data", "model", "optim", "schedules", "train", "lr_find", "diagnose"]
HEAVY = {"mlflow", "optuna", "matplotlib"}


def source_files(top: str) -> list[Path]:
    """The files of bpexp.<top>: a module, or every file of a package."""
    module = PACKAGE / f"{top}.py"
    if module.exists():
        return [module]
    package = PACKAGE / top
    return sorted(package.rglob("*.py")) if package.is_dir() else []


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, root: Path = PACKAGE) -> list[tuple[str, int, bool]]:
    """(absolute module, line, at module level) for every import that can run."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit_stmt(stmt, top_level)
                continue
            visit_stmt(child, top_level)

    def visit_stmt(child: ast.AST, top_level: bool) -> None:
        if isinstance(child, ast.Import):
            found.extend((alias.name, child.lineno, top_level) for alias in child.names)
        elif isinstance(child, ast.ImportFrom):
            if child.level:
                base = package.split(".")
                base = base[: len(base) - (child.level - 1)]
                root = ".".join(base + ([child.module] if child.module else []))
            else:
                root = child.module or ""
            found.append((root, child.lineno, top_level))
            # `from bpexp import data` imports the module bpexp.data
            for alias in child.names:
                found.append((f"{root}.{alias.name}", child.lineno, top_level))
        else:
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, top_level and not nested)

    visit(tree, True)
    return found


def rank_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "bpexp" or len(parts) < 2:
        return None
    return RANK.get(parts[1])


def all_ranked_files() -> list[tuple[str, Path]]:
    return [(top, path) for top in RANK for path in source_files(top)]


def test_every_module_has_a_rank():
    # a new module must take its place in the order, or the checks above would skip it
    tops = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    unranked = sorted(tops - set(RANK) - {"__init__", "datasets"})
    assert not unranked, f"add these to ORDER: {unranked}"


def test_the_core_exists():
    for top in ("config", "data", "model", "optim", "schedules", "train"):
        assert source_files(top), top


@pytest.mark.parametrize("top", CORE)
def test_core_imports_nothing_heavy_at_module_level(top):
    files = source_files(top)
    if not files:
        pytest.skip(f"bpexp.{top} does not exist yet")
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for path in files
        for name, line, top_level in imports(path)
        if top_level and name.split(".")[0] in HEAVY
    ]
    assert not bad, "\n".join(bad)


def test_core_never_imports_mlflow_or_optuna_anywhere():
    bad = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}"
        for top in CORE
        for path in source_files(top)
        for name, line, _ in imports(path)
        if name.split(".")[0] in {"mlflow", "optuna"}
    ]
    assert not bad, "\n".join(bad)


def test_dependencies_point_one_way():
    bad = []
    for top, path in all_ranked_files():
        own = RANK[top]
        for name, line, _ in imports(path):
            other = rank_of(name)
            if other is not None and other > own:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name} (to its right)")
    assert not bad, "\n".join(bad)


def test_package_init_imports_only_the_bottom_layer():
    bad = [
        f"bpexp/__init__.py:{line} imports {name}"
        for name, line, top_level in imports(PACKAGE / "__init__.py")
        if top_level and ((rank_of(name) or 0) > 0 or name.split(".")[0] in HEAVY)
    ]
    assert not bad, "\n".join(bad)


def test_the_parser_sees_what_it_must(tmp_path):
    # the checks above are only as good as imports(): show it finds lazy, relative and from-imports
    assert "numpy" in {name for name, _, _ in imports(PACKAGE / "model.py")}
    probe = tmp_path / "bpexp" / "sub" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "import mlflow.tracking\n"
        "from ..train import History\n"
        "from bpexp import tracking\n"
        "if TYPE_CHECKING:\n    import optuna\n"
        "def f():\n    import matplotlib.pyplot\n"
    )
    found = {(name, top) for name, _, top in imports(probe, root=tmp_path / "bpexp")}
    assert ("mlflow.tracking", True) in found
    assert ("bpexp.train", True) in found and ("bpexp.train.History", True) in found
    assert ("bpexp.tracking", True) in found
    assert ("matplotlib.pyplot", False) in found
    assert not any(name == "optuna" for name, _ in found)


def loaded_after(statement: str) -> list[str]:
    code = (
        "import json, sys\n"
        f"{statement}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(HEAVY)!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_cli_loads_neither_mlflow_nor_optuna():
    loaded = loaded_after("import bpexp.cli")
    assert not [m for m in loaded if m.split(".")[0] in {"mlflow", "optuna"}], loaded


def test_importing_the_core_loads_nothing_heavy():
    modules = [f"bpexp.{top}" for top in CORE if source_files(top)]
    loaded = loaded_after("import " + ", ".join(modules))
    assert loaded == [], loaded
