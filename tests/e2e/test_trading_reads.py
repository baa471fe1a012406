"""Reads of orders, fills, positions and P&L, and the risk limits, over HTTP."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text

from actors.store import TradingStore
from tenancy.db import Database
from tenancy.tenants import ProvisionedTenant
from tests.conftest import TenantFactory
from tests.e2e.test_gateway import assert_error, bearer
from trading.orders import Fill, Order, OrderStatus

T0 = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)


def _at(minutes: int) -> datetime:
    return T0 + timedelta(minutes=minutes)


@dataclass
class Book:
    """Tenant A with a bot, a manual account and a known set of orders and fills."""

    tenant: ProvisionedTenant
    headers: dict[str, str]
    bot_id: str
    bot_account: str


async def _trade(store: TradingStore, cid: str, symbol: str, side: str, qty: str, minute: int, *,
                 account: str, fill: tuple[str, str, str] | None = None, bot_id: str | None = None,
                 limit_price: str | None = None, reject: str | None = None) -> None:
    """Submit an order; accept and fill it (quantity, price, fee), reject it, or leave it accepted."""
    order = Order.new(client_order_id=cid, symbol=symbol, side=side, quantity=qty,
                      type="market" if limit_price is None else "limit", limit_price=limit_price,
                      bot_id=bot_id, created_at=_at(minute))
    stored = await store.submit(order, account=account, source="bot" if bot_id else "manual",
                                bot_id=uuid.UUID(bot_id) if bot_id else None)
    order = stored.order
    if reject is not None:
        await store.transition(order, order.transition(OrderStatus.REJECTED, reason=reject))
        return
    await store.transition(order, order.transition(OrderStatus.ACCEPTED))
    if fill is not None:
        quantity, price, fee = fill
        f = Fill(f"{cid}:1", cid, symbol, order.side, Decimal(quantity), Decimal(price),
                 Decimal(fee), _at(minute + 1))
        result = await store.apply_fill(order, f, order.apply_fill(f), account=account)
        assert result.applied


@pytest_asyncio.fixture(scope="module")
async def book(http: httpx.AsyncClient, db: Database, make_tenant: TenantFactory) -> Book:
    created = await make_tenant(plan="unmetered")
    headers = bearer(created.api_key)
    r = await http.post("/v1/bots", headers=headers, json={
        "name": "reader", "strategy": "sma_crossover", "symbols": ["BTC-USD"], "capital": "10000"})
    assert r.status_code == 201, r.text
    bot_id, bot_account = r.json()["id"], r.json()["account"]
    store = TradingStore(db, created.tenant.id, created.tenant.slug)
    await store.open_account("manual", Decimal(100_000))
    await _trade(store, "m-1", "BTC-USD", "buy", "2", 0, account="manual", fill=("2", "100", "0.5"))
    await _trade(store, "m-2", "ETH-USD", "sell", "1", 10, account="manual", limit_price="2000")
    await _trade(store, "b-1", "BTC-USD", "buy", "1", 20, account=bot_account, bot_id=bot_id,
                 fill=("0.5", "101", "0"))
    await _trade(store, "b-2", "BTC-USD", "buy", "1", 30, account=bot_account, bot_id=bot_id,
                 reject="max_position")
    await _trade(store, "m-3", "SOL-USD", "buy", "1", 40, account="manual", fill=("1", "10", "0"))
    await _trade(store, "m-4", "SOL-USD", "sell", "1", 42, account="manual", fill=("1", "12", "0"))
    async with db.tenant(created.tenant.id, created.tenant.slug) as uow:
        for minute, equity in ((50, "100010"), (60, "100020")):
            await uow.conn.execute(text(
                "INSERT INTO pnl_snapshots (account, at, cash, equity, realized_pnl, unrealized_pnl,"
                " fees, gross_exposure, net_exposure) VALUES ('manual', :at, 99801.5, :eq, 2, 0,"
                " 0.5, 200, 200)"), {"at": _at(minute), "eq": Decimal(equity)})
        await uow.commit()
    return Book(created, headers, bot_id, bot_account)


async def _ids(http: httpx.AsyncClient, book: Book, path: str, key: str, **params: object
               ) -> list[str]:
    r = await http.get(path, params=params, headers=book.headers)
    assert r.status_code == 200, r.text
    return [row[key] for row in r.json()]


async def test_orders_newest_first_and_filtered(http: httpx.AsyncClient, book: Book) -> None:
    async def ids(**params: object) -> list[str]:
        return await _ids(http, book, "/v1/orders", "client_order_id", **params)

    assert await ids() == ["m-4", "m-3", "b-2", "b-1", "m-2", "m-1"]
    assert await ids(bot_id=book.bot_id) == ["b-2", "b-1"]
    assert await ids(bot_id=str(uuid.uuid4())) == []
    assert await ids(symbol="BTC-USD") == ["b-2", "b-1", "m-1"]
    assert await ids(status="accepted") == ["m-2"]
    assert await ids(status="rejected", bot_id=book.bot_id) == ["b-2"]
    assert await ids(since=_at(20).isoformat()) == ["m-4", "m-3", "b-2", "b-1"]
    assert await ids(until=_at(30).isoformat()) == ["b-1", "m-2", "m-1"]
    assert await ids(since="2026-03-02T15:10:00", until="2026-03-02T16:30:00+01:00") == [
        "b-1", "m-2"]  # naive means UTC; 16:30+01:00 is 15:30 UTC
    assert await ids(limit=2) == ["m-4", "m-3"]

    orders = (await http.get("/v1/orders", params={"symbol": "BTC-USD"}, headers=book.headers)).json()
    b1 = next(o for o in orders if o["client_order_id"] == "b-1")
    assert b1["status"] == "partially_filled" and b1["filled_quantity"] == "0.5"
    assert b1["average_fill_price"] == "101" and b1["quantity"] == "1"
    assert b1["bot_id"] == book.bot_id and b1["account"] == book.bot_account
    assert b1["source"] == "bot"
    b2 = next(o for o in orders if o["client_order_id"] == "b-2")
    assert b2["reason"] == "max_position"


@pytest.mark.parametrize(("params", "field"), [
    ({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "ten"}, "limit"),
    ({"bot_id": "not-a-uuid"}, "bot_id"), ({"status": "lost"}, "status"),
    ({"symbol": "btc usd"}, "symbol"), ({"since": "yesterday"}, "since"),
    ({"until": "2026-13-01"}, "until"),
    ({"since": "2026-03-02T16:00:00Z", "until": "2026-03-02T15:00:00Z"}, "until"),
])
async def test_bad_order_filters_are_422(http: httpx.AsyncClient, book: Book,
                                         params: dict[str, object], field: str) -> None:
    assert_error(await http.get("/v1/orders", params=params, headers=book.headers), 422,
                 "invalid", field)


async def test_one_order_with_its_events(http: httpx.AsyncClient, book: Book) -> None:
    r = await http.get("/v1/orders/m-1", headers=book.headers)
    assert r.status_code == 200, r.text
    order = r.json()
    assert order["client_order_id"] == "m-1" and order["status"] == "filled"
    assert order["fees"] == "0.5" and order["account"] == "manual" and order["bot_id"] is None
    assert [(e["from_status"], e["to_status"]) for e in order["events"]] == [
        (None, "new"), ("new", "accepted"), ("accepted", "filled")]
    rejected = (await http.get("/v1/orders/b-2", headers=book.headers)).json()
    assert rejected["events"][-1] == {"from_status": "new", "to_status": "rejected",
                                      "reason": "max_position",
                                      "at": rejected["events"][-1]["at"]}
    assert_error(await http.get("/v1/orders/nope", headers=book.headers), 404, "not_found",
                 "client_order_id")


async def test_fills_newest_first_and_filtered(http: httpx.AsyncClient, book: Book) -> None:
    async def ids(**params: object) -> list[str]:
        return await _ids(http, book, "/v1/fills", "fill_id", **params)

    assert await ids() == ["m-4:1", "m-3:1", "b-1:1", "m-1:1"]
    assert await ids(bot_id=book.bot_id) == ["b-1:1"]
    assert await ids(symbol="BTC-USD") == ["b-1:1", "m-1:1"]
    assert await ids(since=_at(21).isoformat()) == ["m-4:1", "m-3:1", "b-1:1"]
    assert await ids(limit=1) == ["m-4:1"]
    fills = (await http.get("/v1/fills", params={"bot_id": book.bot_id}, headers=book.headers)).json()
    assert fills[0] | {"order_id": None, "at": None} == {
        "fill_id": "b-1:1", "order_id": None, "client_order_id": "b-1", "account": book.bot_account,
        "symbol": "BTC-USD", "side": "buy", "quantity": "0.5", "price": "101", "fee": "0",
        "at": None}
    for params, field in (({"bot_id": "x"}, "bot_id"), ({"limit": 5000}, "limit"),
                          ({"symbol": "?"}, "symbol"), ({"since": "soon"}, "since")):
        assert_error(await http.get("/v1/fills", params=params, headers=book.headers), 422,
                     field=field)


async def test_positions_and_pnl(http: httpx.AsyncClient, book: Book) -> None:
    viewer = await http.post("/v1/api-keys", json={"name": "v", "role": "viewer"}, headers=book.headers)
    headers = bearer(viewer.json()["key"])
    positions = (await http.get("/v1/positions", headers=headers)).json()
    assert [(p["account"], p["symbol"], p["quantity"], p["average_cost"], p["source"])
            for p in positions] == sorted([
                ("manual", "BTC-USD", "2", "100", "platform"),
                (book.bot_account, "BTC-USD", "0.5", "101", "platform")])  # SOL-USD is flat
    r = await http.get("/v1/pnl", headers=headers)
    assert r.status_code == 200, r.text
    pnl = {a["account"]: a for a in r.json()}
    assert set(pnl) == {"manual", book.bot_account}
    assert pnl["manual"]["cash"] == "99801.5" and pnl["manual"]["fees"] == "0.5"
    assert pnl["manual"]["snapshot"]["equity"] == "100020"  # the latest of two
    assert pnl["manual"]["snapshot"]["gross_exposure"] == "200"
    assert pnl[book.bot_account]["cash"] == "9949.5" and pnl[book.bot_account]["snapshot"] is None


async def test_another_tenant_sees_none_of_it(http: httpx.AsyncClient, book: Book,
                                              make_tenant: TenantFactory) -> None:
    other = bearer((await make_tenant(plan="unmetered")).api_key)
    for path in ("/v1/orders", "/v1/fills", "/v1/positions", "/v1/pnl", "/v1/bots"):
        r = await http.get(path, headers=other)
        assert r.status_code == 200 and r.json() == [], (path, r.text)
    assert (await http.get("/v1/orders", params={"bot_id": book.bot_id}, headers=other)).json() == []
    for cid in ("m-1", "b-1"):
        assert_error(await http.get(f"/v1/orders/{cid}", headers=other), 404, "not_found")
    assert (await http.get("/v1/orders/m-1", headers=book.headers)).status_code == 200


# --- risk -----------------------------------------------------------------------------------

LIMIT_KEYS = {"max_order_notional", "max_position_per_symbol", "max_gross_exposure",
              "max_open_orders", "max_orders_per_minute", "price_band_bps", "daily_loss_limit",
              "max_drawdown_pct"}


async def test_risk_defaults_put_and_versions(http: httpx.AsyncClient,
                                              make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="unmetered")
    owner = bearer(created.api_key)
    keys = {}
    for role in ("viewer", "trader", "admin"):
        r = await http.post("/v1/api-keys", json={"name": role, "role": role}, headers=owner)
        keys[role] = bearer(r.json()["key"])

    r = await http.get("/v1/risk", headers=keys["viewer"])
    assert r.status_code == 200, r.text
    risk = r.json()
    assert risk["limits"] == dict.fromkeys(LIMIT_KEYS)
    assert (risk["state"], risk["version"]) == ("active", 1)

    body = {"limits": {"max_order_notional": "5000.5", "max_open_orders": 10,
                       "max_drawdown_pct": 20}}
    r = await http.put("/v1/risk", json=body, headers=keys["admin"])
    assert r.status_code == 200, r.text
    put = r.json()
    assert put["limits"] == {**dict.fromkeys(LIMIT_KEYS), "max_order_notional": "5000.5",
                             "max_open_orders": 10, "max_drawdown_pct": "20"}
    assert (put["state"], put["version"]) == ("active", 2)
    assert (await http.get("/v1/risk", headers=keys["viewer"])).json() == put

    # A stale version loses; the current one wins; the limits are replaced as a whole.
    assert_error(await http.put("/v1/risk", json={**body, "version": 1}, headers=owner), 409,
                 "version_conflict", "version")
    r = await http.put("/v1/risk", json={"limits": {"daily_loss_limit": 250}, "version": 2},
                       headers=owner)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 3
    assert r.json()["limits"] == {**dict.fromkeys(LIMIT_KEYS), "daily_loss_limit": "250"}

    for bad, field in (({"bogus_limit": 1}, "limits.bogus_limit"),
                       ({"max_open_orders": -1}, "limits.max_open_orders"),
                       ({"max_open_orders": 1.5}, "limits.max_open_orders"),
                       ({"max_drawdown_pct": 101}, "limits.max_drawdown_pct"),
                       ({"daily_loss_limit": "NaN"}, "limits.daily_loss_limit"),
                       ({"daily_loss_limit": 0}, "limits.daily_loss_limit")):
        assert_error(await http.put("/v1/risk", json={"limits": bad}, headers=owner), 422,
                     "invalid", field)
    assert_error(await http.put("/v1/risk", json={"limits": {}, "state": "halted"}, headers=owner),
                 422, "invalid", "state")
    assert_error(await http.put("/v1/risk", json={"limits": []}, headers=owner), 422, field="limits")
    for role in ("viewer", "trader"):
        assert_error(await http.put("/v1/risk", json={"limits": {}}, headers=keys[role]), 403,
                     "insufficient_role")
    assert (await http.get("/v1/risk", headers=owner)).json()["version"] == 3

    # Another tenant's limits are its own.
    other = bearer((await make_tenant(plan="unmetered")).api_key)
    assert (await http.get("/v1/risk", headers=other)).json()["version"] == 1
