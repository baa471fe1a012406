"""The trading core imports nothing operational; `agent` will import only `trading`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"ray", "sqlalchemy", "asyncpg", "fastapi", "starlette", "redis", "stripe",
             "alembic", "tenancy", "actors", "serve", "models", "billing", "agent", "httpx",
             "psycopg", "torch"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_trading_imports_only_stdlib_and_numeric_libraries() -> None:
    files = list((ROOT / "trading").rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ROOT)): _imports(f) & FORBIDDEN for f in files}
    assert {f: bad for f, bad in offenders.items() if bad} == {}


def test_nothing_imports_serve() -> None:
    for package in ("trading", "tenancy", "actors", "models", "billing", "agent"):
        for f in (ROOT / package).rglob("*.py"):
            assert "serve" not in _imports(f), f"{f} imports serve"


def test_tenancy_does_not_import_upwards() -> None:
    for f in (ROOT / "tenancy").rglob("*.py"):
        bad = _imports(f) & {"actors", "serve", "models", "billing", "agent"}
        assert not bad, f"{f} imports {bad}"
