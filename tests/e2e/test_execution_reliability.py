"""Execution on real Ray and PostgreSQL: kill -9 mid-stream loses and doubles nothing."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import ray
from sqlalchemy import text

from actors.store import TradingStore
from actors.tenant_runtime import execution_actor, tenant_namespace
from tenancy.db import Database
from tenancy.settings import Settings
from tests.conftest import TenantFactory
from trading.instruments import Bar
from trading.orders import Order


def _bar(ts: datetime, px: int = 60_000) -> Bar:
    return Bar("BTC-USD", ts, px, px + 50, px - 50, px + 10, 1_000)


def _order(cid: str, side: str = "buy") -> Order:
    return Order.new(client_order_id=cid, symbol="BTC-USD", side=side, type="market",
                     quantity="0.01")


async def test_kill_9_of_execution_mid_stream(ray_session: None, db: Database, settings: Settings,
                                              make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    store = TradingStore(db, t.id, t.slug)
    await store.open_account("manual", Decimal(1_000_000))
    actor = execution_actor(settings, t.id, t.slug)
    base = datetime.now(UTC) + timedelta(hours=1)  # bars after every submission
    n_orders, killed_at = 60, 25
    old_pid = await actor.pid.remote()
    results = []
    for i in range(n_orders):
        side = "buy" if i % 3 else "sell"
        results.append(await actor.submit.remote(_order(f"k-{i}", side), "manual", "manual"))
        if i % 5 == 4:
            await actor.on_bars.remote([_bar(base + timedelta(minutes=i))])
        if i == killed_at:
            os.kill(old_pid, signal.SIGKILL)  # no goodbye: the process just dies
    # A retry of an order sent before the crash returns the stored order, not a new one.
    again = await actor.submit.remote(_order("k-3", "buy"), "manual", "manual")
    assert again["created"] is False
    await actor.on_bars.remote([_bar(base + timedelta(minutes=n_orders + 1))])
    assert await actor.pid.remote() != old_pid
    assert await actor.open_orders.remote() == []

    async with db.tenant(t.id, t.slug) as uow:
        c = uow.conn
        orders = (await c.execute(text(
            "SELECT client_order_id, status, quantity, filled_quantity FROM orders"))).all()
        per_order = dict((await c.execute(text(
            "SELECT o.client_order_id, sum(f.quantity) FROM fills f JOIN orders o"
            " ON o.id = f.order_id GROUP BY o.client_order_id"))).all())
        fill_count = (await c.execute(text("SELECT count(*) FROM fills"))).scalar_one()
        net = (await c.execute(text(
            "SELECT coalesce(sum(CASE side WHEN 'buy' THEN quantity ELSE -quantity END), 0)"
            " FROM fills"))).scalar_one()
        position = (await c.execute(text(
            "SELECT quantity FROM positions WHERE account = 'manual' AND symbol = 'BTC-USD'")
        )).scalar_one()
        events_ok = (await c.execute(text(
            "SELECT bool_and(n = 3) FROM (SELECT count(*) AS n FROM order_events"
            " GROUP BY order_id) e"))).scalar_one()
    assert sorted(o.client_order_id for o in orders) == sorted(f"k-{i}" for i in range(n_orders))
    assert all(o.status == "filled" and o.filled_quantity == o.quantity for o in orders)
    assert all(per_order[o.client_order_id] == o.quantity for o in orders)  # no double fill
    assert fill_count == n_orders
    assert position == net  # positions equal the sum of fills
    assert events_ok  # new → accepted → filled, each exactly once
    ray.kill(actor)


async def test_the_same_client_order_id_at_once_is_one_order(
        ray_session: None, db: Database, settings: Settings, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    await TradingStore(db, t.id, t.slug).open_account("manual", Decimal(1_000_000))
    actor = execution_actor(settings, t.id, t.slug)
    replies = await asyncio.gather(*(actor.submit.remote(_order("twin"), "manual", "manual")
                                     for _ in range(8)))
    assert sum(r["created"] for r in replies) == 1
    assert ray.get_actor("execution", namespace=tenant_namespace(t.slug))
    ray.kill(actor)
