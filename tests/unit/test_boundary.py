"""The planes' boundary: the data plane never reaches the store, and no import cycle.

Workers hold no database credentials and must run on hosts without SQLAlchemy
installed: every module a worker can import (``workers/`` and the shared
modules) must neither import the store at all (statically, lazy imports
included) nor pull it in at run time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# what the data plane may import of farm: the shared modules and the artifacts
SHARED = [
    "farm/protocol.py",
    "farm/params.py",
    "farm/settings.py",
    "farm/sanitize.py",
    "farm/transport.py",
    "farm/celeryconfig.py",
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "farm/artifacts").glob("*.py")),
    *sorted(str(p.relative_to(REPO)) for p in (REPO / "farm/triage").glob("*.py")),
]
WORKER_FILES = sorted(str(p.relative_to(REPO)) for p in (REPO / "workers").glob("*.py"))
FORBIDDEN = ("farm.store", "farm.control", "farm.web", "farm.cli", "sqlalchemy", "alembic")


def imported_names(path: Path) -> set[str]:
    """Every module an import statement in the file names, wherever the statement is."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def forbidden(names: set[str]) -> list[str]:
    return sorted(n for n in names if n.startswith(FORBIDDEN))


@pytest.mark.parametrize("path", WORKER_FILES + SHARED)
def test_data_plane_source_never_names_the_store(path: str) -> None:
    assert forbidden(imported_names(REPO / path)) == [], f"{path} imports the control plane"


def test_the_static_check_sees_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text(
        "def f():\n    from farm.store.db import make_engine\n    import sqlalchemy\n"
    )
    assert forbidden(imported_names(sample)) == [
        "farm.store.db",
        "farm.store.db.make_engine",
        "sqlalchemy",
    ]


def test_importing_every_worker_module_loads_no_store() -> None:
    modules = [p[:-3].replace("/", ".") for p in WORKER_FILES + SHARED]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = json.loads(out.stdout)
    assert forbidden(set(loaded)) == []
    assert "workers.tasks" in loaded  # the check did import the data plane


def test_control_plane_sends_tasks_without_importing_workers() -> None:
    code = (
        "import json, sys\n"
        "import farm.control.scheduler, farm.control.campaigns, farm.store.recorder\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('workers'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == []


def _module_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    files = [*(REPO / "farm").rglob("*.py"), *(REPO / "workers").glob("*.py")]
    modules = {
        str(p.relative_to(REPO).with_suffix("")).replace("/", ".").removesuffix(".__init__")
        for p in files
    }
    for path in files:
        name = str(path.relative_to(REPO).with_suffix("")).replace("/", ".")
        name = name.removesuffix(".__init__")
        tree = ast.parse(path.read_text())
        deps: set[str] = set()
        # lazy imports inside functions count too: a cycle through them is still a cycle
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_between_modules() -> None:
    assert find_cycle(_module_graph()) is None


def test_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
