"""Resolve a bearer credential to a `Principal`: the operator, or a tenant member.

The tenant is taken from the credential alone: an API key's row, or a JWT's claims
checked against the current membership. Suspended tenants are refused with
``tenant_suspended``; deleted tenants, like unknown keys, are unauthenticated.
"""

from __future__ import annotations

import hmac
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy.credentials import (
    api_key_matches,
    api_key_prefix,
    issue_job_token,
    issue_jwt,
    verify_jwt,
    verify_password,
)
from tenancy.roles import Role
from trading.errors import Forbidden, Invalid, Unauthenticated

LAST_USED_RESOLUTION_SECONDS = 60.0
AUTH_CHANNEL = "atp_auth"

_TENANT_FIELDS = ("t.id AS tenant_id, t.slug, t.name AS tenant_name, t.plan, t.status,"
                  " p.rate_per_second, p.burst, p.api_calls_per_month, p.worker_group")


@dataclass(frozen=True)
class TenantContext:
    """The tenant a request acts for, with the plan limits the gateway enforces."""

    id: uuid.UUID
    slug: str
    name: str
    plan: str
    status: str
    rate_per_second: Decimal | None
    burst: int | None
    api_calls_per_month: int | None
    worker_group: str | None = None  # the plan's dedicated Ray worker group (actors/placement.py)

    @classmethod
    def from_row(cls, row: Any) -> TenantContext:
        return cls(row.tenant_id, row.slug, row.tenant_name, row.plan, row.status,
                   row.rate_per_second, row.burst, row.api_calls_per_month, row.worker_group)


@dataclass(frozen=True)
class Principal:
    """Who is calling: `kind` says how they authenticated."""

    kind: Literal["operator", "api_key", "user", "job"]
    actor: str
    tenant: TenantContext | None = None
    role: Role | None = None
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    email: str | None = None
    job_id: uuid.UUID | None = None


OPERATOR = Principal(kind="operator", actor="operator")


def _check_status(tenant: TenantContext) -> None:
    if tenant.status == "suspended":
        raise Forbidden(f"tenant {tenant.slug!r} is suspended", code="tenant_suspended")
    if tenant.status != "active":
        raise Unauthenticated("the credential's tenant no longer exists", code="tenant_gone")


async def notify_auth_change(conn: AsyncConnection, tenant_id: uuid.UUID) -> None:
    """Tell every gateway replica, on commit, to forget cached credentials of a tenant.

    Call it inside the transaction that revokes a key, suspends, resumes, re-plans or
    deletes a tenant: PostgreSQL delivers the notification only if that transaction commits.
    """
    await conn.execute(text("SELECT pg_notify(:c, :t)"), {"c": AUTH_CHANNEL, "t": str(tenant_id)})


class Authenticator:
    """Checks credentials against the master schema (platform role)."""

    def __init__(self, *, jwt_secret: str, operator_token: str, jwt_ttl_seconds: int) -> None:
        self._jwt_secret = jwt_secret
        self._operator_token = operator_token.encode()
        self._jwt_ttl = jwt_ttl_seconds
        self._last_used_written: dict[uuid.UUID, float] = {}

    def is_operator(self, credential: str) -> bool:
        return hmac.compare_digest(credential.encode(), self._operator_token)

    async def authenticate(self, conn: AsyncConnection, credential: str) -> Principal:
        """Return the principal for a bearer credential, or raise `Unauthenticated`."""
        if not credential:
            raise Unauthenticated("missing credential: send Authorization: Bearer <key>",
                                  code="missing_credential")
        if self.is_operator(credential):
            return OPERATOR
        if credential.startswith("atp_"):
            return await self._api_key(conn, credential)
        if credential.count(".") == 2:
            return await self._jwt(conn, credential)
        raise Unauthenticated("unrecognised credential", code="invalid_credential")

    async def _api_key(self, conn: AsyncConnection, plaintext: str) -> Principal:
        prefix = api_key_prefix(plaintext)
        row = (await conn.execute(text(
            "SELECT k.id AS key_id, k.key_hash, k.role, k.revoked_at, k.last_used_at,"
            f" {_TENANT_FIELDS} FROM platform.api_keys k"
            " JOIN platform.tenants t ON t.id = k.tenant_id"
            " JOIN platform.plans p ON p.code = t.plan WHERE k.prefix = :p"),
            {"p": prefix})).first()
        if row is None or not api_key_matches(row.key_hash, plaintext):
            raise Unauthenticated("unknown API key", code="invalid_api_key")
        if row.revoked_at is not None:
            raise Unauthenticated("this API key has been revoked", code="api_key_revoked")
        tenant = TenantContext.from_row(row)
        _check_status(tenant)
        await self._touch(conn, row.key_id)
        return Principal(kind="api_key", actor=f"api_key:{prefix}", tenant=tenant,
                         role=Role(row.role), api_key_id=row.key_id)

    async def _touch(self, conn: AsyncConnection, key_id: uuid.UUID) -> None:
        """Record last use, at most once a minute per key and process."""
        now = time.monotonic()
        if now - self._last_used_written.get(key_id, -1e9) < LAST_USED_RESOLUTION_SECONDS:
            return
        self._last_used_written[key_id] = now
        await conn.execute(text("UPDATE platform.api_keys SET last_used_at = now()"
                                " WHERE id = :i"), {"i": key_id})

    async def _jwt(self, conn: AsyncConnection, token: str) -> Principal:
        claims = verify_jwt(self._jwt_secret, token)
        if claims.scope == "job":
            return await self._job(conn, claims.user_id, claims.tenant_id)
        row = (await conn.execute(text(
            f"SELECT m.role, u.email, {_TENANT_FIELDS} FROM platform.memberships m"
            " JOIN platform.users u ON u.id = m.user_id"
            " JOIN platform.tenants t ON t.id = m.tenant_id"
            " JOIN platform.plans p ON p.code = t.plan"
            " WHERE m.user_id = :u AND m.tenant_id = :t"),
            {"u": claims.user_id, "t": claims.tenant_id})).first()
        if row is None:
            raise Unauthenticated("the token's membership no longer exists",
                                  code="invalid_token")
        tenant = TenantContext.from_row(row)
        _check_status(tenant)
        # The current membership role wins over the one in the token, if lower.
        role = min(Role(row.role), claims.role, key=lambda r: r.rank)
        return Principal(kind="user", actor=f"user:{row.email}", tenant=tenant, role=role,
                         user_id=claims.user_id, email=row.email)

    async def _job(self, conn: AsyncConnection, job_id: uuid.UUID, tenant_id: uuid.UUID
                   ) -> Principal:
        """A job token: the viewer role of its tenant while the tenant is active."""
        row = (await conn.execute(text(
            f"SELECT {_TENANT_FIELDS} FROM platform.tenants t"
            " JOIN platform.plans p ON p.code = t.plan WHERE t.id = :t"), {"t": tenant_id})).first()
        if row is None:
            raise Unauthenticated("the token's tenant no longer exists", code="invalid_token")
        tenant = TenantContext.from_row(row)
        _check_status(tenant)
        return Principal(kind="job", actor=f"job:{job_id}", tenant=tenant, role=Role.VIEWER,
                         job_id=job_id)

    def job_token(self, job_id: uuid.UUID, tenant_id: uuid.UUID, ttl_seconds: int) -> str:
        """Sign a token for one of the tenant's jobs (see `tenancy.credentials.issue_job_token`)."""
        return issue_job_token(self._jwt_secret, job_id=job_id, tenant_id=tenant_id,
                               ttl_seconds=ttl_seconds)[0]

    async def login(self, conn: AsyncConnection, *, email: str, password: str,
                    tenant_slug: str | None) -> tuple[str, int, Principal]:
        """Exchange email and password for a JWT of one membership."""
        user = (await conn.execute(text(
            "SELECT id, email, password_hash FROM platform.users WHERE email = :e"),
            {"e": email.strip().lower()})).first()
        if not verify_password(user.password_hash if user else None, password) or user is None:
            raise Unauthenticated("wrong email or password", code="invalid_login")
        rows = (await conn.execute(text(
            f"SELECT m.role, {_TENANT_FIELDS} FROM platform.memberships m"
            " JOIN platform.tenants t ON t.id = m.tenant_id"
            " JOIN platform.plans p ON p.code = t.plan"
            " WHERE m.user_id = :u AND t.status <> 'deleted' ORDER BY t.slug"),
            {"u": user.id})).all()
        if tenant_slug is not None:
            rows = [r for r in rows if r.slug == tenant_slug]
            if not rows:
                raise Unauthenticated("wrong email or password", code="invalid_login")
        if not rows:
            raise Unauthenticated("this user belongs to no tenant", code="invalid_login")
        if len(rows) > 1:
            raise Invalid("this user belongs to several tenants: give tenant",
                          field="tenant")
        tenant = TenantContext.from_row(rows[0])
        _check_status(tenant)
        role = Role(rows[0].role)
        token, exp = issue_jwt(self._jwt_secret, user_id=user.id, tenant_id=tenant.id,
                               role=role, ttl_seconds=self._jwt_ttl)
        return token, exp, Principal(kind="user", actor=f"user:{user.email}", tenant=tenant,
                                     role=role, user_id=user.id, email=user.email)
