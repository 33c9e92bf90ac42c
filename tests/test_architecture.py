"""The shape of the house, checked from the source (issue 9): which module may import what.

Every import is read with `ast`, wherever it stands (module level, inside a function, under
TYPE_CHECKING), so a lazy import is held to the same rules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cgpop", "router", "accounts", "xtnd")
SERVER_LINE_LIMIT = 300


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def imported(name: str) -> set[str]:
    """The modules `name` imports: for `from X import Y`, X.Y when that is a module, else X."""
    tree = ast.parse(modules()[name].read_text(), str(modules()[name]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name if modules()[name].name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules() else base)
    return found


def importers_of(prefix: str) -> Iterator[tuple[str, str]]:
    """(importer, imported) for every import of `prefix` or a module under it."""
    for name in modules():
        for target in imported(name):
            if target == prefix or target.startswith(prefix + "."):
                yield name, target


def test_sqlite3_only_inside_the_store() -> None:
    outside = [name for name, _ in importers_of("sqlite3") if not name.startswith("cgpop.store.")]
    assert outside == []


def test_the_store_interface_names_no_backend() -> None:
    """api.py: protocols and records only, nothing of a backend, a driver or the shell."""
    targets = imported("cgpop.store.api")
    backend = {t for t in targets if t.startswith("cgpop.store.")}
    drivers = {t for t in targets if t.split(".")[0] in {"sqlite3", "psycopg", "psycopg_pool"}}
    shell = {t for t in targets if t.split(".")[0] in {"asyncio", "socket", "xtnd"}}
    assert (backend, drivers, shell) == (set(), set(), set())


def test_only_the_store_factory_names_a_backend() -> None:
    outside = [
        name
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if "SqliteStore" in path.read_text()
        and not (name := module_name(path)).startswith("cgpop.store.")
    ]
    assert outside == []


def test_only_the_wiring_and_the_cli_import_xtnd() -> None:
    allowed = {"cgpop.server"}
    wrong = {
        name
        for name, _ in importers_of("xtnd")
        if not name.startswith("xtnd") and name not in allowed and not name.startswith("cgpop.cli")
    }
    assert wrong == set()


def test_only_the_cli_imports_the_server() -> None:
    wrong = {name for name, _ in importers_of("cgpop.server") if not name.startswith("cgpop.cli")}
    assert wrong == set()


def test_router_and_accounts_are_leaves() -> None:
    for package in ("router", "accounts"):
        for name in modules():
            if name.startswith(package):
                assert all(
                    t.split(".")[0] not in {"cgpop", "xtnd", "asyncio", "socket"}
                    for t in imported(name)
                ), name


def test_no_import_cycles() -> None:
    graph = {
        name: {t for t in imported(name) if t in modules() and t != name} for name in modules()
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_module_imports_another_modules_private_names() -> None:
    wrong = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                wrong += [
                    f"{name}: {node.module}.{alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert wrong == []


def test_the_server_only_wires() -> None:
    lines = (ROOT / "cgpop" / "server.py").read_text().count("\n")
    assert lines < SERVER_LINE_LIMIT


@pytest.mark.parametrize("rule", ["sqlite3", "cgpop.server"])
def test_the_checks_see_imports(rule: str) -> None:
    """The rules above would catch a violation: the importers they look for are found."""
    found = {name for name, _ in importers_of(rule)}
    assert found, rule
