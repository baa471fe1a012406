"""``/metrics`` through Ray Serve: two gateway replicas, one cluster-wide view."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import websockets
from pydantic import SecretStr

from serve.metrics_store import PREFIX
from tenancy.settings import Settings
from tests.conftest import TenantFactory, wait_for
from tests.prometheus_text import families, sample_value

TOKEN = "metrics-" + secrets.token_urlsafe(32)
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def metrics_prefix(gateway_url: str, settings: Settings) -> Iterator[str]:
    """A second gateway app with a metrics token and two replicas."""
    from ray import serve

    from serve.app import build_app

    with_token = settings.model_copy(update={"metrics_token": SecretStr(TOKEN),
                                             "metrics_flush_seconds": 0.5})
    serve.run(build_app(with_token, replicas=2, num_cpus=0.1), name="gateway-metrics",
              route_prefix="/metrics-gw")
    yield "/metrics-gw"
    serve.delete("gateway-metrics")


async def _scrape(http: httpx.AsyncClient, prefix: str) -> dict[str, Any]:
    response = await http.get(f"{prefix}/metrics", headers=SCRAPE)
    assert response.status_code == 200, response.text
    return families(response.content)


def _requests_of(parsed: dict[str, Any], tenant: str, route: str, status: str) -> float:
    family = parsed.get("atp_http_requests")
    if family is None:
        return 0.0
    return sum(s.value for s in family.samples if s.labels["tenant"] == tenant
               and s.labels["route"] == route and s.labels["status"] == status)


async def _markers(redis: aioredis.Redis) -> set[bytes]:
    return {key async for key in redis.scan_iter(match=PREFIX + "seq:*")}


async def test_every_replica_answers_with_the_cluster_wide_counts(
        http: httpx.AsyncClient, metrics_prefix: str, make_tenant: TenantFactory,
        redis_client: aioredis.Redis) -> None:
    created = await make_tenant(plan="unmetered")
    slug = created.tenant.slug
    markers_before = await _markers(redis_client)
    for _ in range(40):
        response = await http.get(f"{metrics_prefix}/v1/me", headers=bearer(created.api_key))
        assert response.status_code == 200, response.text
    missing = await http.get(f"{metrics_prefix}/v1/bots/{uuid.uuid4()}",
                             headers=bearer(created.api_key))
    assert missing.status_code == 404

    async def flushed() -> bool:
        return _requests_of(await _scrape(http, metrics_prefix), slug, "/v1/me", "200") == 40

    await wait_for(flushed, timeout=30, interval=0.5)
    # Each scrape lands on either replica; a per-replica view would show about half.
    for _ in range(8):
        parsed = await _scrape(http, metrics_prefix)
        assert _requests_of(parsed, slug, "/v1/me", "200") == 40
        assert sample_value(parsed["atp_http_request_duration_seconds"],
                            "atp_http_request_duration_seconds_count", tenant=slug,
                            route="/v1/me") == 40
        assert sample_value(parsed["atp_http_errors"], "atp_http_errors_total", tenant=slug,
                            route="/v1/bots/{bot_id}", code="not_found") == 1
        assert not any(s.labels["route"] == "/metrics"
                       for s in parsed["atp_http_requests"].samples)
    # Both replicas served some of the 41 requests and flushed them (one marker each).
    assert len(await _markers(redis_client) - markers_before) >= 2


async def test_rate_limits_and_agent_connections_through_serve(
        http: httpx.AsyncClient, gateway_url: str, metrics_prefix: str,
        make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="starter")  # 5 req/s, burst 10
    slug = created.tenant.slug
    statuses = [(await http.get(f"{metrics_prefix}/v1/me", headers=bearer(created.api_key))
                 ).status_code for _ in range(16)]
    assert 429 in statuses, statuses
    await asyncio.sleep(2.5)  # let the bucket refill before the agent connects

    agent_id = uuid.uuid4()
    url = gateway_url.replace("http://", "ws://") + f"{metrics_prefix}/v1/agent/ws"
    async with websockets.connect(url, additional_headers=bearer(created.api_key)) as ws:
        await ws.send(json.dumps({"type": "hello", "agent_id": str(agent_id), "name": "metrics",
                                  "version": "0.1", "last_ack": 0}))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 15))
        assert welcome["type"] == "welcome", welcome
        parsed: dict[str, Any] = {}

        async def connected() -> bool:  # a scrape may answer from gauges read before the tenant existed
            parsed.update(await _scrape(http, metrics_prefix))
            return any(s.labels == {"tenant": slug} and s.value == 1
                       for s in parsed["atp_agent_connections"].samples)

        await wait_for(connected, timeout=20, interval=0.5)
        age = sample_value(parsed["atp_agent_last_seen_seconds"], "atp_agent_last_seen_seconds",
                           tenant=slug, agent=str(agent_id))
        assert 0 <= age < 60

    async def disconnected() -> bool:
        parsed.update(await _scrape(http, metrics_prefix))
        return sample_value(parsed["atp_agent_connections"], "atp_agent_connections",
                            tenant=slug) == 0

    await wait_for(disconnected, timeout=20, interval=0.5)

    async def limited_counted() -> bool:
        parsed.update(await _scrape(http, metrics_prefix))
        family = parsed.get("atp_rate_limited")
        return family is not None and any(
            s.labels == {"tenant": slug} and s.value == statuses.count(429)
            for s in family.samples)

    await wait_for(limited_counted, timeout=20, interval=0.5)
    assert _requests_of(parsed, slug, "/v1/me", "429") == statuses.count(429)


async def test_metrics_auth_through_serve(http: httpx.AsyncClient, metrics_prefix: str) -> None:
    missing = await http.get(f"{metrics_prefix}/metrics")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_credential"
    wrong = await http.get(f"{metrics_prefix}/metrics", headers=bearer(TOKEN[:-1]))
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_credential"
    # The session's gateway has no metrics token: /metrics does not exist there.
    absent = await http.get("/metrics", headers=SCRAPE)
    assert absent.status_code == 404
    assert absent.json() == (await http.get("/no-such-route")).json()
