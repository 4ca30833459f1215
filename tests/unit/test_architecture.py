"""The import graph, read from the source (function-local imports included), keeps the layers
one-way: no cycles, Ray only in `raydefense.distributed`, every import pointing at its own layer
or a lower one, and the report a renderer that knows nothing of runs, stages or sweeps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "raydefense"

# Lowest first; a module may import its own layer or lower ones only (docs/architecture.md).
LAYERS = [
    [
        "raydefense",
        "raydefense.errors",
        "raydefense.seeding",
        "raydefense.registry",
        "raydefense.hashing",
        "raydefense.families",
        "raydefense.config",
        "raydefense.config_reference",
        "raydefense.storage",
        "raydefense.roster",
        "raydefense.layout",
        "raydefense.tracking",
        "raydefense.presets",
        "raydefense.console",
        "raydefense.placement",
    ],
    ["raydefense.data", "raydefense.diffusion"],
    ["raydefense.defense", "raydefense.attacks", "raydefense.quality"],
    ["raydefense.audit"],
    ["raydefense.report"],
    ["raydefense.run"],
    ["raydefense.pipeline", "raydefense.sweeps"],
    ["raydefense.distributed"],
    ["raydefense.commands", "raydefense.cli", "raydefense.testing"],
]


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every module this one imports, anywhere in its body (`from x import y` also counts y
    when y is a module)."""
    found: set[str] = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def internal_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges = set()
        for target in imports(name, path):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if rank is None:
        raise AssertionError(
            f"{module} is in no layer; add it to LAYERS (and docs/architecture.md)"
        )
    return rank


def test_there_are_no_import_cycles() -> None:
    graph = internal_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_every_import_points_down_or_sideways() -> None:
    upward = [
        (m, t)
        for m, targets in internal_graph().items()
        for t in targets
        if layer_of(t) > layer_of(m)
    ]
    assert upward == [], "imports into a higher layer: " + ", ".join(
        f"{m} -> {t}" for m, t in upward
    )


def test_only_distributed_imports_ray() -> None:
    mods = modules()
    offenders = sorted(
        name
        for name, path in mods.items()
        if not name.startswith("raydefense.distributed")
        and any(i == "ray" or i.startswith("ray.") for i in imports(name, path))
    )
    assert offenders == []


@pytest.mark.parametrize(
    "forbidden",
    [
        "raydefense.run",
        "raydefense.pipeline",
        "raydefense.sweeps",
        "raydefense.distributed",
        "raydefense.cli",
    ],
)
def test_the_report_only_renders(forbidden: str) -> None:
    graph = internal_graph()
    bad = sorted(
        m
        for m, targets in graph.items()
        if m.startswith("raydefense.report")
        for t in targets
        if t == forbidden or t.startswith(forbidden + ".")
    )
    assert bad == [], f"{bad} import {forbidden}"


def test_the_gate_sees_function_local_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from raydefense.pipeline import run_pipeline\n")
    assert "raydefense.pipeline" in imports("raydefense.report.m", src)


def test_every_module_basename_names_one_role() -> None:
    """Two modules of one basename (sweeps/training.py beside diffusion/training.py) make every
    traceback, import and search ambiguous; package __init__ files aside, each basename is
    one module."""
    names: dict[str, list[str]] = {}
    for name, path in modules().items():
        if path.name != "__init__.py":
            names.setdefault(path.name, []).append(name)
    shared = {base: mods for base, mods in names.items() if len(mods) > 1}
    assert shared == {}, f"basenames used twice: {shared}"


def test_the_ray_adapter_imports_no_domain_above_it() -> None:
    """`distributed/` (its own layer) places work and knows nothing of what it is: it imports
    the run protocols, the leaves and the core types, never the audit, the stages, the sweeps
    or the CLI (what a fit, a scoring block or a trial computes comes to it as a callable)."""
    banned = ("raydefense.audit", "raydefense.pipeline", "raydefense.sweeps", "raydefense.cli")
    bad = [
        (m, t)
        for m, targets in internal_graph().items()
        if m.startswith("raydefense.distributed")
        for t in targets
        if any(t == b or t.startswith(b + ".") for b in banned)
    ]
    assert bad == [], f"the Ray adapter imports domain code: {bad}"
