"""No import circle among the project's modules.

Every module of `wikiembed/`, `flows/`, `tasks/` and `modal_workers/` is parsed (not imported), and every
import of a project module counts: at the top, inside a function (an import put off to break a circle still
ties the two modules together), and under `TYPE_CHECKING` (a type checker follows it). `flows/` and `tasks/`
are installed as `wikiembed.flows` and `wikiembed.tasks` (pyproject.toml), so they are named that way here.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"wikiembed": "wikiembed", "flows": "wikiembed.flows", "tasks": "wikiembed.tasks", "modal_workers": "modal_workers"}


def project_modules() -> dict[str, Path]:
    """Every module of the project by its dotted name (a package by its own, for its `__init__.py`)."""
    found: dict[str, Path] = {}
    for folder, dotted in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = [*dotted.split("."), *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `name` imports anywhere in its file: `from a.b import c` is `a.b.c` when that is a
    module, else `a.b`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside a.b: a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as the modules along it (the first again at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_graph_is_read_from_every_kind_of_import() -> None:
    graph = import_graph()
    assert {"wikiembed.flows.cli", "wikiembed.tasks.embed", "modal_workers.store_app", "wikiembed.executors.base"} <= set(graph)
    # A top-level import, one inside a function and one under TYPE_CHECKING all count.
    assert "wikiembed.store" in graph["wikiembed.card"]
    assert "wikiembed.flows.embed_dataset" in graph["wikiembed.flows.commands.run"]  # imported inside `_cmd_run`
    assert "wikiembed.settings" in graph["wikiembed.executors.base"]  # under TYPE_CHECKING only
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_through_others() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])
