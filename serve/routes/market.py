"""Shared market data, read under the tenant's role (tenants may read `market`, never write)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Query

from actors.market import list_instruments, read_bars
from serve.deps import ServicesDep, ViewerDep, tenant_of
from serve.schemas_market import BarOut, InstrumentOut
from trading.errors import Invalid

router = APIRouter(prefix="/v1/market", tags=["market"])


def _utc(value: datetime | None) -> datetime | None:
    """Naive means UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@router.get("/instruments", response_model=list[InstrumentOut])
async def instruments(principal: ViewerDep, services: ServicesDep) -> list[InstrumentOut]:
    """Every tradable instrument, by symbol."""
    tenant = tenant_of(principal)
    async with services.db.tenant(tenant.id, tenant.slug) as uow:
        return [InstrumentOut.of(i) for i in await list_instruments(uow.conn)]


@router.get("/bars", response_model=list[BarOut])
async def bars(principal: ViewerDep, services: ServicesDep,
               symbol: str = Query(..., min_length=1, max_length=32),
               start: datetime | None = Query(
                   None, description="inclusive, ISO-8601 (naive means UTC); without it, the "
                                     "latest bars before end"),
               end: datetime | None = Query(None, description="exclusive, ISO-8601"),
               limit: int = Query(500, ge=1, le=5000)) -> list[BarOut]:
    """The symbol's bars with start <= ts < end, oldest first, at most `limit`."""
    lo, hi = _utc(start), _utc(end)
    if lo is not None and hi is not None and lo >= hi:
        raise Invalid("end must be after start", field="end")
    tenant = tenant_of(principal)
    async with services.db.tenant(tenant.id, tenant.slug) as uow:
        return [BarOut.of(b) for b in await read_bars(uow.conn, symbol, lo, hi, limit)]
