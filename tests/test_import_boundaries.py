"""Guards that keep the layers apart, one row per rule.

Static rules read every import statement of the tree (module level, inside functions, under
``TYPE_CHECKING``), so an import that only runs on some path still counts. Runtime rules import modules fresh
in a subprocess and list the heavy frameworks that got loaded, so a stray top-level import anywhere fails
here, not in a user's ``scaleot --help``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("emulator", "simulations", "strategies", "clients")

# --- the import graph, read statically ----------------------------------------------------------------------


@cache
def project_modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the project's packages (a package by its ``__init__``)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


@cache
def import_graph() -> dict[str, frozenset[str]]:
    """Module -> the project modules it imports anywhere in its file (each target is the longest project
    module its dotted name starts with: ``from emulator.lm import models`` imports ``emulator.lm.models``)."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolved against the importing module's package
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets |= {base} | {f"{base}.{alias.name}" for alias in node.names}
        resolved = set()
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                resolved.add(target)
        graph[name] = frozenset(resolved)
    return graph


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def emulator_subpackages() -> tuple[str, ...]:
    """``emulator.lm``, ``emulator.scaleot``, ...: every package below the torch-free root of ``emulator``."""
    return tuple(f"emulator.{p.parent.name}" for p in sorted((ROOT / "emulator").glob("*/__init__.py")))


def never_imports(importers: tuple[str, ...], forbidden: tuple[str, ...] | Callable[[], tuple[str, ...]]):
    """Rule: no module in ``importers`` imports a module in ``forbidden``; violations as ``a -> b`` lines."""

    def check() -> list[str]:
        banned = forbidden() if callable(forbidden) else forbidden
        return [
            f"{module} -> {target}"
            for module, targets in sorted(import_graph().items())
            if within(module, importers)
            for target in sorted(targets)
            if within(target, banned) and not within(target, importers)
        ]

    return check


def no_circles() -> list[str]:
    """Rule: the import graph is acyclic; violations are its strongly connected components (Tarjan)."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                circles.append(" <-> ".join(sorted([v, *component])))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


# --- what importing loads, at runtime -----------------------------------------------------------------------

# Import each named module (``pkg.*``: the package and every module below it), then report which of the heavy
# frameworks got loaded.
_PROBE = """
import importlib, json, pkgutil, sys
for name in sys.argv[1:]:
    walk = name.endswith(".*")
    package = importlib.import_module(name.removesuffix(".*"))
    if walk:
        for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
heavy = ("torch", "flwr", "peft", "transformers")
print(json.dumps(sorted(h for h in heavy if h in sys.modules)))
"""


def loaded_frameworks(*modules: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loads_none_of(modules: tuple[str, ...] | Callable[[], tuple[str, ...]], frameworks: tuple[str, ...]):
    """Rule: importing ``modules`` fresh loads none of ``frameworks``; violations are those it loaded."""

    def check() -> list[str]:
        names = modules() if callable(modules) else modules
        return sorted(set(loaded_frameworks(*names)) & set(frameworks))

    return check


def emulator_root() -> tuple[str, ...]:
    """``emulator`` and the modules directly in it (config, files, assets, ...), not its subpackages."""
    return (
        "emulator",
        *(f"emulator.{p.stem}" for p in sorted((ROOT / "emulator").glob("*.py")) if p.stem != "__init__"),
    )


def data_registry() -> tuple[str, ...]:
    """``emulator.data`` and its task modules: all but ``encoding`` and ``corpus``, which build tensors."""
    stems = sorted(p.stem for p in (ROOT / "emulator" / "data").glob("*.py"))
    return (
        "emulator.data",
        *(f"emulator.data.{s}" for s in stems if s not in {"__init__", "encoding", "corpus"}),
    )


RULES = [
    # The package map: data and model loading < the algorithm < the data owner's side; scoring beside them.
    pytest.param(
        never_imports(("emulator.data", "emulator.lm"), ("emulator.scaleot", "emulator.tuning")),
        id="data-and-model-loading-never-import-the-algorithm-or-the-data-owners-side",
    ),
    pytest.param(
        never_imports(("emulator.scaleot",), ("emulator.tuning",)),
        id="the-algorithm-never-imports-the-data-owners-side",
    ),
    pytest.param(
        never_imports(("emulator.evaluation",), ("emulator.scaleot", "emulator.tuning")),
        id="evaluation-never-imports-the-algorithm-or-the-data-owners-side",
    ),
    pytest.param(
        never_imports(("emulator",), ("simulations", "strategies", "clients")),
        id="emulator-never-imports-the-flower-side",
    ),
    pytest.param(
        never_imports(("strategies",), emulator_subpackages),
        id="strategies-import-only-the-torch-free-root-of-emulator",
    ),
    pytest.param(never_imports(("clients",), ("simulations",)), id="clients-never-import-simulations"),
    pytest.param(no_circles, id="the-import-graph-has-no-circle"),
    # What importing loads: the light layers stay light at runtime too.
    pytest.param(loads_none_of(emulator_root, ("torch",)), id="the-root-of-emulator-loads-no-torch"),
    pytest.param(loads_none_of(data_registry, ("torch",)), id="the-task-registry-loads-no-torch"),
    pytest.param(loads_none_of(("emulator.*",), ("flwr",)), id="emulator-loads-no-flower"),
    pytest.param(loads_none_of(("strategies.*",), ("torch",)), id="strategies-load-no-torch"),
    pytest.param(
        loads_none_of(
            ("emulator.config", "emulator.config_parse", "simulations.run_config"), ("torch", "flwr", "peft")
        ),
        id="the-config-layer-loads-no-framework",
    ),
    # `scaleot --help` and the wire keys stay light: flwr only where a record is built or a run starts.
    pytest.param(
        loads_none_of(("simulations.cli",), ("torch", "flwr")), id="the-command-line-loads-no-torch-or-flower"
    ),
    pytest.param(
        loads_none_of(("strategies.wire", "strategies.records"), ("flwr",)),
        id="the-wire-contract-loads-no-flower",
    ),
]


@pytest.mark.parametrize("rule", RULES)
def test_a_layering_rule_holds(rule):
    assert rule() == []


def test_the_static_graph_sees_imports_inside_functions_and_packages():
    graph = import_graph()
    # a function-level import (the run config loads the model table only when a config is built)
    assert "emulator.lm.models" in graph["simulations.run_config"]
    # a package's re-exports are its imports
    assert "emulator.scaleot.assembly" in graph["emulator.scaleot"]
