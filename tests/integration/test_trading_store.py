"""The trading store on real PostgreSQL: write-ahead orders, idempotency, exactly-once fills."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import text

from actors.store import TradingStore
from tenancy.db import Database
from tests.conftest import TenantFactory
from trading.orders import Fill, IllegalTransition, Order, OrderStatus
from trading.portfolio import Portfolio

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


async def _store(db: Database, make_tenant: TenantFactory) -> TradingStore:
    t = (await make_tenant()).tenant
    store = TradingStore(db, t.id, t.slug)
    await store.open_account("manual", Decimal(100_000))
    return store


def _order(cid: str, side: str = "buy", qty: str = "2") -> Order:
    return Order.new(client_order_id=cid, symbol="BTC-USD", side=side, type="market",
                     quantity=qty, created_at=T0)


async def test_same_client_order_id_at_once_gives_one_order(db: Database,
                                                            make_tenant: TenantFactory) -> None:
    store = await _store(db, make_tenant)
    results = await asyncio.gather(*(store.submit(_order("dup-1"), account="manual",
                                                  source="manual") for _ in range(5)))
    assert sum(r.created for r in results) == 1
    assert len({r.id for r in results}) == 1
    async with db.tenant(store._tenant_id, store._slug) as uow:
        n = (await uow.conn.execute(text(
            "SELECT count(*) FROM orders WHERE client_order_id = 'dup-1'"))).scalar_one()
        events = (await uow.conn.execute(text(
            "SELECT count(*) FROM order_events e JOIN orders o ON o.id = e.order_id"
            " WHERE o.client_order_id = 'dup-1'"))).scalar_one()
    assert (n, events) == (1, 1)


async def test_fills_apply_once_and_positions_equal_the_sum_of_fills(
        db: Database, make_tenant: TenantFactory) -> None:
    store = await _store(db, make_tenant)
    memory = Portfolio(Decimal(100_000))
    for i, (side, qty, px) in enumerate([("buy", "2", "100"), ("buy", "1", "103"),
                                         ("sell", "2.5", "110")]):
        stored = await store.submit(_order(f"o-{i}", side, qty), account="manual",
                                    source="manual")
        order = stored.order
        await store.transition(order, order.transition(OrderStatus.ACCEPTED))
        fill = Fill(f"o-{i}:1", order.client_order_id, "BTC-USD", order.side, Decimal(qty),
                    Decimal(px), Decimal("0.5"), T0 + timedelta(minutes=i))
        event = order.apply_fill(fill)
        first = await store.apply_fill(order, fill, event, account="manual")
        again = await store.apply_fill(order, fill, event, account="manual")  # a retry
        assert first.applied and not again.applied
        memory.apply_fill(fill)
    rebuilt = await store.portfolio("manual")
    assert rebuilt.cash == memory.cash and rebuilt.fees == memory.fees == Decimal("1.5")
    assert rebuilt.position("BTC-USD") == memory.position("BTC-USD")
    async with db.tenant(store._tenant_id, store._slug) as uow:
        summed = (await uow.conn.execute(text(
            "SELECT sum(CASE side WHEN 'buy' THEN quantity ELSE -quantity END) FROM fills"
            " WHERE account = 'manual' AND symbol = 'BTC-USD'"))).scalar_one()
        statuses = (await uow.conn.execute(text(
            "SELECT e.to_status FROM order_events e JOIN orders o ON o.id = e.order_id"
            " WHERE o.client_order_id = 'o-0' ORDER BY e.id"))).scalars().all()
    assert summed == rebuilt.position("BTC-USD").quantity == Decimal("0.5")
    assert statuses == ["new", "accepted", "filled"]


async def test_a_stale_transition_is_refused(db: Database, make_tenant: TenantFactory) -> None:
    store = await _store(db, make_tenant)
    stored = await store.submit(_order("stale-1"), account="manual", source="manual")
    a, b = stored.order.copy(), stored.order.copy()
    await store.transition(a, a.transition(OrderStatus.ACCEPTED))
    with pytest.raises(IllegalTransition):
        await store.transition(b, b.transition(OrderStatus.REJECTED, reason="late"))
    assert (await store.get("stale-1")).order.status is OrderStatus.ACCEPTED


async def test_open_orders_come_back_with_their_fill_counts(db: Database,
                                                            make_tenant: TenantFactory) -> None:
    store = await _store(db, make_tenant)
    stored = await store.submit(_order("open-1", qty="3"), account="manual", source="manual")
    order = stored.order
    await store.transition(order, order.transition(OrderStatus.ACCEPTED))
    fill = Fill("open-1:1", "open-1", "BTC-USD", order.side, Decimal(1), Decimal(100),
                Decimal(0), T0)
    await store.apply_fill(order, fill, order.apply_fill(fill), account="manual")
    done = await store.submit(_order("done-1"), account="manual", source="manual")
    await store.transition(done.order, done.order.transition(OrderStatus.REJECTED, reason="x"))
    [(back, fills)] = await store.open_orders()
    assert back.order.client_order_id == "open-1" and fills == 1
    assert back.order.status is OrderStatus.PARTIALLY_FILLED
    assert back.order.remaining == Decimal(2)


async def test_an_accepted_submit_stores_both_events_in_order_and_a_duplicate_none(
        db: Database, make_tenant: TenantFactory) -> None:
    store = await _store(db, make_tenant)
    first = await store.submit(_order("acc-1"), account="manual", source="bot", accept=True)
    again = await store.submit(_order("acc-1"), account="manual", source="bot", accept=True)
    assert first.created and not again.created and again.id == first.id
    assert again.order.status is OrderStatus.ACCEPTED
    async with db.tenant(store._tenant_id, store._slug) as uow:
        events = (await uow.conn.execute(text(
            "SELECT e.from_status, e.to_status FROM order_events e JOIN orders o"
            " ON o.id = e.order_id WHERE o.client_order_id = 'acc-1' ORDER BY e.id"))).all()
    assert [tuple(e) for e in events] == [(None, "new"), ("new", "accepted")]
