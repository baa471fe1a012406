"""A tenant's pre-trade risk gate: every order passes here on its way to execution.

`RiskGate` is free of Ray: it keeps the view the rules need (positions and cash per
paper account, last prices), asks `trading.risk.RiskEngine` for a decision, and sends
the order to execution either to be worked or to be stored as REJECTED with the reason
code. Fills reported back by execution update the view and the equity, which can halt
trading (daily loss) or fire the kill switch (drawdown): open orders are canceled and
the tenant's bots are stopped. Limits, state and the engine's counters live in the
tenant's ``risk_settings`` row, so a restarted gate resumes where it was.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import text

from actors.queries import RiskSettings, save_trading_state
from tenancy.db import Database
from trading.orders import Order
from trading.risk import RiskEngine, RiskEvent, RiskLimits, TradingState

Publish = Callable[[dict[str, Any]], Awaitable[None]]


class ExecutionPort(Protocol):
    async def submit(self, order: Order, account: str, source: str,
                     bot_id: str | None = None) -> dict[str, Any]: ...

    async def reject(self, order: Order, account: str, source: str, reason: str,
                     bot_id: str | None = None) -> dict[str, Any]: ...

    async def cancel_all(self) -> int: ...

    async def open_count(self, account: str) -> int: ...


async def _nothing(_event: dict[str, Any]) -> None:
    return None


class RiskGate:
    """One tenant's risk state and decisions (see the module docstring)."""

    def __init__(self, db: Database, tenant_id: uuid.UUID, slug: str, execution: ExecutionPort,
                 *, publish: Publish | None = None,
                 stop_bots: Callable[[str], Awaitable[None]] | None = None) -> None:
        self._db = db
        self._tenant_id = tenant_id
        self._slug = slug
        self._execution = execution
        self._publish = publish or _nothing
        self._stop_bots = stop_bots
        self._engine = RiskEngine(RiskLimits())
        self._positions: dict[str, dict[str, Decimal]] = defaultdict(dict)
        self._cash: dict[str, Decimal] = {}
        self._last: dict[str, Decimal] = {}
        self._account_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    @property
    def state(self) -> TradingState:
        return self._engine.state

    async def start(self) -> None:
        """Load limits, state and the account view from the tenant schema."""
        await self.reload()
        async with self._db.tenant(self._tenant_id, self._slug) as uow:
            for account, cash in (await uow.conn.execute(text(
                    "SELECT account, cash FROM accounts"))).all():
                self._cash[account] = cash
            for account, symbol, qty in (await uow.conn.execute(text(
                    "SELECT account, symbol, quantity FROM positions"))).all():
                self._positions[account][symbol] = qty
            for symbol, close in (await uow.conn.execute(text(
                    "SELECT DISTINCT ON (symbol) symbol, close FROM market.bars"
                    " ORDER BY symbol, ts DESC"))).all():
                self._last[symbol] = close

    async def reload(self) -> None:
        """Read limits, state and counters again (after `PUT /v1/risk`)."""
        async with self._db.tenant(self._tenant_id, self._slug) as uow:
            row = (await uow.conn.execute(text(
                "SELECT limits, state, engine FROM risk_settings WHERE id = 1"))).one()
        limits = RiskLimits.from_dict(row.limits or {})
        if row.engine:
            self._engine = RiskEngine.restore(limits, row.engine)
        else:
            self._engine = RiskEngine(limits, TradingState(row.state))
        if self._engine.state.value != row.state:
            self._engine.set_state(TradingState(row.state), datetime.now(UTC))

    async def _save(self) -> None:
        async with self._db.tenant(self._tenant_id, self._slug) as uow:
            await uow.conn.execute(text(
                "UPDATE risk_settings SET state = :s, engine = CAST(:e AS jsonb),"
                " updated_at = now() WHERE id = 1"),
                {"s": self._engine.state.value, "e": json.dumps(self._engine.snapshot())})
            await uow.commit()

    def _gross(self) -> Decimal:
        return sum((abs(q) * self._last.get(s, Decimal(0))
                    for acct in self._positions.values() for s, q in acct.items()), Decimal(0))

    def _equity(self) -> Decimal:
        marked = sum((q * self._last.get(s, Decimal(0))
                      for acct in self._positions.values() for s, q in acct.items()), Decimal(0))
        return sum(self._cash.values(), Decimal(0)) + marked

    async def submit(self, order: Order, *, account: str, source: str,
                     bot_id: str | None = None, last_price: Decimal | None = None
                     ) -> dict[str, Any]:
        """Check an order; route it to execution, or have it stored as rejected.

        Under a `max_open_orders` limit, the count, the check and the routing of one
        account's orders run one at a time: orders sent at once cannot all pass on the
        same count.
        """
        if last_price is not None:
            self._last[order.symbol] = last_price
        if self._engine.limits.max_open_orders is None:
            return await self._decide(order, account, source, bot_id, open_orders=0)
        async with self._account_locks[account]:
            open_orders = await self._execution.open_count(account)
            return await self._decide(order, account, source, bot_id, open_orders=open_orders)

    async def _decide(self, order: Order, account: str, source: str, bot_id: str | None, *,
                      open_orders: int) -> dict[str, Any]:
        decision = self._engine.check(
            order, position=self._positions[account].get(order.symbol, Decimal(0)),
            gross_exposure=self._gross(), open_orders=open_orders,
            last_price=self._last.get(order.symbol), now=datetime.now(UTC))
        if decision.accepted:
            reply = await self._execution.submit(order, account, source, bot_id)
            return reply | {"risk": decision.to_dict()}
        assert decision.reason is not None
        reply = await self._execution.reject(order, account, source, decision.reason.value,
                                             bot_id)
        await self._publish({"type": "risk", "event": "order_rejected",
                             "reason": decision.reason.value, "message": decision.message,
                             "client_order_id": order.client_order_id})
        return reply | {"risk": decision.to_dict()}

    async def on_fill(self, account: str, symbol: str, quantity: Decimal, cash: Decimal,
                      price: Decimal) -> list[RiskEvent]:
        """Take a fill's new position and cash; react to the equity that results."""
        self._positions[account][symbol] = quantity
        self._cash[account] = cash
        self._last[symbol] = price
        return await self._on_equity()

    async def mark(self, prices: dict[str, Decimal]) -> list[RiskEvent]:
        """Take last prices (from bars); react to the equity that results."""
        self._last.update(prices)
        return await self._on_equity()

    async def _on_equity(self) -> list[RiskEvent]:
        before = self._engine.state
        events = self._engine.on_equity(self._equity(), datetime.now(UTC))
        for event in events:
            await self._publish({"type": "risk", **event.to_dict()})
            if event.kind == "kill_switch":
                await self._kill(event.message)
        if events or self._engine.state is not before:
            await self._save()
        return events

    async def kill_switch(self, reason: str, actor: str = "risk") -> dict[str, Any]:
        """Halt trading, cancel every open order and stop the tenant's bots (audited)."""
        event = self._engine.set_state(TradingState.HALTED, datetime.now(UTC))
        await self._publish({"type": "risk", **event.to_dict(), "kind": "kill_switch",
                             "message": reason, "by": actor})
        canceled = await self._kill(reason)
        async with self._db.platform() as uow:
            await save_trading_state(uow.conn, self._tenant_id, self._slug, self._engine.state,
                                     actor=actor, reason=reason, engine=self._engine.snapshot(),
                                     action="risk.kill_switch")
            await uow.commit()
        return {"state": self._engine.state.value, "canceled": canceled}

    async def _kill(self, reason: str) -> int:
        canceled = await self._execution.cancel_all()
        if self._stop_bots is not None:
            await self._stop_bots(reason)
        return canceled

    async def set_state(self, state: TradingState, *, actor: str, reason: str
                        ) -> RiskSettings:
        """Set the trading state by hand (audited); leaving HALTED re-arms the triggers."""
        event = self._engine.set_state(state, datetime.now(UTC))
        async with self._db.platform() as uow:
            settings = await save_trading_state(
                uow.conn, self._tenant_id, self._slug, state, actor=actor, reason=reason,
                engine=self._engine.snapshot())
            await uow.commit()
        await self._publish({"type": "risk", **event.to_dict(), "by": actor, "reason": reason})
        return settings
