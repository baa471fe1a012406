"""Isolation is enforced by PostgreSQL: roles, schemas and row-level security."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, ProgrammingError

from tenancy import audit
from tenancy.db import Database
from tenancy.identifiers import tenant_schema
from tests.conftest import TenantFactory


def _denied(exc: BaseException) -> bool:
    return "permission denied" in str(exc)


async def test_schema_qualified_read_of_another_tenant_is_denied(db: Database,
                                                                 make_tenant: TenantFactory) -> None:
    a, b = await make_tenant(), await make_tenant()
    async with db.tenant(a.tenant.id, a.tenant.slug) as uow:
        # Own table, unqualified: resolves to A's schema through search_path.
        await uow.conn.execute(text("SELECT count(*) FROM secrets"))
    async with db.tenant(a.tenant.id, a.tenant.slug) as uow:
        with pytest.raises(ProgrammingError) as info:
            await uow.conn.execute(text(f"SELECT * FROM {tenant_schema(b.tenant.slug)}.secrets"))
        assert _denied(info.value)


async def test_tenant_role_cannot_touch_platform_tables_or_do_ddl(db: Database,
                                                                  make_tenant: TenantFactory) -> None:
    a = await make_tenant()
    statements = [
        "SELECT * FROM platform.api_keys",
        "SELECT * FROM platform.tenants",
        "SELECT * FROM platform.tenant_keys",
        "INSERT INTO platform.audit_log (tenant_id, seq, actor, action, detail, at, prev_hash,"
        " hash) VALUES (gen_random_uuid(), 1, 'x', 'x', '{}', now(), 'x', 'x')",
        "CREATE TABLE sneaky (id int)",
        f"DROP TABLE {tenant_schema(a.tenant.slug)}.secrets",
        f"SELECT * FROM {tenant_schema(a.tenant.slug)}.alembic_version",
    ]
    for sql in statements:
        async with db.tenant(a.tenant.id, a.tenant.slug) as uow:
            with pytest.raises(DBAPIError) as info:
                await uow.conn.execute(text(sql))
            assert _denied(info.value) or "must be owner" in str(info.value), sql


async def test_row_level_security_hides_other_tenants_audit_rows(db: Database,
                                                                 make_tenant: TenantFactory) -> None:
    a, b = await make_tenant(), await make_tenant()
    async with db.platform() as uow:
        await audit.record(uow.conn, b.tenant.id, actor="test", action="b.only")
        await uow.commit()
    async with db.tenant(a.tenant.id, a.tenant.slug) as uow:
        rows = (await uow.conn.execute(text(
            "SELECT DISTINCT tenant_id FROM platform.audit_log"))).scalars().all()
        assert rows == [a.tenant.id]
        hidden = (await uow.conn.execute(text(
            "SELECT count(*) FROM platform.audit_log WHERE tenant_id = :b"),
            {"b": b.tenant.id})).scalar_one()
        assert hidden == 0
    # The platform role (the owner) sees both: RLS binds tenant roles only.
    async with db.platform() as uow:
        seen = (await uow.conn.execute(text(
            "SELECT count(DISTINCT tenant_id) FROM platform.audit_log WHERE tenant_id IN (:a, :b)"),
            {"a": a.tenant.id, "b": b.tenant.id})).scalar_one()
        assert seen == 2


async def test_tenant_setting_is_local_to_the_transaction(db: Database,
                                                          make_tenant: TenantFactory) -> None:
    a = await make_tenant()
    async with db.tenant(a.tenant.id, a.tenant.slug) as uow:
        role = (await uow.conn.execute(text("SELECT current_user"))).scalar_one()
        assert role == tenant_schema(a.tenant.slug)
    # Pooled connections come back clean: no role, path or tenant left behind.
    for _ in range(5):
        async with db.platform() as uow:
            row = (await uow.conn.execute(text(
                "SELECT current_user, current_setting('search_path'),"
                " coalesce(current_setting('atp.tenant_id', true), '')"))).one()
            assert row[0] != tenant_schema(a.tenant.slug)
            assert tenant_schema(a.tenant.slug) not in row[1]
            assert row[2] == ""


async def test_tenant_data_is_separate(db: Database, make_tenant: TenantFactory) -> None:
    a, b = await make_tenant(), await make_tenant()
    async with db.tenant(a.tenant.id, a.tenant.slug) as uow:
        await uow.conn.execute(text(
            "INSERT INTO secrets (name, ciphertext, key_version) VALUES ('only-a', 'x', 1)"))
        await uow.commit()
    async with db.tenant(b.tenant.id, b.tenant.slug) as uow:
        names = (await uow.conn.execute(text("SELECT name FROM secrets"))).scalars().all()
        assert "only-a" not in names


async def test_the_driver_transaction_is_confined_like_the_tenant_unit_of_work(
        db: Database, make_tenant: TenantFactory) -> None:
    """`Database.tenant_driver` (the trading hot path) sets the same role, path and tenant id."""
    a, b = await make_tenant(), await make_tenant()
    async with db.platform() as uow:
        await audit.record(uow.conn, b.tenant.id, actor="test", action="b.only")
        await uow.commit()
    async with db.tenant_driver(a.tenant.id, a.tenant.slug) as work:
        who, path, tid = await work.conn.fetchrow(
            "SELECT current_user, current_setting('search_path'),"
            " current_setting('atp.tenant_id')")
        assert (who, path, tid) == (tenant_schema(a.tenant.slug),
                                    f'"{tenant_schema(a.tenant.slug)}"', str(a.tenant.id))
        await work.conn.fetchval("SELECT count(*) FROM secrets")  # own table, unqualified
        tenants = await work.conn.fetch("SELECT DISTINCT tenant_id FROM platform.audit_log")
        assert [r[0] for r in tenants] == [a.tenant.id]  # row-level security applies
    for sql in (f"SELECT * FROM {tenant_schema(b.tenant.slug)}.secrets",
                "SELECT * FROM platform.tenants", "CREATE TABLE sneaky (id int)"):
        with pytest.raises(asyncpg.PostgresError) as info:
            async with db.tenant_driver(a.tenant.id, a.tenant.slug) as work:
                await work.conn.fetch(sql)
        assert _denied(info.value), sql


async def test_a_driver_transaction_left_uncommitted_or_failed_writes_nothing(
        db: Database, make_tenant: TenantFactory) -> None:
    a = await make_tenant()
    slug = a.tenant.slug
    insert = ("INSERT INTO accounts (account, cash) VALUES ($1, 1)")
    async with db.tenant_driver(a.tenant.id, slug) as work:
        await work.conn.execute(insert, "manual")  # never committed
    with pytest.raises(asyncpg.UniqueViolationError):
        async with db.tenant_driver(a.tenant.id, slug) as work:
            await work.conn.execute(insert, "agent:x")
            await work.conn.execute(insert, "agent:x")
    async with db.tenant_driver(a.tenant.id, slug) as work:  # the connections are fine again
        assert await work.conn.fetchval("SELECT count(*) FROM accounts") == 0
        await work.conn.execute(insert, "agent:y")
        await work.commit()
    async with db.tenant(a.tenant.id, slug) as uow:
        rows = (await uow.conn.execute(text("SELECT account FROM accounts"))).scalars().all()
    assert rows == ["agent:y"]
    async with db.platform() as uow:  # a platform unit of work on the pool is itself again
        assert (await uow.conn.execute(text("SELECT current_user"))).scalar_one() != \
            tenant_schema(slug)
