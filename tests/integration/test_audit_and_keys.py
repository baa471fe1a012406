"""Audit chain tamper detection, and data-key rotation against real PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import text

from tenancy import audit, keys
from tenancy.db import Database
from tenancy.identifiers import tenant_schema
from tenancy.settings import Settings
from tests.conftest import TEST_DB_URL, TenantFactory


async def _tenant_with_trail(db: Database, make_tenant: TenantFactory, entries: int = 5):  # type: ignore[no-untyped-def]
    t = (await make_tenant()).tenant
    async with db.platform() as uow:
        for i in range(entries - 1):
            await audit.record(uow.conn, t.id, actor="test", action="step", target=str(i),
                               detail={"i": i, "nested": {"ok": True}})
        await uow.commit()
    return t


async def _verify(db: Database, tenant_id):  # type: ignore[no-untyped-def]
    async with db.platform() as uow:
        [report] = await audit.verify(uow.conn, tenant_id)
    return report


async def test_an_intact_chain_verifies(db: Database, make_tenant: TenantFactory) -> None:
    t = await _tenant_with_trail(db, make_tenant)
    report = await _verify(db, t.id)
    assert report.ok and report.entries == 5


async def test_a_modified_entry_is_named(db: Database, make_tenant: TenantFactory) -> None:
    t = await _tenant_with_trail(db, make_tenant)
    async with db.platform() as uow:
        await uow.conn.execute(text(
            "UPDATE platform.audit_log SET detail = '{\"i\": 99}' WHERE tenant_id = :t AND seq = 3"),
            {"t": t.id})
        await uow.commit()
    report = await _verify(db, t.id)
    assert (report.ok, report.broken_seq) == (False, 3)
    assert "modified" in (report.reason or "")


async def test_a_removed_entry_is_named(db: Database, make_tenant: TenantFactory) -> None:
    t = await _tenant_with_trail(db, make_tenant)
    async with db.platform() as uow:
        await uow.conn.execute(text(
            "DELETE FROM platform.audit_log WHERE tenant_id = :t AND seq = 2"), {"t": t.id})
        await uow.commit()
    report = await _verify(db, t.id)
    assert (report.ok, report.broken_seq) == (False, 3)
    assert "removed" in (report.reason or "")


async def test_a_rewritten_tail_is_caught_by_prev_hash(db: Database,
                                                       make_tenant: TenantFactory) -> None:
    t = await _tenant_with_trail(db, make_tenant)
    async with db.platform() as uow:  # a forger recomputes entry 4's own hash, not the links
        row = (await uow.conn.execute(text(
            "SELECT * FROM platform.audit_log WHERE tenant_id = :t AND seq = 4"), {"t": t.id})).one()
        forged_prev = "f" * 64
        forged = audit.entry_hash(forged_prev, row.tenant_id, row.seq, row.actor, row.action,
                                  row.target, row.detail, row.at)
        await uow.conn.execute(text(
            "UPDATE platform.audit_log SET prev_hash = :p, hash = :h WHERE id = :i"),
            {"p": forged_prev, "h": forged, "i": row.id})
        await uow.commit()
    report = await _verify(db, t.id)
    assert (report.ok, report.broken_seq) == (False, 4)


async def test_cli_audit_verify_names_the_first_broken_link(db: Database, settings: Settings,
                                                            make_tenant: TenantFactory) -> None:
    t = await _tenant_with_trail(db, make_tenant)
    env = {**os.environ, "ATP_DATABASE_URL": TEST_DB_URL, "ATP_DEV_MODE": "1",
           "ATP_DATA_DIR": str(settings.data_dir)}
    cmd = [sys.executable, "-m", "serve.cli", "audit", "verify", "--tenant", t.slug]
    ok = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 broken" in ok.stdout
    async with db.platform() as uow:
        await uow.conn.execute(text(
            "UPDATE platform.audit_log SET actor = 'mallory' WHERE tenant_id = :t AND seq = 2"),
            {"t": t.id})
        await uow.commit()
    bad = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "broken at seq 2" in bad.stdout


async def test_concurrent_writers_keep_the_chain_gapless(db: Database,
                                                         make_tenant: TenantFactory) -> None:
    import asyncio

    t = (await make_tenant()).tenant

    async def write(i: int) -> None:
        async with db.platform() as uow:
            await audit.record(uow.conn, t.id, actor="w", action="concurrent", detail={"i": i})
            await uow.commit()

    await asyncio.gather(*(write(i) for i in range(20)))
    report = await _verify(db, t.id)
    assert report.ok and report.entries == 21


async def test_rotation_reencrypts_secrets_and_keeps_them_readable(
        db: Database, settings: Settings, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    master = settings.master_key_bytes
    async with db.platform() as uow:
        cipher = await keys.load_cipher(uow.conn, master, t.id)
    async with db.tenant(t.id, t.slug) as uow:
        await uow.conn.execute(text(
            "INSERT INTO secrets (name, ciphertext, key_version) VALUES ('broker', :c, :v)"),
            {"c": cipher.encrypt(b"api-secret", "secret:broker"), "v": cipher.active_version})
        await uow.commit()
    async with db.platform() as uow:
        version = await keys.rotate_key(uow.conn, master, t.id, t.slug)
        await uow.commit()
    assert version == 2
    async with db.platform() as uow:
        cipher2 = await keys.load_cipher(uow.conn, master, t.id)
        row = (await uow.conn.execute(text(
            f'SELECT ciphertext, key_version FROM "{tenant_schema(t.slug)}".secrets')
        )).one()
        active = (await uow.conn.execute(text(
            "SELECT version FROM platform.tenant_keys WHERE tenant_id = :t AND retired_at IS NULL"),
            {"t": t.id})).scalars().all()
    assert active == [2] and row.key_version == 2
    assert keys.TenantCipher.version_of(row.ciphertext) == 2
    assert cipher2.decrypt(row.ciphertext, "secret:broker") == b"api-secret"


async def test_master_key_rewrap(db: Database, settings: Settings,
                                 make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    old, new = settings.master_key_bytes, os.urandom(32)
    async with db.platform() as uow:
        before = await keys.load_cipher(uow.conn, old, t.id)
        n = await keys.rewrap_all(uow.conn, old, new)
        after = await keys.load_cipher(uow.conn, new, t.id)  # not committed: rolls back
    assert n >= 1 and before.keys == after.keys
