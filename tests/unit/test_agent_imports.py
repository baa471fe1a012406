"""The agent runs on the customer's machine: it imports the standard library, `trading`,
itself, `websockets` and `yaml`, and nothing else (no Ray, no PostgreSQL, no web framework)."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.unit.test_purity import _imports

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = set(sys.stdlib_module_names) | {"trading", "agent", "websockets", "yaml"}


def test_the_agent_imports_only_the_stdlib_trading_websockets_and_yaml() -> None:
    files = sorted((ROOT / "agent").rglob("*.py"))
    assert len(files) > 5
    offenders = {str(f.relative_to(ROOT)): sorted(_imports(f) - ALLOWED) for f in files}
    assert {f: bad for f, bad in offenders.items() if bad} == {}


def test_the_check_would_catch_a_forbidden_import(tmp_path: Path) -> None:
    module = tmp_path / "bad.py"
    module.write_text("import os\nfrom ray import serve\nimport sqlalchemy.orm\nfrom . import sibling\n")
    assert _imports(module) - ALLOWED == {"ray", "sqlalchemy"}
