"""Reads of the tenant's trading records: orders, fills, positions and P&L (viewer role).

Each read is one tenant unit of work: the database confines it to the caller's schema.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from fastapi import APIRouter, Query

from actors import queries
from serve.deps import ServicesDep, ViewerDep, tenant_of
from serve.schemas_trading import (
    AccountPnlOut,
    FillOut,
    OrderDetailOut,
    OrderOut,
    OrderStatusName,
    PositionOut,
)
from trading.errors import Invalid
from trading.instruments import validate_symbol

router = APIRouter(prefix="/v1", tags=["trading"])

_SINCE = Query(None, description="ISO datetime, inclusive (UTC when no offset is given)")
_UNTIL = Query(None, description="ISO datetime, exclusive (UTC when no offset is given)")
_LIMIT = Query(100, ge=1, le=1000)


def _window(since: datetime | None, until: datetime | None
            ) -> tuple[datetime | None, datetime | None]:
    since, until = (None if t is None else t if t.tzinfo else t.replace(tzinfo=UTC)
                    for t in (since, until))
    if since is not None and until is not None and until < since:
        raise Invalid("until must not be before since", field="until")
    return since, until


def _symbol(symbol: str | None) -> str | None:
    return None if symbol is None else validate_symbol(symbol, field="symbol")


@router.get("/orders", response_model=list[OrderOut])
async def list_orders(principal: ViewerDep, services: ServicesDep,
                      bot_id: uuid.UUID | None = None, symbol: str | None = None,
                      status: OrderStatusName | None = None,
                      since: datetime | None = _SINCE, until: datetime | None = _UNTIL,
                      limit: int = _LIMIT) -> list[OrderOut]:
    """Orders, newest first."""
    since, until = _window(since, until)
    tenant = tenant_of(principal)
    async with services.db.tenant(tenant.id, tenant.slug) as uow:
        rows = await queries.list_orders(uow.conn, bot_id=bot_id, symbol=_symbol(symbol),
                                         status=status, since=since, until=until, limit=limit)
    return [OrderOut.model_validate(r) for r in rows]


@router.get("/orders/{client_order_id}", response_model=OrderDetailOut)
async def get_order(client_order_id: str, principal: ViewerDep, services: ServicesDep
                    ) -> OrderDetailOut:
    """One order with its status changes, oldest first; another tenant's order is a 404."""
    tenant = tenant_of(principal)
    async with services.db.tenant(tenant.id, tenant.slug) as uow:
        row = await queries.get_order(uow.conn, client_order_id)
    return OrderDetailOut.model_validate(row)


@router.get("/fills", response_model=list[FillOut])
async def list_fills(principal: ViewerDep, services: ServicesDep,
                     bot_id: uuid.UUID | None = Query(None, description="fills of the bot's account"),
                     symbol: str | None = None,
                     since: datetime | None = _SINCE, until: datetime | None = _UNTIL,
                     limit: int = _LIMIT) -> list[FillOut]:
    """Fills, newest first."""
    since, until = _window(since, until)
    tenant = tenant_of(principal)
    async with services.db.tenant(tenant.id, tenant.slug) as uow:
        rows = await queries.list_fills(uow.conn, bot_id=bot_id, symbol=_symbol(symbol),
                                        since=since, until=until, limit=limit)
    return [FillOut.model_validate(r) for r in rows]


@router.get("/positions", response_model=list[PositionOut])
async def list_positions(principal: ViewerDep, services: ServicesDep) -> list[PositionOut]:
    """Every non-flat position: the platform's books, and each local agent's latest report
    (``source: agent``)."""
    tenant = tenant_of(principal)
    async with services.db.tenant(tenant.id, tenant.slug) as uow:
        rows = await queries.list_positions(uow.conn)
    return [PositionOut.model_validate(r) for r in rows]


@router.get("/pnl", response_model=list[AccountPnlOut])
async def account_pnl(principal: ViewerDep, services: ServicesDep) -> list[AccountPnlOut]:
    """Each account's cash and fees with its latest P&L snapshot; agents' accounts too."""
    tenant = tenant_of(principal)
    async with services.db.tenant(tenant.id, tenant.slug) as uow:
        rows = await queries.account_pnl(uow.conn)
    return [AccountPnlOut.model_validate(r) for r in rows]
