"""Provisioning is all or nothing, validates before writing, and manages the lifecycle."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import text

from tenancy import audit
from tenancy.credentials import api_key_prefix
from tenancy.db import Database
from tenancy.identifiers import tenant_schema
from tenancy.settings import Settings
from tenancy.tenants import PROVISIONING_STEPS, delete_tenant, provision, update_tenant
from tests.conftest import TenantFactory, random_slug
from trading.errors import Conflict, Invalid, NotFound


async def _traces(db: Database, slug: str, email: str) -> dict[str, int]:
    schema = tenant_schema(slug)
    async with db.platform() as uow:
        c = uow.conn
        one = lambda sql, **p: c.execute(text(sql), p)  # noqa: E731
        return {
            "schema": (await one("SELECT count(*) FROM pg_namespace WHERE nspname = :s",
                                 s=schema)).scalar_one(),
            "role": (await one("SELECT count(*) FROM pg_roles WHERE rolname = :s",
                               s=schema)).scalar_one(),
            "tenant": (await one("SELECT count(*) FROM platform.tenants WHERE slug = :s",
                                 s=slug)).scalar_one(),
            "user": (await one("SELECT count(*) FROM platform.users WHERE email = :e",
                               e=email)).scalar_one(),
            "keys": (await one("SELECT count(*) FROM platform.api_keys k JOIN platform.tenants t"
                               " ON t.id = k.tenant_id WHERE t.slug = :s", s=slug)).scalar_one(),
            "audit": (await one("SELECT count(*) FROM platform.audit_log WHERE target = :s",
                                s=slug)).scalar_one(),
        }


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("step", PROVISIONING_STEPS)
async def test_a_failure_at_any_step_leaves_nothing_behind(db: Database, settings: Settings,
                                                           step: str) -> None:
    slug, email = random_slug(), f"{uuid.uuid4().hex[:8]}@fail.example.com"

    def fail_at(name: str) -> None:
        if name == step:
            raise Boom(name)

    with pytest.raises(Boom):
        await provision(db, settings.master_key_bytes, name="Doomed", plan="starter",
                        email=email, slug=slug, on_step=fail_at)
    assert await _traces(db, slug, email) == {"schema": 0, "role": 0, "tenant": 0, "user": 0,
                                              "keys": 0, "audit": 0}


async def test_a_slug_provisions_cleanly_after_a_failed_attempt(db: Database,
                                                                settings: Settings) -> None:
    slug, email = random_slug(), "late@fail.example.com"

    def break_audit(name: str) -> None:
        if name == "audit":
            raise Boom("audit")

    with pytest.raises(Boom):
        await provision(db, settings.master_key_bytes, name="Late", plan="starter",
                        email=email, slug=slug, on_step=break_audit)
    # Nothing half-written: the same slug provisions cleanly afterwards.
    created = await provision(db, settings.master_key_bytes, name="Late", plan="starter",
                              email=email, slug=slug)
    assert created.tenant.slug == slug


async def test_provisioning_creates_everything(db: Database, make_tenant: TenantFactory) -> None:
    created = await make_tenant(password=None)
    slug = created.tenant.slug
    assert await _traces(db, slug, created.owner_email) == {
        "schema": 1, "role": 1, "tenant": 1, "user": 1, "keys": 1, "audit": 1}
    assert created.owner_password and len(created.owner_password) >= 16
    assert api_key_prefix(created.api_key)
    async with db.platform() as uow:
        keys = (await uow.conn.execute(text(
            "SELECT count(*) FROM platform.tenant_keys WHERE tenant_id = :t AND retired_at IS NULL"),
            {"t": created.tenant.id})).scalar_one()
        stored = (await uow.conn.execute(text(
            "SELECT key_hash FROM platform.api_keys WHERE tenant_id = :t"),
            {"t": created.tenant.id})).scalar_one()
    assert keys == 1
    assert created.api_key.encode() not in stored


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"slug": "Bad_Slug"}, "slug"), ({"slug": "ab"}, "slug"), ({"email": "not-an-email"}, "email"),
    ({"plan": "gold"}, "plan"), ({"name": "  "}, "name"), ({"password": "short"}, "password"),
])
async def test_bad_input_names_the_field_and_writes_nothing(make_tenant: TenantFactory,
                                                            db: Database, kwargs: dict[str, str],
                                                            field: str) -> None:
    before = await _count_tenants(db)
    with pytest.raises(Invalid) as info:
        await make_tenant(**kwargs)
    assert info.value.field == field
    assert await _count_tenants(db) == before


async def _count_tenants(db: Database) -> int:
    async with db.platform() as uow:
        return int((await uow.conn.execute(text("SELECT count(*) FROM platform.tenants")))
                   .scalar_one())


async def test_duplicate_slug_is_a_conflict(make_tenant: TenantFactory) -> None:
    first = await make_tenant()
    with pytest.raises(Conflict) as info:
        await make_tenant(slug=first.tenant.slug, email="other@example.com")
    assert info.value.field == "slug"


async def test_concurrent_provisioning_of_one_slug_creates_one_tenant(
        make_tenant: TenantFactory, db: Database) -> None:
    slug = random_slug()
    results = await asyncio.gather(*(make_tenant(slug=slug, email=f"u{i}@race.example.com")
                                     for i in range(3)), return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))


async def test_suspend_resume_and_plan_change_are_audited(db: Database,
                                                          make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    suspended = await update_tenant(db, t.slug, actor="operator", status="suspended")
    assert suspended.status == "suspended" and suspended.version == t.version + 1
    resumed = await update_tenant(db, t.slug, actor="operator", status="active", plan="starter")
    assert (resumed.status, resumed.plan) == ("active", "starter")
    async with db.platform() as uow:
        actions = (await uow.conn.execute(text(
            "SELECT action FROM platform.audit_log WHERE tenant_id = :t ORDER BY seq"),
            {"t": t.id})).scalars().all()
        [report] = await audit.verify(uow.conn, t.id)
    assert actions == ["tenant.create", "tenant.suspend", "tenant.plan_change", "tenant.resume"]
    assert report.ok and report.entries == 4
    with pytest.raises(Invalid) as info:
        await update_tenant(db, t.slug, actor="operator", plan="gold")
    assert info.value.field == "plan"


async def test_two_writers_race_on_the_version(db: Database, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    results = await asyncio.gather(
        update_tenant(db, t.slug, actor="a", plan="starter", expected_version=t.version),
        update_tenant(db, t.slug, actor="b", plan="enterprise", expected_version=t.version),
        return_exceptions=True)
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1
    assert isinstance(losers[0], Conflict) and losers[0].code == "version_conflict"
    assert winners[0].version == t.version + 1


async def test_delete_needs_confirmation_and_keeps_the_audit_trail(
        db: Database, make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    t = created.tenant
    with pytest.raises(Invalid) as info:
        await delete_tenant(db, t.slug, confirm="nope", actor="operator")
    assert info.value.field == "confirm"
    deleted = await delete_tenant(db, t.slug, confirm=t.slug, actor="operator")
    assert deleted.status == "deleted"
    traces = await _traces(db, t.slug, created.owner_email)
    assert (traces["schema"], traces["role"], traces["keys"], traces["user"]) == (0, 0, 0, 0)
    async with db.platform() as uow:
        [report] = await audit.verify(uow.conn, t.id)
        keys = (await uow.conn.execute(text(
            "SELECT count(*) FROM platform.tenant_keys WHERE tenant_id = :t"), {"t": t.id})
        ).scalar_one()
    assert report.ok and report.entries == 2 and keys == 0
    with pytest.raises(NotFound):
        await delete_tenant(db, t.slug, confirm=t.slug, actor="operator")
    # The slug is free again; the old trail still belongs to the old id.
    again = await make_tenant(slug=t.slug)
    assert again.tenant.id != t.id


async def test_a_real_database_error_mid_way_rolls_back_the_role(db: Database,
                                                                 settings: Settings) -> None:
    slug = random_slug()
    async with db.platform() as uow:  # a stray schema makes CREATE SCHEMA fail after CREATE ROLE
        await uow.conn.execute(text(f'CREATE SCHEMA "{tenant_schema(slug)}"'))
        await uow.commit()
    try:
        with pytest.raises(Exception, match="already exists"):
            await provision(db, settings.master_key_bytes, name="Clash", plan="starter",
                            email="clash@example.com", slug=slug)
        traces = await _traces(db, slug, "clash@example.com")
        assert (traces["role"], traces["tenant"], traces["user"]) == (0, 0, 0)
    finally:
        async with db.platform() as uow:
            await uow.conn.execute(text(f'DROP SCHEMA "{tenant_schema(slug)}"'))
            await uow.commit()
