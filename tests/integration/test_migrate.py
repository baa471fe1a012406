"""`migrate` upgrades every schema, reports per schema, reruns safely and resumes."""

from __future__ import annotations

from sqlalchemy import text

from tenancy.db import Database
from tenancy.identifiers import tenant_schema
from tenancy.migrate import downgrade_tenant_schema, head, migrate_all
from tests.conftest import TenantFactory


async def _downgrade(db: Database, slug: str) -> None:
    async with db.platform() as uow:
        await downgrade_tenant_schema(uow.conn, slug, "base")
        await uow.commit()


def _by_schema(reports: list) -> dict:  # type: ignore[type-arg]
    return {r.schema: r for r in reports}


async def test_migrate_three_tenants_rerun_and_resume(db: Database,
                                                      make_tenant: TenantFactory) -> None:
    tenants = [(await make_tenant()).tenant for _ in range(3)]
    schemas = [tenant_schema(t.slug) for t in tenants]
    for t in tenants:
        await _downgrade(db, t.slug)

    # One tenant's upgrade will fail: a table of the same name is in its way.
    async with db.platform() as uow:
        await uow.conn.execute(text(f'CREATE TABLE "{schemas[1]}".secrets (x int)'))
        await uow.commit()

    first = _by_schema(await migrate_all(db))
    assert first["platform"].status == "up to date"
    assert first[schemas[0]].status == "upgraded" and first[schemas[0]].after == head("tenant")
    assert first[schemas[2]].status == "upgraded"
    assert first[schemas[1]].status == "failed"
    assert "already exists" in (first[schemas[1]].error or "")

    # The failed schema was left as it was; clear the obstacle and rerun: it resumes.
    async with db.platform() as uow:
        await uow.conn.execute(text(f'DROP TABLE "{schemas[1]}".secrets'))
        await uow.commit()
    second = _by_schema(await migrate_all(db))
    assert second[schemas[1]].status == "upgraded"
    assert second[schemas[0]].status == "up to date" and second[schemas[2]].status == "up to date"

    third = _by_schema(await migrate_all(db))
    assert all(r.status == "up to date" for r in third.values())

    # Upgraded schemas are usable by their tenant role again.
    t = tenants[1]
    async with db.tenant(t.id, t.slug) as uow:
        await uow.conn.execute(text("INSERT INTO secrets (name, ciphertext, key_version)"
                                    " VALUES ('k', 'x', 1)"))
        await uow.commit()


async def test_migrate_skips_deleted_tenants(db: Database, make_tenant: TenantFactory) -> None:
    from tenancy.tenants import delete_tenant

    t = (await make_tenant()).tenant
    await delete_tenant(db, t.slug, confirm=t.slug, actor="test")
    reports = _by_schema(await migrate_all(db))
    assert tenant_schema(t.slug) not in reports
