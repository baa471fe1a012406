"""A tenant's execution: orders to the paper broker, fills and expiries into the store.

`ExecutionEngine` holds the logic and is free of Ray; `ExecutionActor` is the thin actor
named ``execution`` in the tenant's namespace. Order of operations, so that nothing is
lost or doubled when the process dies at any point:

1. the order is written (NEW) before anything else; a client order id seen before
   returns the stored order (a retried call never trades twice);
2. the ACCEPTED transition is stored, then the broker sees the order;
3. each fill is stored with its order, position and cash changes in one transaction,
   keyed by a deterministic fill id, so a replayed bar cannot apply it twice.

On (re)start the engine rebuilds from the tenant schema: NEW orders (written, never
accepted) are accepted now, open orders go back to the broker with their fill counts.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from actors.store import TradingStore
from trading.broker import Expiry, PaperBroker
from trading.errors import NotFound
from trading.instruments import Bar, Instrument
from trading.orders import Fill, Order, OrderStatus

log = logging.getLogger(__name__)

Publish = Callable[[dict[str, Any]], Awaitable[None]]
Instruments = Callable[[], Awaitable[Mapping[str, Instrument]]]  # the instruments trading knows now


async def _no_publish(_event: dict[str, Any]) -> None:
    return None


def order_view(order: Order, account: str) -> dict[str, Any]:
    """A JSON-friendly view of an order for events and replies."""
    return {
        "client_order_id": order.client_order_id, "account": account, "bot_id": order.bot_id,
        "symbol": order.symbol, "side": order.side.value, "type": order.type.value,
        "quantity": str(order.quantity), "status": order.status.value,
        "filled_quantity": str(order.filled_quantity),
        "average_fill_price": None if order.average_fill_price is None
        else str(order.average_fill_price),
        "limit_price": None if order.limit_price is None else str(order.limit_price),
        "stop_price": None if order.stop_price is None else str(order.stop_price),
        "time_in_force": order.time_in_force.value, "reason": order.reason,
    }


class ExecutionEngine:
    """One tenant's order flow into the paper broker (see the module docstring)."""

    def __init__(self, store: TradingStore, broker: PaperBroker, *,
                 publish: Publish | None = None, instruments: Instruments | None = None) -> None:
        self._store = store
        self._broker = broker
        self._instruments = instruments
        self._publish = publish or _no_publish
        self._working: dict[str, tuple[Order, str]] = {}  # open orders: (order, account)
        self._last_bar: dict[str, Bar] = {}  # the latest bar seen per symbol
        self._lock = asyncio.Lock()  # one mutation of broker and store state at a time

    async def start(self) -> None:
        """Learn the instruments, then rebuild the broker's book from the store."""
        if self._instruments is not None:
            self._broker.add_instruments(await self._instruments())
        async with self._lock:
            restore: list[Order] = []
            counts: dict[str, int] = {}
            for stored, fills in await self._store.open_orders():
                order = stored.order
                if order.status is OrderStatus.NEW:
                    await self._accept(order, stored.account, source=stored.source)
                    continue
                self._working[order.client_order_id] = (order, stored.account)
                restore.append(order)
                counts[order.client_order_id] = fills
            self._broker.restore(restore, fills_so_far=counts)

    async def submit(self, order: Order, *, account: str, source: str,
                     bot_id: uuid.UUID | None = None) -> dict[str, Any]:
        """Write, accept and route an order; a known client order id returns its state.

        An order for an instrument the broker does not know (after asking for the current
        list once) is stored as rejected (``unknown_symbol``), never as accepted and stuck.
        """
        if not self._broker.knows(order.symbol) and self._instruments is not None:
            self._broker.add_instruments(await self._instruments())
        if not self._broker.knows(order.symbol):
            return await self.reject(order, account=account, source=source, reason="unknown_symbol",
                                     bot_id=bot_id)
        async with self._lock:
            stored = await self._store.submit(order, account=account, source=source,
                                              bot_id=bot_id, accept=True)
            current = stored.order
            if stored.created:  # written NEW → ACCEPTED in one transaction; now the broker
                self._route(current, stored.account, stored.source)
                await self._catch_up(current, stored.account,
                                     {"type": "order", "order": order_view(current, account)})
            elif current.status is OrderStatus.NEW:  # written before a crash, never accepted
                await self._accept(current, stored.account, source=stored.source)
            elif current.client_order_id in self._working:
                current = self._working[current.client_order_id][0]
            return order_view(current, stored.account) | {"created": stored.created}

    async def reject(self, order: Order, *, account: str, source: str, reason: str,
                     bot_id: uuid.UUID | None = None) -> dict[str, Any]:
        """Store an order that risk refused, as REJECTED with its reason code."""
        async with self._lock:
            stored = await self._store.submit(order, account=account, source=source,
                                              bot_id=bot_id)
            current = stored.order
            if current.status is OrderStatus.NEW:
                await self._store.transition(
                    current, current.transition(OrderStatus.REJECTED, reason=reason))
                await self._publish({"type": "order", "order": order_view(current, account)})
            return order_view(current, stored.account) | {"created": stored.created}

    async def _accept(self, order: Order, account: str, *, source: str = "bot") -> None:
        await self._store.transition(order, order.transition(OrderStatus.ACCEPTED))
        self._route(order, account, source)
        await self._catch_up(order, account, {"type": "order", "order": order_view(order, account)})

    async def _catch_up(self, order: Order, account: str, accepted: dict[str, Any]) -> None:
        """Work an order just routed on the bars that reached this engine before it did.

        A bot's order decided on bar k may arrive after bar k+1 (it came through strategy
        and risk; the bar came straight from the feed): it fills at k+1 as a backtest would,
        not at the next bar to arrive (`PaperBroker.catch_up`). The events (`accepted`
        first) are published once the fill is stored, in order.
        """
        events = [accepted]
        try:
            filled = await self._apply(self._broker.catch_up(order.client_order_id), events)
        finally:  # what was stored is told, even if a later write failed
            await self._publish_all(events)
        if filled:
            bar = self._last_bar[order.symbol]
            await self._store.snapshot(account, {bar.symbol: bar.close}, bar.ts)

    async def _publish_all(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            await self._publish(event)

    def _route(self, order: Order, account: str, source: str) -> None:
        self._working[order.client_order_id] = (order, account)
        self._broker.submit(order, self._submitted_at(order, source))

    def _submitted_at(self, order: Order, source: str) -> datetime:
        """The time the broker treats the order as placed: it fills from the next bar after.

        A bot's order carries the time of the bar it was decided on; any other order
        counts from the latest bar seen for its symbol (or now, before any bar).
        """
        if source == "bot":
            return order.created_at
        last = self._last_bar.get(order.symbol)
        return last.ts if last is not None else datetime.now(UTC)

    def open_count(self, account: str) -> int:
        """Open orders of one account (for the max_open_orders rule)."""
        return sum(1 for _, acct in self._working.values() if acct == account)

    async def cancel(self, client_order_id: str) -> dict[str, Any]:
        """Cancel an open order; a finished one is returned unchanged."""
        async with self._lock:
            if client_order_id not in self._working:
                stored = await self._store.get(client_order_id)  # NotFound if unknown
                return order_view(stored.order, stored.account)
            expiry = self._broker.cancel(client_order_id, datetime.now(UTC))
            order, account = self._working[client_order_id]
            if expiry is not None:
                events: list[dict[str, Any]] = []
                await self._end(expiry, events)  # one event, added once the change is stored
                await self._publish_all(events)
            return order_view(order, account)

    async def cancel_all(self) -> int:
        """Cancel every open order (the kill switch); return how many."""
        ids = list(self._working)
        for cid in ids:
            await self.cancel(cid)
        return len(ids)

    async def on_bars(self, bars: Iterable[Bar]) -> int:
        """Feed bars to the broker and store what happens; return the number of fills."""
        fills = 0
        traded: dict[str, int] = {}
        closes: dict[str, Decimal] = {}
        last: datetime | None = None
        events: list[dict[str, Any]] = []
        async with self._lock:
            try:
                for bar in bars:
                    seen = self._last_bar.get(bar.symbol)
                    if seen is None or bar.ts >= seen.ts:
                        self._last_bar[bar.symbol] = bar
                    closes[bar.symbol] = bar.close
                    last = bar.ts if last is None else max(last, bar.ts)
                    for account, n in (await self._apply(self._broker.on_bar(bar), events)).items():
                        traded[account] = traded.get(account, 0) + n
                        fills += n
            finally:  # what was stored is told, even if a later write failed
                await self._publish_all(events)
        # One P&L snapshot per account that traded in this batch, marked at the closes.
        for account in sorted(traded):
            assert last is not None
            await self._store.snapshot(account, closes, last)
        return fills

    async def _apply(self, updates: Iterable[Fill | Expiry], events: list[dict[str, Any]]
                     ) -> dict[str, int]:
        """Store the broker's fills and expiries, adding their events to `events` (published
        by the caller once all are stored); return the fills applied per account."""
        traded: dict[str, int] = {}
        for update in updates:
            if isinstance(update, Fill):
                entry = self._working.get(update.client_order_id)
                account = entry[1] if entry else ""
                if await self._fill(update, events):
                    traded[account] = traded.get(account, 0) + 1
            else:
                await self._end(update, events)
        return traded

    async def _fill(self, fill: Fill, events: list[dict[str, Any]]) -> int:
        entry = self._working.get(fill.client_order_id)
        if entry is None:
            raise NotFound(f"fill for unknown order {fill.client_order_id}")
        order, account = entry
        event = order.apply_fill(fill)
        result = await self._store.apply_fill(order, fill, event, account=account)
        if not order.is_open:
            del self._working[fill.client_order_id]
        if not result.applied:
            return 0
        assert result.position is not None
        events.append({
            "type": "fill", "account": account,
            "fill": {"fill_id": fill.fill_id, "client_order_id": fill.client_order_id,
                     "symbol": fill.symbol, "side": fill.side.value,
                     "quantity": str(fill.quantity), "price": str(fill.price),
                     "fee": str(fill.fee), "ts": fill.ts.isoformat()},
            "position": {"symbol": result.position.symbol,
                         "quantity": str(result.position.quantity),
                         "average_cost": str(result.position.average_cost),
                         "realized_pnl": str(result.position.realized_pnl)},
            "cash": str(result.cash), "order_open": order.is_open})
        events.append({"type": "order", "order": order_view(order, account)})
        return 1

    async def _end(self, expiry: Expiry, events: list[dict[str, Any]]) -> None:
        entry = self._working.pop(expiry.client_order_id, None)
        if entry is None:
            return
        order, account = entry
        event = order.transition(expiry.status, reason=expiry.reason, ts=expiry.ts)
        await self._store.transition(order, event)
        events.append({"type": "order", "order": order_view(order, account)})

    def open_order_ids(self) -> list[str]:
        return sorted(self._working)
