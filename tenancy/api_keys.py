"""A tenant's API keys: create (shown once), list, revoke."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy import audit
from tenancy.auth import notify_auth_change
from tenancy.credentials import generate_api_key
from tenancy.models import ApiKeyInfo
from tenancy.roles import Role
from trading.errors import Forbidden, Invalid, NotFound

_COLUMNS = "id, name, role, prefix, created_by, created_at, last_used_at, revoked_at"


@dataclass(frozen=True)
class CreatedKey:
    info: ApiKeyInfo
    plaintext: str


def _validate_name(name: str) -> str:
    name = (name or "").strip()
    if not 1 <= len(name) <= 100:
        raise Invalid("name must be 1-100 characters", field="name")
    return name


async def create_key(conn: AsyncConnection, tenant_id: uuid.UUID, *, name: str, role: Role,
                     actor: str, actor_role: Role) -> CreatedKey:
    """Mint a key for the tenant; a key never outranks the credential that creates it."""
    name = _validate_name(name)
    if not actor_role.allows(role):
        raise Forbidden(f"a {actor_role.value} cannot create a {role.value} key",
                        code="insufficient_role", field="role")
    key = generate_api_key()
    key_id = uuid.uuid4()
    row = (await conn.execute(
        text("INSERT INTO platform.api_keys (id, tenant_id, name, role, prefix, key_hash,"
             f" created_by) VALUES (:i, :t, :n, :r, :p, :h, :c) RETURNING {_COLUMNS}"),
        {"i": key_id, "t": tenant_id, "n": name, "r": role.value, "p": key.prefix,
         "h": key.key_hash, "c": actor})).one()
    await audit.record(conn, tenant_id, actor=actor, action="api_key.create",
                       target=key.prefix, detail={"name": name, "role": role.value})
    return CreatedKey(ApiKeyInfo.from_row(row), key.plaintext)


async def list_keys(conn: AsyncConnection, tenant_id: uuid.UUID) -> list[ApiKeyInfo]:
    rows = await conn.execute(
        text(f"SELECT {_COLUMNS} FROM platform.api_keys WHERE tenant_id = :t"
             " ORDER BY created_at, prefix"), {"t": tenant_id})
    return [ApiKeyInfo.from_row(r) for r in rows]


async def revoke_key(conn: AsyncConnection, tenant_id: uuid.UUID, key_ref: str, *,
                     actor: str) -> ApiKeyInfo:
    """Revoke a key of this tenant by id or prefix; another tenant's key is `NotFound`."""
    params: dict[str, object]
    try:
        params = {"t": tenant_id, "id": uuid.UUID(key_ref), "p": None}
    except ValueError:
        params = {"t": tenant_id, "id": None, "p": key_ref}
    row = (await conn.execute(
        text("UPDATE platform.api_keys SET revoked_at = coalesce(revoked_at, now())"
             " WHERE tenant_id = :t AND (id = :id OR prefix = :p)"
             f" RETURNING {_COLUMNS}"), params)).first()
    if row is None:
        raise NotFound(f"no API key {key_ref!r}", field="id")
    await notify_auth_change(conn, tenant_id)
    await audit.record(conn, tenant_id, actor=actor, action="api_key.revoke",
                       target=row.prefix, detail={"name": row.name})
    return ApiKeyInfo.from_row(row)
