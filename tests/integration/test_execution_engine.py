"""The execution engine on real PostgreSQL: an order that arrives after its next bar.

A bot's order decided on bar k travels strategy → risk → execution while bar k+1 comes
straight from the feed, so execution may hold k+1 before the order arrives. The order must
fill at k+1's open, as a backtest fills it, and in the same call, not at the next bar.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text

from actors.execution import ExecutionEngine
from actors.store import TradingStore
from tenancy.db import Database
from tests.conftest import TenantFactory
from trading.broker import PaperBroker
from trading.data import DEFAULT_INSTRUMENTS
from trading.instruments import Bar
from trading.orders import Order

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)
D = Decimal


def _bar(i: int, open_: str) -> Bar:
    px = D(open_)
    return Bar("BTC-USD", T0 + i * MIN, px, px + 5, px - 5, px + 1, D(10))


async def _engine(db: Database, make_tenant: TenantFactory, recent_bars: int
                  ) -> tuple[ExecutionEngine, TradingStore, list[dict[str, Any]]]:
    t = (await make_tenant()).tenant
    store = TradingStore(db, t.id, t.slug)
    await store.open_account("manual", D(100_000))
    events: list[dict[str, Any]] = []

    async def publish(event: dict[str, Any]) -> None:
        events.append(event)

    engine = ExecutionEngine(store, PaperBroker(DEFAULT_INSTRUMENTS, recent_bars=recent_bars),
                             publish=publish)
    await engine.start()
    return engine, store, events


def _order(cid: str, at: datetime) -> Order:
    return Order.new(client_order_id=cid, symbol="BTC-USD", side="buy", type="market",
                     quantity="0.5", created_at=at)


async def _stored(db: Database, store: TradingStore) -> tuple[list[tuple[Any, ...]], int]:
    async with db.tenant(store._tenant_id, store._slug) as uow:
        fills = [tuple(r) for r in (await uow.conn.execute(text(
            "SELECT fill_id, price, at FROM fills ORDER BY at"))).all()]
        snapshots = (await uow.conn.execute(text("SELECT count(*) FROM pnl_snapshots"))).scalar_one()
    return fills, snapshots


async def test_an_order_arriving_after_its_next_bar_fills_at_that_bar_in_the_same_call(
        db: Database, make_tenant: TenantFactory) -> None:
    engine, store, events = await _engine(db, make_tenant, recent_bars=4)
    await engine.on_bars([_bar(0, "60000")])  # the decision bar k
    await engine.on_bars([_bar(1, "60100")])  # k+1 arrives before the order
    reply = await engine.submit(_order("late", T0), account="manual", source="bot")
    assert (reply["status"], reply["average_fill_price"]) == ("filled", "60100")
    fills, snapshots = await _stored(db, store)
    assert fills == [("late:1", D(60100), T0 + MIN)] and snapshots == 1
    kinds = [(e["type"], e.get("order", {}).get("status")) for e in events]
    assert kinds == [("order", "accepted"), ("fill", None), ("order", "filled")]
    assert engine.open_order_ids() == []
    # The same bar again (a replayed push) fills nothing more.
    assert await engine.on_bars([_bar(1, "60100")]) == 0
    assert (await _stored(db, store))[0] == fills


async def test_without_kept_bars_or_for_a_manual_order_the_next_bar_to_arrive_fills(
        db: Database, make_tenant: TenantFactory) -> None:
    engine, store, _ = await _engine(db, make_tenant, recent_bars=0)
    await engine.on_bars([_bar(0, "60000"), _bar(1, "60100")])
    reply = await engine.submit(_order("waits", T0), account="manual", source="bot")
    assert reply["status"] == "accepted"
    assert await engine.on_bars([_bar(2, "60200")]) == 1
    assert (await _stored(db, store))[0] == [("waits:1", D(60200), T0 + 2 * MIN)]

    kept, kept_store, _ = await _engine(db, make_tenant, recent_bars=4)
    await kept.on_bars([_bar(0, "60000"), _bar(1, "60100")])
    # A manual order counts from the latest bar seen: no bar it has not seen fills it.
    manual = await kept.submit(_order("by-hand", T0), account="manual", source="manual")
    assert manual["status"] == "accepted"
    assert await kept.on_bars([_bar(2, "60200")]) == 1
    assert (await _stored(db, kept_store))[0] == [("by-hand:1", D(60200), T0 + 2 * MIN)]
