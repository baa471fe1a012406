"""Manual orders, cancels, the kill switch and strategy failures through the gateway."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from actors.feed import get_or_create_feed
from tenancy.settings import Settings
from tests.conftest import TenantFactory, wait_for
from trading.instruments import Bar


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def feed(gateway_url: str, settings: Settings) -> Any:
    return get_or_create_feed(settings)


def _bar(ts: datetime, px: int = 60_000, symbol: str = "BTC-USD") -> Bar:
    return Bar(symbol, ts, px, px + 20, px - 20, px, 500)


async def test_manual_orders_are_idempotent_and_fill_on_the_next_bar(
        http: httpx.AsyncClient, feed: Any, make_tenant: TenantFactory) -> None:
    t = await make_tenant()
    key = bearer(t.api_key)
    body = {"client_order_id": "manual-1", "symbol": "BTC-USD", "side": "buy",
            "quantity": "0.01"}
    first, second = await asyncio.gather(http.post("/v1/orders", json=body, headers=key),
                                         http.post("/v1/orders", json=body, headers=key))
    assert sorted([first.status_code, second.status_code]) == [200, 201], (first.text, second.text)
    assert first.json()["client_order_id"] == second.json()["client_order_id"] == "manual-1"
    await feed.publish.remote([_bar(datetime.now(UTC) + timedelta(days=5))])

    async def filled() -> bool:
        got = (await http.get("/v1/orders/manual-1", headers=key)).json()
        return bool(got["status"] == "filled")

    await wait_for(filled, timeout=20, interval=0.2)
    orders = (await http.get("/v1/orders", headers=key)).json()
    assert [o["client_order_id"] for o in orders] == ["manual-1"]
    retry = await http.post("/v1/orders", json=body, headers=key)
    assert retry.status_code == 200 and retry.json()["status"] == "filled"


@pytest.mark.parametrize(("patch", "field"), [
    ({"quantity": "-1"}, "quantity"), ({"quantity": "NaN"}, "quantity"),
    ({"symbol": "NOPE-USD"}, "symbol"), ({"type": "limit"}, "limit_price"),
    ({"side": "hold"}, "side"), ({"quantity": "0.00001"}, "quantity"),
    ({"tenant_id": "x"}, "tenant_id"),
])
async def test_bad_orders_are_422_and_write_nothing(http: httpx.AsyncClient,
                                                    make_tenant: TenantFactory,
                                                    patch: dict[str, str], field: str) -> None:
    t = await make_tenant()
    body = {"symbol": "BTC-USD", "side": "buy", "quantity": "0.01", **patch}
    r = await http.post("/v1/orders", json=body, headers=bearer(t.api_key))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert (await http.get("/v1/orders", headers=bearer(t.api_key))).json() == []


async def test_cancel_and_other_tenants(http: httpx.AsyncClient, feed: Any,
                                        make_tenant: TenantFactory) -> None:
    a, b = await make_tenant(), await make_tenant()
    body = {"client_order_id": "lim-1", "symbol": "BTC-USD", "side": "buy", "type": "limit",
            "quantity": "0.01", "limit_price": "100"}
    placed = await http.post("/v1/orders", json=body, headers=bearer(a.api_key))
    assert placed.status_code == 201 and placed.json()["status"] == "accepted"
    assert (await http.delete("/v1/orders/lim-1", headers=bearer(b.api_key))).status_code == 404
    canceled = await http.delete("/v1/orders/lim-1", headers=bearer(a.api_key))
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    again = await http.delete("/v1/orders/lim-1", headers=bearer(a.api_key))
    assert again.json()["status"] == "canceled"


async def test_kill_switch_halts_and_orders_get_409(http: httpx.AsyncClient, feed: Any,
                                                    make_tenant: TenantFactory) -> None:
    t = await make_tenant()
    key = bearer(t.api_key)
    resting = {"client_order_id": "rest-1", "symbol": "BTC-USD", "side": "buy", "type": "limit",
               "quantity": "0.01", "limit_price": "100"}
    assert (await http.post("/v1/orders", json=resting, headers=key)).status_code == 201
    killed = await http.post("/v1/kill-switch", json={"reason": "test"}, headers=key)
    assert killed.status_code == 200, killed.text
    assert killed.json() == {"state": "halted", "canceled": 1}
    assert (await http.get("/v1/orders/rest-1", headers=key)).json()["status"] == "canceled"
    refused = await http.post("/v1/orders", json={**resting, "client_order_id": "after-1"},
                              headers=key)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "halted"
    stored = (await http.get("/v1/orders/after-1", headers=key)).json()
    assert stored["status"] == "rejected" and stored["reason"] == "halted"
    assert (await http.get("/v1/risk", headers=key)).json()["state"] == "halted"
    # Back to active by hand (the running gate makes the change), audited with the reason.
    resumed = await http.put("/v1/risk/state", json={"state": "active", "reason": "all clear"},
                             headers=key)
    assert resumed.status_code == 200 and resumed.json()["state"] == "active", resumed.text
    again = await http.post("/v1/orders", json={**resting, "client_order_id": "after-2"},
                            headers=key)
    assert again.status_code == 201 and again.json()["status"] == "accepted", again.text
    trail = (await http.get("/v1/audit", headers=key)).json()
    actions = [(e["action"], e["target"], e["detail"].get("reason")) for e in trail]
    assert ("risk.kill_switch", "halted", "test") in actions
    assert ("risk.state", "active", "all clear") in actions


async def test_reducing_admits_only_orders_that_shrink_a_position(
        http: httpx.AsyncClient, feed: Any, make_tenant: TenantFactory) -> None:
    t = await make_tenant()
    key = bearer(t.api_key)
    # No risk gate runs yet: the stored state changes, and a gate started later obeys it.
    assert (await http.put("/v1/risk/state", json={"state": "reducing", "reason": "wind down"},
                           headers=key)).json()["state"] == "reducing"
    buy = {"symbol": "BTC-USD", "side": "buy", "quantity": "0.02"}
    refused = await http.post("/v1/orders", json={**buy, "client_order_id": "grow-0"},
                              headers=key)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "reducing_only"
    assert (await http.put("/v1/risk/state", json={"state": "active", "reason": "build"},
                           headers=key)).status_code == 200
    assert (await http.post("/v1/orders", json={**buy, "client_order_id": "grow-1"},
                            headers=key)).status_code == 201
    await feed.publish.remote([_bar(datetime.now(UTC) + timedelta(days=6))])

    async def filled() -> bool:
        got = (await http.get("/v1/orders/grow-1", headers=key)).json()
        return bool(got["status"] == "filled")

    await wait_for(filled, timeout=20, interval=0.2)
    assert (await http.put("/v1/risk/state", json={"state": "reducing", "reason": "wind down"},
                           headers=key)).json()["state"] == "reducing"
    more = await http.post("/v1/orders", json={**buy, "client_order_id": "grow-2"}, headers=key)
    assert more.status_code == 409 and more.json()["error"]["code"] == "reducing_only"
    flip = await http.post("/v1/orders", json={**buy, "side": "sell", "quantity": "0.05",
                                               "client_order_id": "flip-1"}, headers=key)
    assert flip.status_code == 409, flip.text  # would turn long into short
    cut = await http.post("/v1/orders", json={**buy, "side": "sell", "quantity": "0.01",
                                              "client_order_id": "cut-1"}, headers=key)
    assert cut.status_code == 201 and cut.json()["status"] == "accepted", cut.text


@pytest.mark.parametrize(("body", "field"), [
    ({"state": "paused", "reason": "x"}, "state"), ({"state": "active"}, "reason"),
    ({"state": "active", "reason": ""}, "reason"),
])
async def test_bad_state_changes_are_422_and_change_nothing(
        http: httpx.AsyncClient, make_tenant: TenantFactory, body: dict[str, str],
        field: str) -> None:
    t = await make_tenant()
    r = await http.put("/v1/risk/state", json=body, headers=bearer(t.api_key))
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
    risk = (await http.get("/v1/risk", headers=bearer(t.api_key))).json()
    assert risk["state"] == "active" and risk["version"] == 1


async def test_a_failing_strategy_stops_only_its_bot(http: httpx.AsyncClient, feed: Any,
                                                     make_tenant: TenantFactory) -> None:
    t = await make_tenant()
    key = bearer(t.api_key)
    bad = (await http.post("/v1/bots", json={"name": "bad", "strategy": "exploding",
                                             "symbols": ["ETH-USD"], "capital": "10000"},
                           headers=key)).json()
    assert "id" in bad, bad
    assert (await http.post(f"/v1/bots/{bad['id']}/start", headers=key)).status_code == 200
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=7)
    for i in range(4):
        await feed.publish.remote([_bar(start + timedelta(minutes=i), 3000 + i, "ETH-USD")])
        await asyncio.sleep(0.1)

    async def errored() -> bool:
        got = (await http.get(f"/v1/bots/{bad['id']}", headers=key)).json()
        return bool(got["status"] == "error")

    await wait_for(errored, timeout=20, interval=0.2)
    got = (await http.get(f"/v1/bots/{bad['id']}", headers=key)).json()
    assert "boom on bar 3" in got["last_error"]
    # Risk and execution carry on: a manual order still goes through and fills.
    placed = await http.post("/v1/orders", json={"client_order_id": "still-ok", "symbol": "ETH-USD",
                                                 "side": "buy", "quantity": "0.01"}, headers=key)
    assert placed.status_code == 201, placed.text
    await feed.publish.remote([_bar(start + timedelta(minutes=10), 3100, "ETH-USD")])

    async def filled() -> bool:
        got = (await http.get("/v1/orders/still-ok", headers=key)).json()
        return bool(got["status"] == "filled")

    await wait_for(filled, timeout=20, interval=0.2)
    await http.post(f"/v1/bots/{bad['id']}/stop", headers=key)


async def test_new_limits_apply_to_a_running_risk_gate(http: httpx.AsyncClient, feed: Any,
                                                      make_tenant: TenantFactory) -> None:
    t = await make_tenant()
    key = bearer(t.api_key)
    body = {"symbol": "BTC-USD", "side": "buy", "type": "limit", "quantity": "0.01",
            "limit_price": "100"}
    assert (await http.post("/v1/orders", json={**body, "client_order_id": "l-1"},
                            headers=key)).status_code == 201  # the gate is running now
    put = await http.put("/v1/risk", json={"limits": {"max_order_notional": "0.5"}}, headers=key)
    assert put.status_code == 200, put.text
    refused = await http.post("/v1/orders", json={**body, "client_order_id": "l-2"}, headers=key)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "max_order_notional"


async def test_max_open_orders_holds_for_orders_sent_at_once(http: httpx.AsyncClient, feed: Any,
                                                              make_tenant: TenantFactory) -> None:
    t = await make_tenant()
    key = bearer(t.api_key)
    put = await http.put("/v1/risk", json={"limits": {"max_open_orders": 2}}, headers=key)
    assert put.status_code == 200, put.text
    body = {"symbol": "BTC-USD", "side": "buy", "type": "limit", "quantity": "0.01",
            "limit_price": "100"}  # far below the market: they stay open
    replies = await asyncio.gather(*(
        http.post("/v1/orders", json={**body, "client_order_id": f"burst-{i}"}, headers=key)
        for i in range(6)))
    codes = sorted(r.status_code for r in replies)
    assert codes == [201, 201, 409, 409, 409, 409], [r.text for r in replies]
    assert {r.json()["error"]["code"] for r in replies if r.status_code == 409} == \
        {"max_open_orders"}
    open_ = (await http.get("/v1/orders", params={"status": "accepted"}, headers=key)).json()
    assert len(open_) == 2
