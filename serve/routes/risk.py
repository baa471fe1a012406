"""The tenant's risk limits: read (viewer) and replace (admin). The trading state is not set here."""

from __future__ import annotations

from fastapi import APIRouter

from actors import queries
from serve.deps import AdminDep, ServicesDep, ViewerDep, tenant_of
from serve.schemas_trading import RiskOut, RiskPut
from trading.errors import Invalid
from trading.risk import RiskLimits

router = APIRouter(prefix="/v1", tags=["risk"])


def _out(settings: queries.RiskSettings) -> RiskOut:
    return RiskOut(limits=settings.limits.to_dict(), state=settings.state.value,
                   updated_at=settings.updated_at, version=settings.version)


def _limits(data: dict[str, object]) -> RiskLimits:
    """Validate the body's limits; errors name the key as ``limits.<key>``."""
    try:
        return RiskLimits.from_dict(data)
    except Invalid as exc:
        field = "limits" if exc.field in (None, "limits") else f"limits.{exc.field}"
        raise Invalid(exc.message, code=exc.code, field=field) from None


@router.get("/risk", response_model=RiskOut)
async def get_risk(principal: ViewerDep, services: ServicesDep) -> RiskOut:
    """The limits in force (null: no limit), the trading state and the version."""
    tenant = tenant_of(principal)
    async with services.db.tenant(tenant.id, tenant.slug) as uow:
        return _out(await queries.get_risk(uow.conn))


@router.put("/risk", response_model=RiskOut)
async def put_risk(body: RiskPut, principal: AdminDep, services: ServicesDep) -> RiskOut:
    """Replace every limit (those left out become none); `version` guards concurrent edits."""
    limits = _limits(body.limits)
    tenant = tenant_of(principal)
    async with services.db.tenant(tenant.id, tenant.slug) as uow:
        settings = await queries.put_risk_limits(uow.conn, limits, body.version)
        await uow.commit()
    await reload_running_gate(tenant.slug)
    return _out(settings)


async def reload_running_gate(slug: str) -> None:
    """Make a running risk actor apply the new limits now (none runs: nothing to do)."""
    import ray

    from actors.calls import call
    from actors.tenant_runtime import RISK, tenant_namespace

    try:
        gate = ray.get_actor(RISK, namespace=tenant_namespace(slug))
    except ValueError:
        return
    await call(gate.reload.remote())
