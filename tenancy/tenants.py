"""Tenant provisioning and lifecycle: create, suspend, resume, change plan, delete.

Provisioning runs every step in one PostgreSQL transaction (roles and schemas are
transactional there), so a failure at any step leaves no schema, role or row behind:

    tenant row → role → schema → tenant migrations → owner user → first API key
    → data-encryption key → audit entry → commit
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy import audit, keys
from tenancy.auth import notify_auth_change
from tenancy.credentials import generate_api_key, generate_password, hash_password
from tenancy.db import Database
from tenancy.identifiers import quote_ident, slug_from_name, tenant_schema, validate_slug
from tenancy.migrate import upgrade_tenant_schema
from tenancy.models import Tenant
from tenancy.plans import get_plan
from tenancy.schema import TENANT_GROUP_ROLE
from trading.errors import Conflict, Invalid, NotFound

PROVISIONING_STEPS = ("tenant_row", "role", "schema", "migrations", "owner", "api_key",
                      "data_key", "audit")
_TENANT_COLUMNS = ("id, slug, name, plan, status, created_at, updated_at, version, billing_status,"
                   " past_due_since")
MIN_PASSWORD_LENGTH = 10


@dataclass(frozen=True)
class ProvisionedTenant:
    """A new tenant, with the credentials that are shown exactly once."""

    tenant: Tenant
    owner_email: str
    api_key: str
    owner_password: str | None  # set when the platform generated it


def normalise_email(email: str, *, field: str = "email") -> str:
    try:
        return validate_email(email, check_deliverability=False).normalized.lower()
    except (EmailNotValidError, TypeError):
        raise Invalid("not a valid email address", field=field) from None


def validate_name(name: str, *, field: str = "name") -> str:
    name = (name or "").strip()
    if not 1 <= len(name) <= 200:
        raise Invalid("name must be 1-200 characters", field=field)
    return name


def validate_password(password: str, *, field: str = "password") -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise Invalid(f"password must be at least {MIN_PASSWORD_LENGTH} characters", field=field)
    return password


async def provision(db: Database, master_key: bytes, *, name: str, plan: str, email: str,
                    slug: str | None = None, password: str | None = None,
                    actor: str = "operator",
                    on_step: Callable[[str], None] | None = None) -> ProvisionedTenant:
    """Create a tenant with everything it needs, all or nothing.

    `on_step` is called with each step's name before it runs (tests use it to fail a
    step on purpose).
    """
    name = validate_name(name)
    email = normalise_email(email)
    slug = validate_slug(slug) if slug else slug_from_name(name)
    if password is not None:
        validate_password(password)
    schema = tenant_schema(slug)
    ident = quote_ident(schema)
    step = on_step or (lambda _name: None)

    async with db.platform() as uow:
        conn = uow.conn
        await get_plan(conn, plan)
        await conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
                           {"k": "atp.tenant." + slug})

        step("tenant_row")
        tenant_id = uuid.uuid4()
        try:
            async with conn.begin_nested():
                await conn.execute(
                    text("INSERT INTO platform.tenants (id, slug, name, plan, status)"
                         " VALUES (:id, :slug, :name, :plan, 'active')"),
                    {"id": tenant_id, "slug": slug, "name": name, "plan": plan})
        except IntegrityError:
            raise Conflict(f"a tenant with slug {slug!r} already exists", code="slug_taken",
                           field="slug") from None

        step("role")
        if (await conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"),
                               {"r": schema})).first():
            raise Conflict(f"database role {schema} already exists (left by another "
                           "installation?)", code="role_exists", field="slug")
        await conn.execute(text(f"CREATE ROLE {ident} NOLOGIN"))
        await conn.execute(text(f"GRANT {quote_ident(TENANT_GROUP_ROLE)} TO {ident}"))
        await conn.execute(text(f"GRANT {ident} TO CURRENT_USER"))

        step("schema")
        await conn.execute(text(f"CREATE SCHEMA {ident} AUTHORIZATION CURRENT_USER"))
        await conn.execute(text(f"REVOKE ALL ON SCHEMA {ident} FROM PUBLIC"))
        await conn.execute(text(f"GRANT USAGE ON SCHEMA {ident} TO {ident}"))

        step("migrations")
        await upgrade_tenant_schema(conn, slug)

        step("owner")
        generated = None
        user = (await conn.execute(text("SELECT id FROM platform.users WHERE email = :e"),
                                   {"e": email})).first()
        if user is None:
            generated = None if password else generate_password()
            user_id = uuid.uuid4()
            await conn.execute(
                text("INSERT INTO platform.users (id, email, password_hash) VALUES (:i, :e, :h)"),
                {"i": user_id, "e": email, "h": hash_password(password or generated or "")})
        else:
            user_id = user.id
        await conn.execute(
            text("INSERT INTO platform.memberships (user_id, tenant_id, role)"
                 " VALUES (:u, :t, 'owner')"), {"u": user_id, "t": tenant_id})

        step("api_key")
        key = generate_api_key()
        await conn.execute(
            text("INSERT INTO platform.api_keys (id, tenant_id, name, role, prefix, key_hash,"
                 " created_by) VALUES (:i, :t, 'default', 'owner', :p, :h, :c)"),
            {"i": uuid.uuid4(), "t": tenant_id, "p": key.prefix, "h": key.key_hash, "c": actor})

        step("data_key")
        await keys.create_first_key(conn, master_key, tenant_id)

        step("audit")
        await audit.record(conn, tenant_id, actor=actor, action="tenant.create", target=slug,
                           detail={"name": name, "plan": plan, "owner": email})
        tenant = await _tenant_by_id(conn, tenant_id)
        await uow.commit()
    return ProvisionedTenant(tenant, email, key.plaintext, generated)


async def _tenant_by_id(conn: AsyncConnection, tenant_id: uuid.UUID) -> Tenant:
    row = (await conn.execute(text(f"SELECT {_TENANT_COLUMNS} FROM platform.tenants"
                                   " WHERE id = :i"), {"i": tenant_id})).one()
    return Tenant.from_row(row)


async def get_tenant(conn: AsyncConnection, slug: str, *, for_update: bool = False) -> Tenant:
    """A live (not deleted) tenant by slug, or `NotFound`."""
    lock = " FOR UPDATE" if for_update else ""
    row = (await conn.execute(
        text(f"SELECT {_TENANT_COLUMNS} FROM platform.tenants"
             f" WHERE slug = :s AND status <> 'deleted'{lock}"), {"s": slug})).first()
    if row is None:
        raise NotFound(f"no tenant {slug!r}", field="slug")
    return Tenant.from_row(row)


async def list_tenants(conn: AsyncConnection, *, status: str | None = None) -> list[Tenant]:
    where = "status = :st" if status else "status <> 'deleted'"
    rows = await conn.execute(text(f"SELECT {_TENANT_COLUMNS} FROM platform.tenants"
                                   f" WHERE {where} ORDER BY slug"), {"st": status})
    return [Tenant.from_row(r) for r in rows]


async def update_tenant(db: Database, slug: str, *, actor: str, plan: str | None = None,
                        status: str | None = None, expected_version: int | None = None) -> Tenant:
    """Change a tenant's plan and/or status (active, suspended) in one transaction.

    `expected_version`, when given, must match the stored version (optimistic concurrency):
    a mismatch raises `Conflict`.
    """
    if status is not None and status not in ("active", "suspended"):
        raise Invalid("status must be active or suspended", field="status")
    if plan is None and status is None:
        raise Invalid("nothing to change: give plan and/or status", field="plan")
    async with db.platform() as uow:
        conn = uow.conn
        tenant = await get_tenant(conn, slug, for_update=True)
        if expected_version is not None and expected_version != tenant.version:
            raise Conflict(f"tenant {slug!r} changed (version {tenant.version}, expected "
                           f"{expected_version})", code="version_conflict", field="version")
        changes: dict[str, str] = {}
        if plan is not None and plan != tenant.plan:
            await get_plan(conn, plan)
            changes["plan"] = plan
        if status is not None and status != tenant.status:
            changes["status"] = status
        if not changes:
            return tenant
        sets = ", ".join(f"{column} = :{column}" for column in changes)
        await conn.execute(
            text(f"UPDATE platform.tenants SET {sets}, updated_at = now(),"
                 " version = version + 1 WHERE id = :id"), {**changes, "id": tenant.id})
        await notify_auth_change(conn, tenant.id)
        for column, value in changes.items():
            action = ("tenant.plan_change" if column == "plan" else
                      "tenant.suspend" if value == "suspended" else "tenant.resume")
            await audit.record(conn, tenant.id, actor=actor, action=action, target=slug,
                               detail={"from": getattr(tenant, column), "to": value})
        updated = await _tenant_by_id(conn, tenant.id)
        await uow.commit()
        return updated


async def delete_tenant(db: Database, slug: str, *, confirm: str | None, actor: str) -> Tenant:
    """Drop a tenant's schema, role, keys and memberships; keep its row and audit trail.

    `confirm` must repeat the slug. Destroying the data keys makes any copy of the
    tenant's encrypted data unreadable.
    """
    if confirm != slug:
        raise Invalid(f"deleting drops all of the tenant's data; confirm with the slug "
                      f"{slug!r}", code="confirmation_required", field="confirm")
    async with db.platform() as uow:
        conn = uow.conn
        tenant = await get_tenant(conn, slug, for_update=True)
        ident = quote_ident(tenant_schema(slug))
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {ident} CASCADE"))
        await conn.execute(text(f"DROP ROLE IF EXISTS {ident}"))
        for table in ("api_keys", "memberships", "tenant_keys"):
            await conn.execute(text(f"DELETE FROM platform.{table} WHERE tenant_id = :t"),
                               {"t": tenant.id})
        await conn.execute(text(
            "DELETE FROM platform.users u WHERE NOT EXISTS"
            " (SELECT 1 FROM platform.memberships m WHERE m.user_id = u.id)"))
        await conn.execute(
            text("UPDATE platform.tenants SET status = 'deleted', deleted_at = now(),"
                 " updated_at = now(), version = version + 1 WHERE id = :t"), {"t": tenant.id})
        await notify_auth_change(conn, tenant.id)
        await audit.record(conn, tenant.id, actor=actor, action="tenant.delete", target=slug,
                           detail={"name": tenant.name})
        deleted = await _tenant_by_id(conn, tenant.id)
        await uow.commit()
        return deleted

