"""Operator routes: tenants and plans."""

from __future__ import annotations

import logging
import uuid
from typing import Literal

from fastapi import APIRouter, Query, status

from billing.invoices import onboard
from billing.provider import BillingProvider
from serve.deps import OperatorDep, ServicesDep
from serve.schemas import PlanOut, TenantCreate, TenantCreated, TenantOut, TenantPatch
from tenancy import plans, tenants
from tenancy.db import Database

router = APIRouter(prefix="/v1/admin", tags=["operator"])
log = logging.getLogger(__name__)


async def onboard_billing(db: Database, provider: BillingProvider, tenant_id: uuid.UUID) -> None:
    """The provider's customer and subscription for a new tenant. A provider outage does
    not undo the onboarding: closing a month creates what is missing."""
    try:
        await onboard(db, provider, tenant_id)
    except Exception as exc:
        log.warning("billing onboarding of tenant %s failed (retried at month close): %s",
                    tenant_id, exc)


@router.post("/tenants", response_model=TenantCreated, status_code=status.HTTP_201_CREATED)
async def create_tenant(body: TenantCreate, principal: OperatorDep, services: ServicesDep
                        ) -> TenantCreated:
    """Provision a tenant (schema, role, owner, first API key, data key), all or nothing."""
    created = await tenants.provision(
        services.db, services.settings.master_key_bytes, name=body.name, plan=body.plan,
        email=body.email, slug=body.slug, password=body.password, actor=principal.actor)
    await onboard_billing(services.db, services.provider, created.tenant.id)
    return TenantCreated(tenant=created.tenant, owner_email=created.owner_email,
                         api_key=created.api_key, owner_password=created.owner_password)


@router.get("/tenants", response_model=list[TenantOut])
async def list_tenants(_: OperatorDep, services: ServicesDep,
                       status_: Literal["active", "suspended", "deleted"] | None =
                       Query(None, alias="status")) -> list[TenantOut]:
    async with services.db.platform() as uow:
        return await tenants.list_tenants(uow.conn, status=status_)


@router.get("/tenants/{slug}", response_model=TenantOut)
async def get_tenant(slug: str, _: OperatorDep, services: ServicesDep) -> TenantOut:
    async with services.db.platform() as uow:
        return await tenants.get_tenant(uow.conn, slug)


@router.patch("/tenants/{slug}", response_model=TenantOut)
async def patch_tenant(slug: str, body: TenantPatch, principal: OperatorDep,
                       services: ServicesDep) -> TenantOut:
    """Change plan and/or status (suspend, resume); `version` guards concurrent edits."""
    return await tenants.update_tenant(
        services.db, slug, actor=principal.actor, plan=body.plan, status=body.status,
        expected_version=body.version)


@router.delete("/tenants/{slug}", response_model=TenantOut)
async def delete_tenant(slug: str, principal: OperatorDep, services: ServicesDep,
                        confirm: str | None = Query(None, description="repeat the slug")
                        ) -> TenantOut:
    """Drop the tenant's schema, role and keys; its audit trail stays."""
    return await tenants.delete_tenant(services.db, slug, confirm=confirm,
                                       actor=principal.actor)


@router.get("/plans", response_model=list[PlanOut])
async def list_plans(_: OperatorDep, services: ServicesDep) -> list[PlanOut]:
    async with services.db.platform() as uow:
        return await plans.list_plans(uow.conn)
