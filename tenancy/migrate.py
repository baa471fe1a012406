"""Run the two Alembic trees: ``master`` for schema ``platform``, ``tenant`` for every tenant.

Each schema upgrades in its own transaction under an advisory lock, so a failure leaves
that schema as it was, the others keep their progress, and a rerun resumes. Reports say,
per schema, the revision before and after.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy.db import Database
from tenancy.identifiers import quote_ident, tenant_schema
from tenancy.schema import PLATFORM_SCHEMA

Tree = Literal["master", "tenant"]
_TREES = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class SchemaReport:
    """What `migrate` did to one schema."""

    schema: str
    before: str | None
    after: str | None
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        return "up to date" if self.before == self.after else "upgraded"


@functools.cache
def _script(tree: Tree) -> tuple[Config, ScriptDirectory]:
    cfg = Config()
    cfg.set_main_option("script_location", str(_TREES / tree))
    return cfg, ScriptDirectory.from_config(cfg)


def head(tree: Tree) -> str:
    """The head revision of a tree."""
    rev = _script(tree)[1].get_current_head()
    assert rev is not None
    return rev


def current_revision(conn: Connection, schema: str) -> str | None:
    """The revision stamped in `schema`, or None when it has none."""
    ctx = MigrationContext.configure(conn, opts={"version_table_schema": schema})
    return ctx.get_current_revision()


@contextmanager
def _environment(conn: Connection, tree: Tree, schema: str,
                 fn: Callable[[Any, Any], Any], destination: str) -> Iterator[EnvironmentContext]:
    cfg, script = _script(tree)
    with EnvironmentContext(cfg, script, fn=fn, destination_rev=destination) as env:
        env.configure(connection=conn, version_table_schema=schema, transactional_ddl=True)
        yield env


def _run(conn: Connection, tree: Tree, schema: str, target: str, *, down: bool) -> None:
    _, script = _script(tree)

    def step(rev: Any, _ctx: Any) -> Any:
        if down:
            return script._downgrade_revs(target, rev)
        return script._upgrade_revs(target, rev)

    with _environment(conn, tree, schema, step, target) as env, env.begin_transaction():
        env.run_migrations()


def _upgrade_master_sync(conn: Connection) -> tuple[str | None, str | None]:
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('atp.migrate.platform'))"))
    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(PLATFORM_SCHEMA)}"))
    before = current_revision(conn, PLATFORM_SCHEMA)
    _run(conn, "master", PLATFORM_SCHEMA, "heads", down=False)
    return before, current_revision(conn, PLATFORM_SCHEMA)


def _tenant_sync(conn: Connection, slug: str, target: str, *, down: bool = False
                 ) -> tuple[str | None, str | None]:
    schema = tenant_schema(slug)
    ident = quote_ident(schema)
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                 {"k": "atp.migrate." + schema})
    conn.execute(text(f"SET LOCAL search_path TO {ident}"))
    before = current_revision(conn, schema)
    _run(conn, "tenant", schema, target, down=down)
    # Tables belong to the platform role; the tenant role gets data rights, never DDL.
    conn.execute(text(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {ident} TO {ident}"))
    conn.execute(text(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {ident} TO {ident}"))
    conn.execute(text(f"REVOKE ALL ON {ident}.alembic_version FROM {ident}"))
    conn.execute(text("SET LOCAL search_path TO DEFAULT"))
    return before, current_revision(conn, schema)


async def upgrade_tenant_schema(conn: AsyncConnection, slug: str) -> tuple[str | None, str | None]:
    """Upgrade one tenant schema to head inside the caller's transaction."""
    return await conn.run_sync(_tenant_sync, slug, "heads")


async def downgrade_tenant_schema(conn: AsyncConnection, slug: str, target: str = "base"
                                  ) -> tuple[str | None, str | None]:
    """Downgrade one tenant schema inside the caller's transaction (tests, rollbacks)."""
    return await conn.run_sync(functools.partial(_tenant_sync, down=True), slug, target)


async def upgrade_master(db: Database) -> SchemaReport:
    """Upgrade schema ``platform`` to head in its own transaction."""
    try:
        async with db.platform() as uow:
            before, after = await uow.conn.run_sync(_upgrade_master_sync)
            await uow.commit()
    except Exception as exc:
        return SchemaReport(PLATFORM_SCHEMA, None, None, error=_describe(exc))
    return SchemaReport(PLATFORM_SCHEMA, before, after)


async def live_tenant_slugs(db: Database) -> list[str]:
    async with db.platform() as uow:
        rows = await uow.conn.execute(text(
            "SELECT slug FROM platform.tenants WHERE status <> 'deleted' ORDER BY slug"))
        return [r.slug for r in rows]


async def migrate_all(db: Database, on_report: Callable[[SchemaReport], None] | None = None
                      ) -> list[SchemaReport]:
    """Upgrade the master schema, then every live tenant schema, each in its own transaction.

    Returns one report per schema; a failed tenant does not stop the others.
    """
    reports = [await upgrade_master(db)]
    if on_report:
        on_report(reports[0])
    if reports[0].error is not None:
        return reports
    for slug in await live_tenant_slugs(db):
        schema = tenant_schema(slug)
        try:
            async with db.platform() as uow:
                before, after = await upgrade_tenant_schema(uow.conn, slug)
                await uow.commit()
            report = SchemaReport(schema, before, after)
        except Exception as exc:
            report = SchemaReport(schema, None, None, error=_describe(exc))
        reports.append(report)
        if on_report:
            on_report(report)
    return reports


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig or exc).__name__}: {text_[0] if text_ else ''}"
