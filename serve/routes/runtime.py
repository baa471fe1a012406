"""Commands to the trading runtime: start/stop bots, place/cancel orders, kill switch.

Reads stay in the ingress (tenant units of work); only these commands reach actors.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any, Literal

from fastapi import APIRouter, Response
from fastapi import Request as FastRequest
from pydantic import Field

from actors import package_bots, supervisor
from actors.bots import BotStore
from actors.calls import call
from actors.execution import order_view
from actors.market import known_instruments
from actors.placement import tenant_resources
from actors.store import TradingStore
from actors.tenant_runtime import execution_actor, risk_actor
from serve.deps import AdminDep, ServicesDep, TraderDep, tenant_of
from serve.schemas import Request
from serve.schemas_trading import BotOut
from tenancy.plans import get_plan
from trading.errors import Conflict
from trading.orders import Order

router = APIRouter(prefix="/v1", tags=["runtime"])

MANUAL_ACCOUNT = "manual"
MANUAL_CASH = Decimal(1_000_000)


class OrderCreate(Request):
    client_order_id: str | None = Field(
        default=None, description="your id for this order; a retry with the same id returns "
                                  "the first result instead of trading again")
    symbol: str
    side: Literal["buy", "sell"]
    type: Literal["market", "limit", "stop", "stop_limit"] = "market"
    quantity: str | float | int
    limit_price: str | float | int | None = None
    stop_price: str | float | int | None = None
    time_in_force: Literal["gtc", "ioc", "day"] = "gtc"


class KillSwitch(Request):
    reason: str = Field(default="kill switch from the API", max_length=500)


@router.post("/bots/{bot_id}/start", response_model=BotOut)
async def start_bot(bot_id: str, request: FastRequest, principal: TraderDep, services: ServicesDep
                    ) -> BotOut:
    """Admit the bot against the plan (403 quota_exceeded) and start its actors.

    A bot of an uploaded package starts as a Ray job (``starting`` until its strategy's
    actor is ready; see docs/research.md).
    """
    tenant = tenant_of(principal)
    async with services.db.platform() as uow:
        plan = await get_plan(uow.conn, tenant.plan)
    bot = await BotStore(services.db, tenant.id, tenant.slug).get(bot_id)
    if bot.package is not None:
        settings = services.settings
        return BotOut.of(await package_bots.start_package_bot(
            settings, services.db, tenant.id, tenant.slug, plan, bot.id, jobs=services.jobs,
            api_url=settings.internal_api_url or str(request.base_url),
            token_for=lambda job_id: services.auth.job_token(job_id, tenant.id, settings.job_max_seconds),
            actor=principal.actor))
    return BotOut.of(await supervisor.start_bot(services.settings, services.db, tenant.id,
                                                tenant.slug, plan, bot_id))


@router.post("/bots/{bot_id}/stop", response_model=BotOut)
async def stop_bot(bot_id: str, principal: TraderDep, services: ServicesDep) -> BotOut:
    tenant = tenant_of(principal)
    bot = await BotStore(services.db, tenant.id, tenant.slug).get(bot_id)
    if bot.package is not None:
        return BotOut.of(await package_bots.stop_package_bot(
            services.settings, services.db, tenant.id, tenant.slug, bot.id, services.jobs, principal.actor))
    return BotOut.of(await supervisor.stop_bot(services.settings, services.db, tenant.id,
                                               tenant.slug, bot_id))


@router.post("/orders", status_code=201)
async def place_order(body: OrderCreate, principal: TraderDep, services: ServicesDep,
                      response: Response) -> dict[str, Any]:
    """Place a manual order through risk and execution (idempotent on client_order_id).

    201 when created, 200 when the client order id was seen before (the first result),
    409 with the risk reason code when the risk gate refuses it (it is stored as rejected).
    """
    tenant = tenant_of(principal)
    order = Order.new(client_order_id=body.client_order_id or f"m-{uuid.uuid4().hex}",
                      symbol=body.symbol, side=body.side, type=body.type, quantity=body.quantity,
                      limit_price=body.limit_price, stop_price=body.stop_price,
                      time_in_force=body.time_in_force)
    instrument = (await known_instruments(services.db, [order.symbol], field="symbol"))[order.symbol]
    instrument.check_order(order.quantity, order.limit_price or order.stop_price)
    await TradingStore(services.db, tenant.id, tenant.slug).open_account(MANUAL_ACCOUNT,
                                                                         MANUAL_CASH)
    resources = tenant_resources(tenant.worker_group)
    execution = execution_actor(services.settings, tenant.id, tenant.slug, resources)
    await supervisor.subscribe_execution(services.settings, tenant.slug, execution, [order.symbol])
    risk = risk_actor(services.settings, tenant.id, tenant.slug, resources)
    reply: dict[str, Any] = await call(risk.submit.remote(order, MANUAL_ACCOUNT, "manual", None))
    if not reply.pop("created"):
        response.status_code = 200
        return reply
    verdict = reply.get("risk") or {}
    if not verdict.get("accepted", True):
        raise Conflict(str(verdict.get("message")), code=str(verdict.get("reason")))
    return reply


@router.delete("/orders/{client_order_id}")
async def cancel_order(client_order_id: str, principal: TraderDep, services: ServicesDep
                       ) -> dict[str, Any]:
    """Cancel an open order; a finished one comes back unchanged; another tenant's is 404."""
    tenant = tenant_of(principal)
    stored = await TradingStore(services.db, tenant.id, tenant.slug).get(client_order_id)
    if not stored.order.is_open:
        return order_view(stored.order, stored.account)
    execution = execution_actor(services.settings, tenant.id, tenant.slug,
                                tenant_resources(tenant.worker_group))
    result: dict[str, Any] = await call(execution.cancel.remote(client_order_id))
    return result


@router.post("/kill-switch")
async def kill_switch(body: KillSwitch, principal: AdminDep, services: ServicesDep
                      ) -> dict[str, Any]:
    """Halt trading, cancel every open order and stop every bot of the tenant."""
    tenant = tenant_of(principal)
    risk = risk_actor(services.settings, tenant.id, tenant.slug, tenant_resources(tenant.worker_group))
    result: dict[str, Any] = await call(risk.kill_switch.remote(body.reason, principal.actor))
    return result
