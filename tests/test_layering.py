"""Imports point down only: each module sits in a layer and may import its own layer or lower ones,
never a higher one, and no two modules import each other (lazy imports inside functions count)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# lowest first; a module takes the layer of its longest matching prefix
LAYERS: list[tuple[str, ...]] = [
    ("schemas",),
    ("pipelines.records", "pipelines.io", "pipelines.versions", "pipelines.registry"),
    ("pipelines.asr.packing", "pipelines.asr.base", "pipelines.metrics", "pipelines.sinks", "pipelines.stages.audio",
     "pipelines.stages.vad", "pipelines.stages.listing"),
    ("pipelines.state",),
    ("pipelines.asr", "pipelines.stages", "pipelines.preflight"),
    ("pipelines.executor",),
    ("pipelines.plan",),
    ("pipelines.job", "pipelines.progress"),
    ("pipelines.loader", "pipelines.report", "pipelines.refilter", "pipelines.export"),
    ("flows",),
]


def layer_of(module: str) -> int:
    best, rank = "", -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, index
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS"
    return rank


def modules() -> dict[str, Path]:
    found = {}
    for package in ("pipelines", "flows", "schemas"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known
            found.update(submodules or {node.module})  # `from pkg import module` names the module
    return {name for name in found if name in known}


def graph() -> dict[str, set[str]]:
    found = modules()
    names = set(found)
    return {name: imports(path, names) - {name} for name, path in found.items()}


def test_every_import_points_down_or_sideways():
    edges = graph()
    upward = [f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})"
              for a, targets in sorted(edges.items()) for b in sorted(targets)
              if layer_of(b) > layer_of(a) and not b.startswith(a + ".")]  # a package may name its own modules
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [node, nxt]) if nxt in path else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(cycles)


def test_the_pure_cost_model_imports_no_ray_and_records_import_nothing_of_ours():
    edges = graph()
    assert "pipelines.executor.ray" not in edges["pipelines.plan.estimator"]
    assert not {m for m in edges["pipelines.records"] if m.startswith("pipelines")}


def third_party(path: Path) -> set[str]:
    """The top-level packages `path` imports, wherever the import statement stands."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_ray_executor_imports_ray():
    importers = sorted(name for name, path in modules().items() if "ray" in third_party(path))
    assert importers == ["pipelines.executor.ray"]


def test_only_sinks_know_the_tar_format():
    importers = sorted(name for name, path in modules().items() if "tarfile" in third_party(path))
    assert all(name.startswith("pipelines.sinks.") for name in importers), importers
