"""Imports point one way (DESIGN.md §1): transports → services → models/db/pubsub/domain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def offenders(package: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in files(package):
        for name in imported_modules(path):
            if name.startswith(allowed):
                continue
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_domain_imports_nothing_of_the_project():
    assert offenders("app/domain", ("app", "rest_compat"), allowed=("app.domain",)) == []


def test_services_know_no_transport():
    forbidden = ("strawberry", "starlette", "rest_compat", "app.graphql", "app.main", "app.cli")
    assert offenders("app/services", forbidden) == []


def test_rest_compat_and_graphql_do_not_import_each_other():
    assert offenders("rest_compat", ("app.graphql",)) == []
    assert offenders("app/graphql", ("rest_compat",)) == []


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("rest_compat", ("app.models", "app.db", "sqlalchemy", "sqlmodel")),
        # GraphQL types read the rows services return (and name them in type hints), but
        # cannot build a query or open a session: no SQLAlchemy, no app.db.
        ("app/graphql", ("app.db", "sqlalchemy", "sqlmodel")),
    ],
)
def test_transports_do_not_touch_tables_or_sessions(package: str, forbidden: tuple[str, ...]):
    assert offenders(package, forbidden) == []


def test_the_checker_sees_a_violation(tmp_path: Path):
    bad = tmp_path / "bad.py"
    bad.write_text("from starlette.requests import Request\nimport app.models\n")
    assert imported_modules(bad) == {"starlette.requests", "app.models"}
