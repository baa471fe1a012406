"""The market feed actor in the session's Ray, and the market routes through the gateway."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest

from actors.feed import FEED_NAME, FEED_NAMESPACE, get_or_create_feed
from tenancy.db import Database
from tenancy.settings import Settings
from tests.conftest import TenantFactory, wait_for
from trading.data import SyntheticSource
from trading.instruments import Bar

T = TypeVar("T")
START = datetime(2033, 1, 31, 23, 57, tzinfo=UTC)  # straddles January and February
END = START + timedelta(minutes=6)
LIVE = "E2E-FEED"  # the live loop's only symbol
FEED_TEST_NAME = f"{FEED_NAME}-test-{secrets.token_hex(3)}"


def recorder_class() -> type:
    """A tiny subscriber that keeps what the feed pushes (a local class: Ray pickles it by
    value, since the workers cannot import this test module)."""

    class Recorder:
        def __init__(self) -> None:
            self.bars: list[Bar] = []

        async def on_bars(self, bars: list[Bar]) -> None:
            self.bars.extend(bars)

        async def received(self) -> list[Bar]:
            return list(self.bars)

    return Recorder


async def call(ref: Awaitable[T], timeout: float = 60.0) -> T:
    return await asyncio.wait_for(ref, timeout)


def assert_error(response: httpx.Response, status: int, field: str | None) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["field"] == field, body


@pytest.fixture
def feed_and_recorder(gateway_url: str, settings: Settings) -> Any:
    import ray

    # A private name and a private symbol for the live loop, so that bots tests sharing this
    # Ray session and database never meet this feed or its bars.
    feed = get_or_create_feed(settings, name=FEED_TEST_NAME, symbols=[LIVE], seed=5,
                              interval=60, speed=1200, batch_size=20, autostart=True)
    recorder = ray.remote(num_cpus=0)(recorder_class()).remote()
    try:
        yield feed, recorder
    finally:
        ray.kill(recorder)
        ray.kill(feed)


async def _stored(db: Database, bars: list[Bar]) -> int:
    from sqlalchemy import text

    async with db.platform() as uow:
        return int((await uow.conn.execute(text(
            "SELECT count(*) FROM market.bars WHERE (symbol, ts) IN"
            " (SELECT * FROM unnest(CAST(:s AS text[]), CAST(:t AS timestamptz[])))"),
            {"s": [b.symbol for b in bars], "t": [b.ts for b in bars]})).scalar_one())


async def test_feed_writes_pushes_and_serves_bars(
        feed_and_recorder: Any, db: Database, settings: Settings, http: httpx.AsyncClient,
        make_tenant: TenantFactory) -> None:
    import ray

    feed, recorder = feed_and_recorder
    assert FEED_NAME == "market-feed" and FEED_NAMESPACE == "atp-system"
    assert ray.get_actor(FEED_TEST_NAME, namespace=FEED_NAMESPACE)._actor_id == feed._actor_id
    # a second call finds the same actor (its options are the existing actor's)
    assert get_or_create_feed(settings, name=FEED_TEST_NAME, speed=1)._actor_id == feed._actor_id
    await call(feed.subscribe.remote("recorder", ["BTC-USD", LIVE], recorder))
    assert await call(feed.subscribers.remote()) == {"recorder": ["BTC-USD", LIVE]}

    batch = list(SyntheticSource(seed=5).bars(["BTC-USD", "ETH-USD"], START, END))
    assert len(batch) == 12
    assert await call(feed.publish.remote(batch)) == 12
    btc = [b for b in batch if b.symbol == "BTC-USD"]

    async def published_arrived() -> bool:
        got = [b for b in await call(recorder.received.remote()) if b.ts.year == 2033]
        return got == btc

    await wait_for(published_arrived, timeout=30)
    assert await _stored(db, batch) == 12
    assert await call(feed.publish.remote(batch)) == 0  # idempotent

    # autostart: the live loop (20 bar-minutes per wall second) writes and pushes too
    async def live_bars_arrived() -> bool:
        got = await call(recorder.received.remote())
        return any(b.symbol == LIVE for b in got)

    await wait_for(live_bars_arrived, timeout=30)
    stats = await call(feed.stats.remote())
    assert stats["running"] and stats["batches"] >= 3 and stats["subscribers"] == 1
    assert stats["last_bar_ts"] is not None
    received = await call(recorder.received.remote())
    live = [b for b in received if b.ts.year != 2033]
    assert {b.symbol for b in live} == {LIVE}
    assert [b.ts for b in live] == sorted({b.ts for b in live})  # in order, no repeats

    async def live_stored() -> bool:  # pushed first, written right after
        return await _stored(db, live) == len(live)

    await wait_for(live_stored, timeout=10)

    await call(feed.stop.remote())
    assert (await call(feed.stats.remote()))["running"] is False

    # a dead subscriber is dropped at the next push
    ray.kill(recorder)
    later = list(SyntheticSource(seed=5).bars(["BTC-USD"], END, END + timedelta(minutes=2)))

    async def dropped() -> bool:
        await call(feed.publish.remote(later))
        return (await call(feed.stats.remote()))["subscribers"] == 0

    await wait_for(dropped, timeout=30, interval=0.2)
    assert (await call(feed.stats.remote()))["dropped_subscribers"] == 1

    # the routes, as a viewer of some tenant
    key = (await make_tenant()).api_key
    headers = {"Authorization": f"Bearer {key}"}
    r = await http.get("/v1/market/instruments", headers=headers)
    assert r.status_code == 200, r.text
    by_symbol = {i["symbol"]: i for i in r.json()}
    assert by_symbol["BTC-USD"] == {"symbol": "BTC-USD", "tick_size": "0.01",
                                    "lot_size": "0.0001", "min_notional": "0"}
    assert {"AAPL", "MSFT", "ETH-USD", LIVE} <= set(by_symbol)

    params = {"symbol": "BTC-USD", "start": START.isoformat(), "end": END.isoformat()}
    r = await http.get("/v1/market/bars", params=params, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [datetime.fromisoformat(b["ts"]) for b in body] == [b.ts for b in btc]
    first = btc[0]
    assert body[0] == {"symbol": "BTC-USD", "ts": body[0]["ts"], "open": format(first.open, "f"),
                       "high": format(first.high, "f"), "low": format(first.low, "f"),
                       "close": format(first.close, "f"), "volume": format(first.volume, "f")}
    assert all(isinstance(b["close"], str) for b in body)
    r = await http.get("/v1/market/bars", params={**params, "limit": 2}, headers=headers)
    assert [b["ts"] for b in r.json()] == [b["ts"] for b in body[:2]]
    naive = {**params, "start": "2033-01-31T23:57:00", "end": "2033-02-01T00:03:00"}
    assert (await http.get("/v1/market/bars", params=naive, headers=headers)).json() == body

    assert_error(await http.get("/v1/market/bars", params={"symbol": "NOPE-USD"},
                                headers=headers), 404, "symbol")
    assert_error(await http.get("/v1/market/bars", params={**params, "start": "yesterday"},
                                headers=headers), 422, "start")
    assert_error(await http.get("/v1/market/bars", params={**params, "end": "31/01/2033"},
                                headers=headers), 422, "end")
    assert_error(await http.get("/v1/market/bars", params={**params, "end": params["start"]},
                                headers=headers), 422, "end")
    for limit in (0, 5001, "many"):
        assert_error(await http.get("/v1/market/bars", params={**params, "limit": limit},
                                    headers=headers), 422, "limit")
    assert_error(await http.get("/v1/market/bars", params={"start": params["start"]},
                                headers=headers), 422, "symbol")
    assert_error(await http.get("/v1/market/bars", params=params), 401, None)
