"""Bots end to end on real Ray: start, trade on fed bars, stream, quotas, stop."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import ray
import websockets

from actors.feed import get_or_create_feed
from actors.tenant_runtime import tenant_namespace
from tenancy.settings import Settings
from tests.conftest import TenantFactory, wait_for
from trading.instruments import Bar


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _bars(start: datetime, closes: list[int]) -> list[Bar]:
    return [Bar("BTC-USD", start + timedelta(minutes=i), c, c + 20, c - 20, c, 500)
            for i, c in enumerate(closes)]


def _alive(slug: str) -> set[str]:
    from ray.util.state import list_actors

    return {a.name for a in list_actors(
        address=ray.get_runtime_context().gcs_address,
        filters=[("ray_namespace", "=", tenant_namespace(slug)), ("state", "=", "ALIVE")])}


BOT = {"name": "sma", "strategy": "sma_crossover", "symbols": ["BTC-USD"],
       "params": {"fast": 2, "slow": 4, "quantity": "0.5"}, "capital": "100000",
       "resources": {"num_cpus": 0.1, "memory_mb": 256}}


@pytest.fixture(scope="module")
def feed(gateway_url: str, settings: Settings) -> Any:
    return get_or_create_feed(settings)


async def test_a_bot_trades_on_fed_bars_and_streams(http: httpx.AsyncClient, gateway_url: str,
                                                    feed: Any, make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    key, slug = created.api_key, created.tenant.slug
    bot = (await http.post("/v1/bots", json=BOT, headers=bearer(key))).json()
    started = await http.post(f"/v1/bots/{bot['id']}/start", headers=bearer(key))
    assert started.status_code == 200, started.text
    assert started.json()["status"] == "running"
    assert _alive(slug) == {"risk", "execution", f"strategy-{bot['id']}"}
    assert_error = (await http.post(f"/v1/bots/{bot['id']}/start", headers=bearer(key)))
    assert assert_error.status_code == 409 and assert_error.json()["error"]["code"] == "bot_running"

    events: list[dict[str, Any]] = []
    ws_url = gateway_url.replace("http://", "ws://") + "/v1/stream"
    async with websockets.connect(ws_url, additional_headers=bearer(key)) as ws:
        assert json.loads(await ws.recv())["type"] == "hello"

        async def listen() -> None:
            async for raw in ws:
                events.append(json.loads(raw))

        listener = asyncio.create_task(listen())
        start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=3)
        # Falling, then rising: the 2-bar SMA crosses above the 4-bar SMA → buy;
        # then falling again → sell.
        closes = [60_000, 59_800, 59_600, 59_400, 59_200, 59_900, 60_600, 61_300, 62_000,
                  61_000, 60_000, 59_000, 58_000, 57_000]
        for bar in _bars(start, closes):
            await feed.publish.remote([bar])
            await asyncio.sleep(0.15)

        async def sold() -> bool:
            orders = (await http.get("/v1/orders", params={"bot_id": bot["id"]},
                                     headers=bearer(key))).json()
            return sum(o["status"] == "filled" for o in orders) >= 2

        await wait_for(sold, timeout=30, interval=0.3)
        await wait_for(lambda: _has(events, "fill"), timeout=10)
        listener.cancel()

    orders = (await http.get("/v1/orders", params={"bot_id": bot["id"]}, headers=bearer(key))).json()
    sides = [o["side"] for o in sorted(orders, key=lambda o: o["created_at"])]
    assert sides[:2] == ["buy", "sell"]
    fills = (await http.get("/v1/fills", headers=bearer(key))).json()
    assert len(fills) >= 2
    assert _has_sync(events, "order")
    positions = (await http.get("/v1/positions", headers=bearer(key))).json()
    net = sum(Decimal(f["quantity"]) * (1 if f["side"] == "buy" else -1) for f in fills)
    held = sum((Decimal(p["quantity"]) for p in positions if p["account"] == f"bot:{bot['id']}"),
               Decimal(0))
    assert held == net
    pnl = {p["account"]: p for p in (await http.get("/v1/pnl", headers=bearer(key))).json()}
    snapshot = pnl[f"bot:{bot['id']}"]["snapshot"]
    assert snapshot is not None  # written by execution after the batch that traded
    assert Decimal(snapshot["equity"]) == Decimal(snapshot["cash"]) + Decimal(
        snapshot["net_exposure"])

    stopped = await http.post(f"/v1/bots/{bot['id']}/stop", headers=bearer(key))
    assert stopped.json()["status"] == "stopped"
    assert _alive(slug) == set()  # no running bot, no actors


async def _has(events: list[dict[str, Any]], kind: str) -> bool:
    return _has_sync(events, kind)


def _has_sync(events: list[dict[str, Any]], kind: str) -> bool:
    return any(e.get("type") == kind for e in events)


async def test_starting_past_the_plan_is_403_naming_the_limit(
        http: httpx.AsyncClient, feed: Any, make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="starter")  # one bot
    key = created.api_key
    first = (await http.post("/v1/bots", json=BOT, headers=bearer(key))).json()
    second = (await http.post("/v1/bots", json={**BOT, "name": "two"}, headers=bearer(key))).json()
    assert (await http.post(f"/v1/bots/{first['id']}/start", headers=bearer(key))).status_code == 200
    refused = await http.post(f"/v1/bots/{second['id']}/start", headers=bearer(key))
    assert refused.status_code == 403
    err = refused.json()["error"]
    assert err["code"] == "quota_exceeded" and err["field"] == "bots"
    assert "bots 1" in err["message"] and "in use 1" in err["message"]
    got = (await http.get(f"/v1/bots/{second['id']}", headers=bearer(key))).json()
    assert got["status"] == "stopped"
    await http.post(f"/v1/bots/{first['id']}/stop", headers=bearer(key))
    assert _alive(created.tenant.slug) == set()


async def test_the_stream_refuses_bad_credentials(gateway_url: str) -> None:
    ws_url = gateway_url.replace("http://", "ws://") + "/v1/stream"
    for headers, code, reason in ((bearer("atp_" + "x" * 40), 4401, "invalid_api_key"),
                                  ({}, 4401, "missing_credential")):
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            async with websockets.connect(ws_url, additional_headers=headers) as ws:
                await ws.recv()
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (code, reason)


async def test_tenants_only_see_their_own_stream(http: httpx.AsyncClient, gateway_url: str,
                                                 make_tenant: TenantFactory,
                                                 redis_client: Any) -> None:
    from actors.tenant_runtime import events_channel

    a, b = await make_tenant(), await make_tenant()
    ws_url = gateway_url.replace("http://", "ws://") + "/v1/stream"
    async with websockets.connect(ws_url + f"?token={b.api_key}") as ws:
        assert json.loads(await ws.recv()) == {"type": "hello", "tenant": b.tenant.slug}
        await redis_client.publish(events_channel(a.tenant.id), json.dumps({"type": "secret"}))
        await redis_client.publish(events_channel(b.tenant.id), json.dumps({"type": "mine"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "mine"}


async def test_gpus_are_part_of_the_quota(http: httpx.AsyncClient, feed: Any,
                                          make_tenant: TenantFactory) -> None:
    created = await make_tenant()  # professional: no GPUs
    key = created.api_key
    bot = (await http.post("/v1/bots", json={**BOT, "resources": {"num_gpus": 1}},
                           headers=bearer(key))).json()
    assert bot["resources"]["num_gpus"] == 1
    refused = await http.post(f"/v1/bots/{bot['id']}/start", headers=bearer(key))
    assert refused.status_code == 403
    assert refused.json()["error"]["field"] == "gpu"
    bad = await http.post("/v1/bots", json={**BOT, "name": "x", "resources": {"num_gpus": 9}},
                          headers=bearer(key))
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "resources.num_gpus"
