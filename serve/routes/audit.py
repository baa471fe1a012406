"""The tenant's own audit trail, read under the tenant's role (row-level security)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import text

from serve.deps import AdminDep, ServicesDep, tenant_of
from serve.schemas import AuditEntryOut

router = APIRouter(prefix="/v1", tags=["audit"])


@router.get("/audit", response_model=list[AuditEntryOut])
async def audit_trail(principal: AdminDep, services: ServicesDep,
                      limit: int = Query(100, ge=1, le=1000),
                      before: int | None = Query(None, ge=1, description="entries with seq < before")
                      ) -> list[AuditEntryOut]:
    """Newest first. The query has no tenant filter: the database shows only this tenant's rows."""
    tenant = tenant_of(principal)
    async with services.db.tenant(tenant.id, tenant.slug) as uow:
        rows = await uow.conn.execute(text(
            "SELECT seq, actor, action, target, detail, at, hash FROM platform.audit_log"
            " WHERE (CAST(:before AS bigint) IS NULL OR seq < :before)"
            " ORDER BY seq DESC LIMIT :limit"), {"before": before, "limit": limit})
        return [AuditEntryOut(**r._mapping) for r in rows]
