"""The package layering ARCHITECTURE.md describes, checked on the source: imports run one way, Prefect stays in
flows/, the trainer needs only pipeline's foundations, and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# pipeline's layers, bottom to top; a module may import its own layer and those below it.
LAYERS = [
    {"pipeline.errors", "pipeline.config", "pipeline.schema", "pipeline.torch_compat"},
    {"pipeline.io"},
    {"pipeline.media"},
    {"pipeline.sources"},
    {"pipeline.stereo"},
    {"pipeline.video", "pipeline.synthetic"},
    {"pipeline.clip"},
    {"pipeline.corpus"},
    {"pipeline.driver", "pipeline.doctor"},
]
# "pipeline" itself: its __init__ holds only package_version (the trainer's --version).
TRAINER_MAY_IMPORT = {
    "pipeline",
    "pipeline.io",
    "pipeline.media",
    "pipeline.schema",
    "pipeline.config",
    "pipeline.torch_compat",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth of the file (lazy imports count: they are dependencies too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


SOURCES = {_module_name(p): _imports(p) for pkg in ("pipeline", "trainer", "flows") for p in (REPO / pkg).rglob("*.py")}


def _unit(module: str) -> str:
    """The layer unit a pipeline module belongs to: its subpackage, or itself for a top-level module."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _layer(module: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if _unit(module) in layer), None)


def test_every_pipeline_module_has_a_layer():
    assert [m for m in SOURCES if m.startswith("pipeline.") and _layer(m) is None] == []


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if m.startswith("pipeline.")))
def test_pipeline_imports_only_its_own_layer_and_below(module):
    upward = [
        name
        for name in SOURCES[module]
        if name.split(".")[0] in ("flows", "trainer", "prefect")
        or (name.startswith("pipeline.") and name in SOURCES and (_layer(name) or 0) > (_layer(module) or 0))
    ]
    assert upward == []


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if m.startswith("trainer")))
def test_trainer_imports_only_pipeline_foundations(module):
    outside = [
        name
        for name in SOURCES[module]
        if name.split(".")[0] in ("flows", "prefect")
        or (name.startswith("pipeline") and name in SOURCES and _unit(name) not in TRAINER_MAY_IMPORT)
    ]
    assert outside == []


def test_no_import_cycles():
    graph = {m: {n for n in deps if n in SOURCES and n != m} for m, deps in SOURCES.items()}
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        for nxt in graph[module]:
            if nxt in path:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(module)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    # A package importing its own submodule (pipeline.video -> pipeline.video.record) is not a cycle.
    cycles = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert cycles == []
