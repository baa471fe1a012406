"""The demo tenant: created once, given a fresh API key on every run."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text

from tenancy import api_keys
from tenancy.auth import notify_auth_change
from tenancy.db import Database
from tenancy.roles import Role
from tenancy.tenants import get_tenant, provision
from trading.errors import NotFound

DEMO_SLUG = "demo"
DEMO_EMAIL = "demo@example.com"
DEMO_KEY_NAME = "demo"
DEMO_ACTOR = "demo"


@dataclass(frozen=True)
class DemoTenant:
    slug: str
    api_key: str
    created: bool
    owner_password: str | None


async def ensure_demo_tenant(db: Database, master_key: bytes) -> DemoTenant:
    """Provision the demo tenant if absent; revoke keys of earlier runs and mint a new one."""
    async with db.platform() as uow:
        try:
            tenant = await get_tenant(uow.conn, DEMO_SLUG)
        except NotFound:
            tenant = None
    if tenant is None:
        created = await provision(db, master_key, name="Demo Trading Co", plan="professional",
                                  email=DEMO_EMAIL, slug=DEMO_SLUG, actor=DEMO_ACTOR)
        return DemoTenant(DEMO_SLUG, created.api_key, True, created.owner_password)
    async with db.platform() as uow:
        await uow.conn.execute(
            text("UPDATE platform.api_keys SET revoked_at = now() WHERE tenant_id = :t"
                 " AND created_by = :actor AND revoked_at IS NULL"),
            {"t": tenant.id, "actor": DEMO_ACTOR})
        await notify_auth_change(uow.conn, tenant.id)
        key = await api_keys.create_key(uow.conn, tenant.id, name=DEMO_KEY_NAME,
                                        role=Role.OWNER, actor=DEMO_ACTOR,
                                        actor_role=Role.OWNER)
        await uow.commit()
    return DemoTenant(DEMO_SLUG, key.plaintext, False, None)
