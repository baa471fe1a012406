"""Named dependencies of the gateway's routes: services, the caller, role checks.

The request pipeline for tenant routes is: authenticate → tenant context → rate limit
and quota → count the call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis

from actors.jobs import RayJobs
from billing.provider import BillingProvider
from serve.authcache import AuthCache
from serve.limits import Limiter
from serve.loginguard import LoginGuard
from serve.usage import UsageFlusher
from tenancy.auth import Authenticator, Principal, TenantContext
from tenancy.db import Database
from tenancy.roles import Role, require_role
from tenancy.settings import Settings
from trading.errors import Forbidden


@dataclass
class Services:
    """What the gateway's routes work with; built once per replica by the lifespan."""

    settings: Settings
    db: Database
    redis: Redis
    auth: Authenticator
    auth_cache: AuthCache
    limiter: Limiter
    flusher: UsageFlusher
    login_guard: LoginGuard
    provider: BillingProvider
    jobs: RayJobs = field(default_factory=RayJobs)


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip()
    return request.headers.get("x-api-key", "").strip()


async def get_principal(request: Request, services: ServicesDep) -> Principal:
    """Authenticate the request's credential (Authorization: Bearer, or X-API-Key)."""
    principal = await services.auth_cache.authenticate(_bearer(request))
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_operator(principal: PrincipalDep) -> Principal:
    if principal.kind != "operator":
        raise Forbidden("this route needs the operator token", code="operator_required")
    return principal


OperatorDep = Annotated[Principal, Depends(get_operator)]


async def get_tenant_principal(principal: PrincipalDep, services: ServicesDep) -> Principal:
    """A tenant credential whose request fits the plan's rate and monthly calls."""
    if principal.tenant is None:
        raise Forbidden("this route needs a tenant credential (API key or user token)",
                        code="tenant_required")
    await services.limiter.admit(principal.tenant)
    return principal


def requires(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting tenant credentials of at least `role`."""

    async def dependency(principal: Annotated[Principal, Depends(get_tenant_principal)]
                         ) -> Principal:
        assert principal.role is not None
        require_role(principal.role, role)
        return principal

    dependency.__name__ = f"requires_{role.value}"
    return dependency


ViewerDep = Annotated[Principal, Depends(requires(Role.VIEWER))]
TraderDep = Annotated[Principal, Depends(requires(Role.TRADER))]
AdminDep = Annotated[Principal, Depends(requires(Role.ADMIN))]
OwnerDep = Annotated[Principal, Depends(requires(Role.OWNER))]


def tenant_of(principal: Principal) -> TenantContext:
    assert principal.tenant is not None
    return principal.tenant
