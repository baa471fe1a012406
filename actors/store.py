"""The trading runtime's truth in the tenant schema: orders, events, fills, positions, cash.

Every method is one tenant unit of work (the tenant's role and schema, see
`tenancy.db.Database.tenant`). The rules that make retries and restarts safe:

* an order is written (status NEW, with its first event) before any broker sees it, and a
  client order id that is already stored returns the stored order instead of a new one;
* a status change updates the row only from the status it was read in (a stale writer
  gets `IllegalTransition`) and adds an event row;
* a fill is inserted with its unique id together with the order, position, cash and
  event it changes, in one transaction; a fill id already stored changes nothing.
"""

from __future__ import annotations

import functools
import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tenancy.db import DriverWork, TenantScoped
from trading.errors import NotFound
from trading.orders import (
    Fill,
    IllegalTransition,
    Order,
    OrderEvent,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from trading.portfolio import Portfolio, Position

_ORDER_COLUMNS = ("id, client_order_id, account, bot_id, symbol, side, type, quantity, limit_price,"
                  " stop_price, time_in_force, status, filled_quantity, average_fill_price, fees,"
                  " triggered, reason, source, created_at")


@dataclass(frozen=True)
class StoredOrder:
    """An order as stored; `created` is False when the client order id already existed."""

    id: uuid.UUID
    order: Order
    account: str
    source: str
    created: bool = True


@dataclass(frozen=True)
class FillResult:
    """What one applied fill changed (None fields when the fill was a duplicate)."""

    applied: bool
    position: Position | None = None
    cash: Decimal | None = None
    fees: Decimal | None = None


def order_from_row(row: Any) -> Order:
    return Order(
        client_order_id=row.client_order_id, symbol=row.symbol, side=Side(row.side),
        type=OrderType(row.type), quantity=row.quantity, limit_price=row.limit_price,
        stop_price=row.stop_price, time_in_force=TimeInForce(row.time_in_force),
        bot_id=str(row.bot_id) if row.bot_id else None, status=OrderStatus(row.status),
        filled_quantity=row.filled_quantity, average_fill_price=row.average_fill_price,
        fees=row.fees, created_at=row.created_at, triggered=row.triggered, reason=row.reason)


_LOCK_FOR_FILL = (
    "WITH o AS (SELECT id FROM orders WHERE client_order_id = $1 FOR UPDATE),"
    " p AS (SELECT quantity, average_cost, realized_pnl FROM positions"
    " WHERE account = $2 AND symbol = $3 FOR UPDATE)"
    " SELECT o.id, p.quantity, p.average_cost, p.realized_pnl FROM o LEFT JOIN p ON true")

# $1 fill id, $2 order id, $3 account, $4 symbol, $5 side, $6 quantity, $7 price, $8 fee,
# $9 at, $10 the order's new status, $11 its average fill price, $12/$13 the event's
# from/to status, $14-$16 the position's quantity, average cost and realised P&L after,
# $17 the cash flow (notional * sign + fee).
_APPLY_FILL = (
    "WITH f AS (INSERT INTO fills (fill_id, order_id, account, symbol, side, quantity, price,"
    " fee, at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    " ON CONFLICT (fill_id) DO NOTHING RETURNING fill_id),"
    " u AS (UPDATE orders SET status = $10, filled_quantity = filled_quantity + $6,"
    " average_fill_price = $11, fees = fees + $8, updated_at = now(), version = version + 1"
    " WHERE id = $2 AND EXISTS (SELECT FROM f)),"
    " e AS (INSERT INTO order_events (order_id, from_status, to_status, at)"
    " SELECT $2, $12::text, $13::text, $9 FROM f),"
    " pos AS (INSERT INTO positions (account, symbol, quantity, average_cost, realized_pnl)"
    " SELECT $3, $4, $14::numeric, $15::numeric, $16::numeric FROM f"
    " ON CONFLICT (account, symbol) DO UPDATE SET quantity = EXCLUDED.quantity,"
    " average_cost = EXCLUDED.average_cost, realized_pnl = EXCLUDED.realized_pnl,"
    " updated_at = now())"
    " UPDATE accounts SET cash = cash - $17, fees = fees + $8, updated_at = now()"
    " WHERE account = $3 AND EXISTS (SELECT FROM f) RETURNING cash, fees")


@functools.cache
def _submit_sql(events: int) -> str:
    """Insert an order (14 parameters) and, only when it is new, its `events` events."""
    rows = ", ".join(f"({i}, ${15 + 3 * i}::text, ${16 + 3 * i}::text, ${17 + 3 * i}::timestamptz)"
                     for i in range(events))
    return (
        "WITH o AS (INSERT INTO orders (id, client_order_id, account, bot_id, symbol, side, type,"
        " quantity, limit_price, stop_price, time_in_force, status, source, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
        " ON CONFLICT (client_order_id) DO NOTHING RETURNING id),"
        " e AS (INSERT INTO order_events (order_id, from_status, to_status, at)"
        f" SELECT o.id, v.f, v.t, v.at FROM o, (VALUES {rows}) AS v(n, f, t, at) ORDER BY v.n)"
        " SELECT id FROM o")


class TradingStore(TenantScoped):
    """Persistence of one tenant's trading state.

    `submit` and `apply_fill`, the two writes of every bot order, run on the driver's
    connection (`Database.tenant_driver`); the rest through SQLAlchemy.
    """

    def _driver(self) -> AbstractAsyncContextManager[DriverWork]:
        return self._db.tenant_driver(self._tenant_id, self._slug)

    async def open_account(self, account: str, cash: Decimal) -> None:
        """Create a paper account with starting cash unless it exists."""
        async with self._uow() as uow:
            await uow.conn.execute(text(
                "INSERT INTO accounts (account, cash) VALUES (:a, :c) ON CONFLICT DO NOTHING"),
                {"a": account, "c": cash})
            await uow.commit()

    async def submit(self, order: Order, *, account: str, source: str,
                     bot_id: uuid.UUID | None = None, accept: bool = False) -> StoredOrder:
        """Write a NEW order and its first event; a known client order id returns the stored one.

        With `accept` the order is also moved to ACCEPTED (both events stored) in the same
        transaction: still written before any broker sees it, with one commit instead of two.
        """
        if order.status is not OrderStatus.NEW:
            raise IllegalTransition("only NEW orders are submitted", field="status")
        order = order.copy()
        accepted = order.transition(OrderStatus.ACCEPTED) if accept else None
        events: list[tuple[OrderStatus | None, OrderStatus, datetime]] = [
            (None, OrderStatus.NEW, order.created_at)]
        if accepted is not None:
            events.append((accepted.from_status, accepted.to_status, accepted.ts))
        args: list[Any] = [
            uuid.uuid4(), order.client_order_id, account, bot_id, order.symbol, order.side.value,
            order.type.value, order.quantity, order.limit_price, order.stop_price,
            order.time_in_force.value, order.status.value, source, order.created_at]
        for from_status, to_status, at in events:
            args += [from_status.value if from_status else None, to_status.value, at]
        async with self._driver() as work:
            # One statement: the order and its events, or nothing when the id is known.
            order_id = await work.conn.fetchval(_submit_sql(len(events)), *args)
            if order_id is not None:
                await work.commit()
        if order_id is None:  # the id was known: its order is committed (a retry, a race)
            return await self.get(order.client_order_id)
        return StoredOrder(order_id, order, account, source)

    async def transition(self, order: Order, event: OrderEvent) -> None:
        """Store a status change made with `Order.transition` (not a fill)."""
        async with self._uow() as uow:
            order_id = (await uow.conn.execute(text(
                "UPDATE orders SET status = :to, reason = coalesce(:r, reason),"
                " triggered = :trig, updated_at = now(), version = version + 1"
                " WHERE client_order_id = :c AND status = :from RETURNING id"),
                {"to": event.to_status.value, "r": event.reason, "trig": order.triggered,
                 "c": order.client_order_id,
                 "from": event.from_status.value if event.from_status else None}
            )).scalar_one_or_none()
            if order_id is None:
                raise IllegalTransition(f"order {order.client_order_id} is no longer "
                                        f"{event.from_status}", field="status")
            await _event(uow.conn, order_id, event.from_status, event.to_status, event.reason,
                         event.ts)
            await uow.commit()

    async def apply_fill(self, order: Order, fill: Fill, event: OrderEvent, *,
                         account: str) -> FillResult:
        """Store a fill with its order, position, cash and event changes, once.

        `order` and `event` are the caller's state after `Order.apply_fill`.
        """
        async with self._driver() as work:
            c = work.conn
            # The order and the position are locked and read in one statement ...
            row = await c.fetchrow(_LOCK_FOR_FILL, fill.client_order_id, account, fill.symbol)
            if row is None:
                raise NotFound(f"no order {fill.client_order_id}", field="client_order_id")
            order_id = row["id"]
            before = (Position(fill.symbol, row["quantity"], row["average_cost"],
                               row["realized_pnl"])
                      if row["quantity"] is not None else Position(fill.symbol))
            after = before.apply(fill.quantity * fill.side.sign, fill.price)
            # ... and changed in one: every part but the fill insert reads `f`, so a fill id
            # already stored changes nothing and returns no row.
            changed = await c.fetchrow(
                _APPLY_FILL, fill.fill_id, order_id, account, fill.symbol, fill.side.value,
                fill.quantity, fill.price, fill.fee, fill.ts, order.status.value,
                order.average_fill_price,
                event.from_status.value if event.from_status else None, event.to_status.value,
                after.quantity, after.average_cost, after.realized_pnl,
                fill.notional * fill.side.sign + fill.fee)
            if changed is None:
                return FillResult(applied=False)
            cash, fees = changed["cash"], changed["fees"]
            await work.commit()
        return FillResult(True, after, cash, fees)

    async def snapshot(self, account: str, prices: dict[str, Decimal], at: datetime) -> None:
        """Store a P&L snapshot of an account, marking positions at `prices` (else cost)."""
        async with self._uow() as uow:
            c = uow.conn
            acct = (await c.execute(text("SELECT cash, fees FROM accounts WHERE account = :a"),
                                    {"a": account})).first()
            if acct is None:
                return
            rows = (await c.execute(text(
                "SELECT symbol, quantity, average_cost, realized_pnl FROM positions"
                " WHERE account = :a"), {"a": account})).all()
            portfolio = Portfolio.restore(acct.cash, [Position(*r) for r in rows], acct.fees)
            for symbol, price in prices.items():
                if portfolio.position(symbol).quantity:
                    portfolio.mark(symbol, price)
            snap = portfolio.snapshot(at)
            await c.execute(text(
                "INSERT INTO pnl_snapshots (account, at, cash, equity, realized_pnl,"
                " unrealized_pnl, fees, gross_exposure, net_exposure) VALUES"
                " (:a, :at, :cash, :eq, :r, :u, :f, :g, :n)"),
                {"a": account, "at": at, "cash": snap.cash, "eq": snap.equity,
                 "r": snap.realized_pnl, "u": snap.unrealized_pnl, "f": snap.fees,
                 "g": snap.gross_exposure, "n": snap.net_exposure})
            await uow.commit()

    async def get(self, client_order_id: str) -> StoredOrder:
        async with self._uow() as uow:
            order_id, order, account, source = await self._load(uow.conn, client_order_id)
        return StoredOrder(order_id, order, account, source, created=False)

    async def open_orders(self) -> list[tuple[StoredOrder, int]]:
        """Open orders (oldest first) with the number of fills each already has."""
        async with self._uow() as uow:
            rows = (await uow.conn.execute(text(
                f"SELECT {_ORDER_COLUMNS}, (SELECT count(*) FROM fills f WHERE f.order_id = o.id)"
                " AS fill_count FROM orders o WHERE status IN ('new', 'accepted', 'partially_filled')"
                " ORDER BY created_at, client_order_id"))).all()
        return [(StoredOrder(r.id, order_from_row(r), r.account, r.source, created=False),
                 int(r.fill_count)) for r in rows]

    async def portfolio(self, account: str) -> Portfolio:
        """Rebuild an account's portfolio from its stored cash, fees and positions."""
        async with self._uow() as uow:
            acct = (await uow.conn.execute(text(
                "SELECT cash, fees FROM accounts WHERE account = :a"), {"a": account})).first()
            if acct is None:
                raise NotFound(f"no account {account}", field="account")
            rows = (await uow.conn.execute(text(
                "SELECT symbol, quantity, average_cost, realized_pnl FROM positions"
                " WHERE account = :a"), {"a": account})).all()
        return Portfolio.restore(acct.cash, [Position(*r) for r in rows], acct.fees)

    async def _load(self, conn: AsyncConnection, client_order_id: str
                    ) -> tuple[uuid.UUID, Order, str, str]:
        row = (await conn.execute(text(
            f"SELECT {_ORDER_COLUMNS} FROM orders WHERE client_order_id = :c"),
            {"c": client_order_id})).first()
        if row is None:
            raise NotFound(f"no order {client_order_id}", field="client_order_id")
        return row.id, order_from_row(row), row.account, row.source


async def _event(conn: AsyncConnection, order_id: uuid.UUID, from_status: OrderStatus | None,
                 to_status: OrderStatus, reason: str | None, at: datetime) -> None:
    await conn.execute(text(
        "INSERT INTO order_events (order_id, from_status, to_status, reason, at)"
        " VALUES (:o, :f, :t, :r, :at)"),
        {"o": order_id, "f": from_status.value if from_status else None, "t": to_status.value,
         "r": reason, "at": at})
