"""The tenant's risk limits and trading state: read (viewer), replace or set (admin).

The state is set here by hand, e.g. back to active after the kill switch or a daily-loss
halt. While the tenant's risk gate runs, the gate makes the change (it owns the state and
its counters); otherwise the stored row is changed. Either way the change and its audit
entry are one transaction.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from actors import queries
from serve.deps import AdminDep, ServicesDep, ViewerDep, tenant_of
from serve.schemas_trading import RiskOut, RiskPut, RiskStatePut
from trading.errors import Invalid
from trading.risk import RiskLimits, TradingState

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


@router.put("/risk/state", response_model=RiskOut)
async def put_risk_state(body: RiskStatePut, principal: AdminDep, services: ServicesDep
                         ) -> RiskOut:
    """Set the trading state by hand (audited as ``risk.state`` with the reason)."""
    from actors.calls import call

    tenant = tenant_of(principal)
    state = TradingState(body.state)
    gate = running_gate(tenant.slug)
    if gate is not None:
        return _out(await call(gate.set_state.remote(state.value, principal.actor, body.reason)))
    async with services.db.platform() as uow:
        settings = await queries.save_trading_state(
            uow.conn, tenant.id, tenant.slug, state, actor=principal.actor, reason=body.reason)
        await uow.commit()
    return _out(settings)


def running_gate(slug: str) -> Any | None:
    """The tenant's risk actor if it runs (none is created here)."""
    import ray

    from actors.tenant_runtime import RISK, tenant_namespace

    try:
        return ray.get_actor(RISK, namespace=tenant_namespace(slug))
    except ValueError:
        return None


async def reload_running_gate(slug: str) -> None:
    """Make a running risk actor apply the new limits now (none runs: nothing to do)."""
    from actors.calls import call

    gate = running_gate(slug)
    if gate is not None:
        await call(gate.reload.remote())
