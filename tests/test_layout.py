"""The code a contributor opens first reads as well as the docs: modules of a size one can read, and imports
that follow the packages' structure (the layers themselves are import-linter's contracts in setup.cfg)."""

from __future__ import annotations

import ast

from helpers import REPO

APP = REPO / "app"


def imports(path) -> set[str]:
    """The modules `path` imports, `from X import y` as X."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_blueprints_and_hooks_of_app_web_do_not_import_their_own_package():
    importers = [
        path.name
        for path in sorted((APP / "web").glob("*.py"))
        if path.name != "__init__.py" and "app.web" in imports(path)
    ]
    assert importers == []


def test_the_postgresql_backend_is_split_into_modules_of_a_readable_size_and_shares_no_code_with_sqlite():
    modules = sorted((APP / "memory" / "postgres").glob("*.py"))
    assert {path.name for path in modules} == {"__init__.py", "schema.py", "pool.py", "memory.py", "store.py"}
    sizes = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in modules}
    assert max(sizes.values()) <= 450, sizes
    for path in modules:
        assert not any(name.startswith("app.memory.sqlite") for name in imports(path)), path.name
    assert "app.memory.query" in imports(APP / "memory" / "sqlite.py")


def test_the_cli_entry_point_only_hands_over_to_app_cli():
    assert imports(REPO / "cli.py") == {"__future__", "sys", "app.cli"}
    assert len((REPO / "cli.py").read_text(encoding="utf-8").splitlines()) < 20
