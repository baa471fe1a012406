"""Sign-in and the caller's own identity."""

from __future__ import annotations

from fastapi import APIRouter

from serve.deps import ServicesDep, ViewerDep, tenant_of
from serve.schemas import MeResponse, TenantSummary, TokenRequest, TokenResponse
from tenancy.tenants import normalise_email
from trading.errors import Unauthenticated

router = APIRouter(prefix="/v1", tags=["auth"])


@router.post("/auth/token", response_model=TokenResponse)
async def issue_token(body: TokenRequest, services: ServicesDep) -> TokenResponse:
    """Exchange email and password for a short-lived JWT of one membership.

    Ten failed attempts for one email lock it for 15 minutes (429).
    """
    email = normalise_email(body.email)
    await services.login_guard.check(email)
    try:
        async with services.db.platform() as uow:
            token, exp, principal = await services.auth.login(
                uow.conn, email=email, password=body.password, tenant_slug=body.tenant)
    except Unauthenticated:
        await services.login_guard.failed(email)
        raise
    await services.login_guard.succeeded(email)
    assert principal.role is not None
    return TokenResponse(access_token=token, expires_at=exp, tenant=tenant_of(principal).slug,
                         role=principal.role.value)


@router.get("/me", response_model=MeResponse)
async def me(principal: ViewerDep) -> MeResponse:
    """The tenant and role the credential acts for."""
    t = tenant_of(principal)
    assert principal.role is not None
    return MeResponse(
        tenant=TenantSummary(id=t.id, slug=t.slug, name=t.name, plan=t.plan, status=t.status),
        role=principal.role.value, credential=principal.kind, actor=principal.actor,
        email=principal.email)
