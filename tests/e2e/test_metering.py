"""The metering collector as the platform runs it: a system actor reading the Ray runtime.

Usage grows while a tenant's bot runs and shows through ``GET /v1/usage``; a tenant whose
processes hold more memory than its plan for K readings is stopped by the quota watch
(plan policy ``stop_bots``), audited, and told on its event stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
import ray
import redis.asyncio as aioredis
from sqlalchemy import text

from actors.tenant_runtime import events_channel
from billing.collector import COLLECTOR_NAME, COLLECTOR_NAMESPACE, get_or_create_collector
from tenancy.db import Database
from tenancy.settings import Settings
from tests.conftest import REDIS_URL, TenantFactory, wait_for

MIB = 1024 * 1024


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def collector(gateway_url: str, settings: Settings) -> Iterator[Any]:
    """The platform's collector actor, ticking every second, for this module only."""
    handle = get_or_create_collector(settings, interval=1.0, quota_samples=2)
    ray.get(handle.stats.remote())
    try:
        yield handle
    finally:
        ray.kill(ray.get_actor(COLLECTOR_NAME, namespace=COLLECTOR_NAMESPACE))


async def test_usage_grows_while_a_bot_runs(http: httpx.AsyncClient, collector: Any,
                                            make_tenant: TenantFactory) -> None:
    t = await make_tenant()
    key = bearer(t.api_key)
    bot = (await http.post("/v1/bots", json={"name": "m", "strategy": "sma_crossover",
                                             "symbols": ["BTC-USD"], "capital": "1000"},
                           headers=key)).json()
    assert (await http.post(f"/v1/bots/{bot['id']}/start", headers=key)).status_code == 200

    async def totals() -> dict[str, Decimal]:
        body = (await http.get("/v1/usage", headers=key)).json()
        return {m: Decimal(q) for m, q in body["totals"].items()}

    async def metered() -> bool:
        got = await totals()
        return all(got.get(m, 0) > 0 for m in ("cpu_seconds", "memory_gb_seconds",
                                                "api_calls", "storage_gb_seconds"))
    try:
        await wait_for(metered, timeout=90, interval=1.0)
    except AssertionError:
        raise AssertionError(f"{await totals()} {ray.get(collector.stats.remote())}") from None
    before = await totals()

    async def grew() -> bool:
        return (await totals())["memory_gb_seconds"] > before["memory_gb_seconds"]
    await wait_for(grew, timeout=30, interval=1.0)
    body = (await http.get("/v1/usage?granularity=month", headers=key)).json()
    assert {r["meter"] for r in body["rows"]} >= {"cpu_seconds", "memory_gb_seconds"}
    assert body["meters"]["cpu_seconds"]["unit"] == "CPU-s"
    bad = await http.get("/v1/usage?granularity=week", headers=key)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "granularity"
    stats = ray.get(collector.stats.remote())
    assert stats["running"] and stats["ticks"] > 0
    await http.post(f"/v1/bots/{bot['id']}/stop", headers=key)


async def test_the_quota_watch_stops_the_bot_holding_memory_beyond_the_plan(
        http: httpx.AsyncClient, db: Database, collector: Any, make_tenant: TenantFactory,
        operator_headers: dict[str, str]) -> None:
    async with db.platform() as uow:  # risk + execution reserve 400 MiB, the bot 64 MiB
        await uow.conn.execute(text(
            "INSERT INTO platform.plans (code, name, max_bots, cpu, memory_bytes, gpu,"
            " rate_per_second, burst, quota_policy) VALUES ('hog-test', 'Hog test', 2, 4,"
            " :m, 0, 100, 100, 'stop_bots') ON CONFLICT DO NOTHING"), {"m": 900 * MIB})
        await uow.commit()
    t = await make_tenant(plan="hog-test")
    key = bearer(t.api_key)
    redis = aioredis.Redis.from_url(REDIS_URL)
    pubsub = redis.pubsub()
    await pubsub.subscribe(events_channel(t.tenant.id))
    try:
        bot = (await http.post("/v1/bots", json={
            "name": "hog", "strategy": "memory_hog", "symbols": ["ETH-USD"], "capital": "1000",
            "params": {"mb": 700}, "resources": {"memory_mb": 64}}, headers=key)).json()
        started = await http.post(f"/v1/bots/{bot['id']}/start", headers=key)
        assert started.status_code == 200, started.text

        async def stopped() -> bool:
            got = (await http.get(f"/v1/bots/{bot['id']}", headers=key)).json()
            return bool(got["status"] == "stopped")
        await wait_for(stopped, timeout=120, interval=1.0)
        got = (await http.get(f"/v1/bots/{bot['id']}", headers=key)).json()
        assert "quota watch" in got["last_error"]

        events: list[dict[str, Any]] = []

        async def quota_event() -> bool:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                events.append(json.loads(message["data"]))
            return any(e.get("type") == "quota" for e in events)
        await wait_for(quota_event, timeout=10, interval=0.05)
        [event] = [e for e in events if e.get("type") == "quota"]
        assert event["over"][0]["limit"] == "memory" and event["stopped_bot"] == bot["id"]
        assert event["over"][0]["allowed"] == 900 * MIB
        trail = (await http.get("/v1/audit", headers=key)).json()
        [entry] = [e for e in trail if e["action"] == "quota.exceeded"]
        assert entry["actor"] == "metering" and entry["detail"]["policy"] == "stop_bots"
    finally:
        await pubsub.aclose()
        await redis.aclose()
    await asyncio.sleep(0)
