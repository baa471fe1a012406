"""Gateway metrics on real Redis and PostgreSQL: the flush, the gauges and ``/metrics``."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import uvicorn
from pydantic import SecretStr
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from sqlalchemy import event, text

from billing import ledger
from billing.ledger import Sample
from billing.meter import RUNTIME_SOURCE
from serve.api import create_api
from serve.limits import month_key
from serve.metrics import MetricsRecorder
from serve.metrics_gauges import SCHEMAS_PER_QUERY, Gauges, read_gauges
from serve.metrics_store import MetricsFlusher, read_counters
from tenancy.db import Database
from tenancy.settings import Settings
from tests.conftest import TenantFactory, wait_for
from tests.prometheus_text import families, sample_value
from tests.stripe_emulator import free_port

TOKEN = "metrics-" + secrets.token_urlsafe(32)


def _observe(recorder: MetricsRecorder, tenant: str, n: int, *, status: int = 200,
             seconds: float = 0.02, code: str | None = None) -> None:
    for _ in range(n):
        recorder.observe(tenant=tenant, route="/v1/me", method="GET", status=status,
                         seconds=seconds, error_code=code)


# -- the flush ---------------------------------------------------------------------------------

async def test_replicas_add_up_in_redis(redis_client: aioredis.Redis) -> None:
    tenant = f"t-{secrets.token_hex(4)}"
    replicas = [MetricsRecorder(), MetricsRecorder()]
    flushers = [MetricsFlusher(redis_client, r) for r in replicas]
    _observe(replicas[0], tenant, 3)
    _observe(replicas[1], tenant, 4, seconds=0.3)
    _observe(replicas[1], tenant, 2, status=429, code="rate_limited")
    assert [await f.flush() for f in flushers] == [3, 6]
    assert [await f.flush() for f in flushers] == [0, 0]  # nothing new
    _observe(replicas[0], tenant, 1)
    assert await flushers[0].flush() == 1
    c = await read_counters(redis_client)
    assert c.requests[(tenant, "/v1/me", "GET", "200")] == 8
    assert c.requests[(tenant, "/v1/me", "GET", "429")] == 2
    assert c.buckets[(tenant, "/v1/me", "0.025")] == 6
    assert c.buckets[(tenant, "/v1/me", "0.5")] == 4
    assert c.sums[(tenant, "/v1/me")] == pytest.approx(6 * 0.02 + 4 * 0.3)
    assert c.errors[(tenant, "/v1/me", "rate_limited")] == 2
    assert c.rate_limited[(tenant,)] == 2


async def test_a_batch_retried_after_a_lost_reply_counts_once(
        redis_client: aioredis.Redis) -> None:
    tenant = f"t-{secrets.token_hex(4)}"
    recorder = MetricsRecorder()
    flusher = MetricsFlusher(redis_client, recorder)
    applied = flusher._apply

    async def reply_lost(**kwargs: Any) -> Any:
        await applied(**kwargs)
        raise RedisConnectionError("connection lost after the script ran")

    _observe(recorder, tenant, 5)
    flusher._apply = reply_lost  # type: ignore[assignment]
    with pytest.raises(RedisConnectionError):
        await flusher.flush()
    assert flusher.waiting
    _observe(recorder, tenant, 2)  # recorded meanwhile: a later batch
    flusher._apply = applied
    assert await flusher.flush_all() == 7  # the retried batch is skipped by Redis
    assert not flusher.waiting
    assert (await read_counters(redis_client)).requests[(tenant, "/v1/me", "GET", "200")] == 7


async def test_redis_down_keeps_the_batch_bounded_and_a_refused_batch_is_counted_dropped(
        redis_client: aioredis.Redis) -> None:
    tenant = f"t-{secrets.token_hex(4)}"
    down = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_timeout=0.2,
                                   socket_connect_timeout=0.2)
    recorder = MetricsRecorder(max_series=3)
    flusher = MetricsFlusher(down, recorder)
    _observe(recorder, tenant, 4)
    with pytest.raises(RedisConnectionError):
        await flusher.flush()
    assert flusher.waiting
    _observe(recorder, tenant, 2)  # the same series: still counted
    recorder.observe(tenant="t-other", route="/v1/me", method="GET", status=200, seconds=0.01,
                     error_code=None)  # a new series beyond the bound: dropped, counted
    assert recorder.pending() == (3, 2)
    await down.aclose()

    before = (await read_counters(redis_client)).dropped
    refusing = MetricsFlusher(redis_client, recorder)

    async def refuse(**_kwargs: Any) -> Any:
        raise ResponseError("OOM command not allowed")

    refusing._apply = refuse  # type: ignore[assignment]
    assert await refusing.flush() == 0
    assert not refusing.waiting and recorder.pending() == (0, 0)
    working = MetricsFlusher(redis_client, recorder)
    assert await working.flush() == 0  # only the drop count is left to add
    assert (await read_counters(redis_client)).dropped == before + 1 + 2


# -- the gauges ------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def _meter_window(db: Database, end: datetime) -> AsyncIterator[None]:
    """Pretend the collector recorded a window ending at `end` (restored afterwards)."""
    async with db.platform() as uow:
        before = (await uow.conn.execute(text(
            "SELECT last_window_end FROM platform.meter_state WHERE id = 1"))).scalar()
        await uow.conn.execute(text("UPDATE platform.meter_state SET last_window_end = :e"),
                               {"e": end})
        await uow.commit()
    try:
        yield
    finally:
        async with db.platform() as uow:
            await uow.conn.execute(text(
                "UPDATE platform.meter_state SET last_window_end = :e"), {"e": before})
            await uow.commit()


async def _seed(db: Database, redis: aioredis.Redis, tenant_id: uuid.UUID, slug: str,
                window_end: datetime) -> dict[str, uuid.UUID]:
    now = datetime.now(UTC)
    agents = {"online": uuid.uuid4(), "stale": uuid.uuid4(), "offline": uuid.uuid4()}
    async with db.tenant(tenant_id, slug) as uow:
        for i, status in enumerate(("running", "starting", "stopped", "error")):
            await uow.conn.execute(text(
                "INSERT INTO bots (id, name, strategy, symbols, capital, num_cpus, memory_bytes,"
                " status) VALUES (:id, :n, 'sma_crossover', ARRAY['BTC-USD'], 1000, 0.5,"
                " 100000000, :s)"), {"id": uuid.uuid4(), "n": f"bot-{i}", "s": status})
        for name, connected, seen in (("online", True, now), ("stale", True,
                                                             now - timedelta(minutes=5)),
                                      ("offline", False, now - timedelta(hours=2))):
            await uow.conn.execute(text(
                "INSERT INTO agents (id, name, version, connected, last_seen_at,"
                " heartbeat_seconds) VALUES (:id, :n, '1.0', :c, :seen, 10)"),
                {"id": agents[name], "n": name, "c": connected, "seen": seen})
        await uow.commit()
    day = datetime(now.year, now.month, now.day, tzinfo=UTC)
    samples = [
        Sample(tenant_id, "cpu_seconds", day, day + timedelta(seconds=1), "test", Decimal(100)),
        Sample(tenant_id, "memory_gb_seconds", day, day + timedelta(seconds=1), "test",
               Decimal(7200)),
        Sample(tenant_id, "api_calls", day, day + timedelta(seconds=1), "test", Decimal(40)),
        # the collector's last window: 2 CPUs and 9 GB over 15 s
        Sample(tenant_id, "cpu_seconds", window_end - timedelta(seconds=15), window_end,
               RUNTIME_SOURCE, Decimal(30)),
        Sample(tenant_id, "memory_gb_seconds", window_end - timedelta(seconds=15), window_end,
               RUNTIME_SOURCE, Decimal(135)),
    ]
    async with db.platform() as uow:
        result = await ledger.record(uow.conn, samples)
        assert result.accepted == len(samples), result
        await uow.conn.execute(text(
            "INSERT INTO platform.api_usage (tenant_id, day, calls) VALUES (:t, :d, 40)"),
            {"t": tenant_id, "d": now.date()})
        for month, status, cents in ((1, "paid", 19900), (2, "paid", 19900),
                                     (3, "finalised", 20130)):
            await uow.conn.execute(text(
                "INSERT INTO platform.invoices (id, tenant_id, period, number, status, plan,"
                " currency, total_cents, provider) VALUES (:id, :t, :p, :num, :s,"
                " 'professional', 'usd', :c, 'none')"),
                {"id": uuid.uuid4(), "t": tenant_id, "p": date(2024, month, 1), "s": status, "c": cents,
                 "num": f"T-{secrets.token_hex(6)}"})
        await uow.commit()
    await redis.set(month_key(tenant_id, now.strftime("%Y-%m")), 55)
    return agents


class _Statements:
    """Counts the SQL statements an engine runs."""

    def __init__(self, db: Database) -> None:
        self.count = 0
        self._engine = db.engine.sync_engine

    def _seen(self, *_args: Any) -> None:
        self.count += 1

    def __enter__(self) -> _Statements:
        event.listen(self._engine, "before_cursor_execute", self._seen)
        return self

    def __exit__(self, *_exc: object) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


def _quota(g: Gauges, tenant: str, resource: str) -> tuple[float | None, bool]:
    [q] = [q for q in g.quotas if (q.tenant, q.resource) == (tenant, resource)]
    return q.ratio, q.over


async def test_gauges_of_every_tenant_in_a_fixed_number_of_queries(
        db: Database, redis_client: aioredis.Redis, make_tenant: TenantFactory) -> None:
    busy = (await make_tenant(plan="professional")).tenant  # 5 bots, 4 CPUs, 8 GiB, 100k calls
    idle = (await make_tenant(plan="starter")).tenant
    window_end = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    agents = await _seed(db, redis_client, busy.id, busy.slug, window_end)
    async with _meter_window(db, window_end):
        with _Statements(db) as statements:
            g = await read_gauges(db, redis_client, metering_interval=15)
        tenants = len({q.tenant for q in g.quotas})
        fixed = 9  # SET, tenants, meter state, load, calls, usage, invoices, pg_tables, union
        assert statements.count <= fixed + tenants // SCHEMAS_PER_QUERY
        for _ in range(3):
            await make_tenant()
        with _Statements(db) as more:
            await read_gauges(db, redis_client, metering_interval=15)
        assert more.count <= fixed + (tenants + 3) // SCHEMAS_PER_QUERY

        assert _quota(g, busy.slug, "bots") == (0.4, False)  # running + starting of 5
        assert _quota(g, busy.slug, "cpu") == (0.5, False)  # 2 of 4 CPUs
        ratio, over = _quota(g, busy.slug, "memory")
        assert ratio == pytest.approx(9e9 / (8 * 1024**3)) and over
        assert _quota(g, busy.slug, "api_calls") == (55 / 100_000, False)  # Redis leads PostgreSQL
        assert _quota(g, idle.slug, "bots") == (0.0, False)
        assert _quota(g, idle.slug, "cpu") == (0.0, False)
        assert g.agent_connections[busy.slug] == 1 and g.agent_connections[idle.slug] == 0
        seen = {a: at for (t, a), at in g.agent_last_seen.items() if t == busy.slug}
        assert set(seen) == {str(a) for a in agents.values()}
        assert abs(seen[str(agents["online"])] - time.time()) < 60
        assert g.usage[(busy.slug, "cpu_seconds")] == 130  # 100 + the window's 30
        assert g.usage[(busy.slug, "memory_gb_seconds")] == 7335
        assert g.usage[(busy.slug, "api_calls")] == 40
        assert g.usage[(idle.slug, "api_calls")] == 0
        assert g.invoices[(busy.slug, "paid")] == 39800
        assert g.invoices[(busy.slug, "finalised")] == 20130

    stale = await read_gauges(db, redis_client, metering_interval=15,
                              now=window_end + timedelta(minutes=5))
    assert _quota(stale, busy.slug, "cpu") == (None, False)  # metering stale: not known
    assert _quota(stale, busy.slug, "memory") == (None, False)


async def test_an_exhausted_monthly_allowance_is_over_quota(
        db: Database, redis_client: aioredis.Redis, make_tenant: TenantFactory) -> None:
    t = (await make_tenant(plan="tiny")).tenant  # 3 calls a month
    await redis_client.set(month_key(t.id, datetime.now(UTC).strftime("%Y-%m")), 3)
    g = await read_gauges(db, redis_client, metering_interval=15)
    assert _quota(g, t.slug, "api_calls") == (1.0, True)
    assert _quota(g, t.slug, "bots") == (None, False)  # the tiny plan has no bot limit


# -- /metrics on the gateway app (uvicorn, no Ray) ----------------------------------------------

@contextlib.asynccontextmanager
async def _gateway(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.should_exit = True
        await task


def _with_token(settings: Settings, **updates: Any) -> Settings:
    return settings.model_copy(update={"metrics_token": SecretStr(TOKEN),
                                       "metrics_flush_seconds": 0.2, **updates})


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    assert body["error"]["code"] == code
    return body["error"]


async def test_metrics_needs_its_token_and_is_absent_without_one(settings: Settings,
                                                                 db: Database) -> None:
    async with _gateway(_with_token(settings)) as http:
        _error(await http.get("/metrics"), 401, "missing_credential")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer " + TOKEN + "x"})
        _error(wrong, 401, "invalid_credential")
        assert wrong.headers["www-authenticate"] == "Bearer"
        _error(await http.get("/metrics", headers={"X-API-Key": TOKEN}), 401,
               "missing_credential")  # only the Authorization header carries it
        ok = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/plain")
    async with _gateway(settings) as http:  # no ATP_METRICS_TOKEN
        absent = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        unknown = await http.get("/no-such-route")
        _error(absent, 404, "not_found")
        assert absent.json() == unknown.json()


async def test_requests_are_counted_per_tenant_and_route_and_rendered(
        settings: Settings, db: Database, make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="starter")  # 5 req/s, burst 10, 10,000 calls a month
    slug, key = created.tenant.slug, {"Authorization": f"Bearer {created.api_key}"}
    scrape = {"Authorization": f"Bearer {TOKEN}"}
    async with _gateway(_with_token(settings)) as http:
        statuses = [(await http.get("/v1/me", headers=key)).status_code for _ in range(14)]
        assert statuses.count(429) >= 1, statuses
        missing = await http.get(f"/v1/bots/{uuid.uuid4()}", headers=key)
        assert missing.status_code in (404, 429)
        await http.get("/v1/nowhere/at/all", headers=key)  # no route: no credential read
        await http.get("/v1/me", headers={"Authorization": "Bearer atp_not_a_key"})
        for _ in range(3):
            assert (await http.get("/metrics", headers=scrape)).status_code == 200

        admitted = statuses.count(200) + (missing.status_code == 404)
        limited = statuses.count(429) + (missing.status_code == 429)
        parsed: dict[str, Any] = {}

        async def flushed() -> bool:
            nonlocal parsed
            parsed = families((await http.get("/metrics", headers=scrape)).content)
            requests = parsed.get("atp_http_requests")
            return requests is not None and sum(
                s.value for s in requests.samples if s.labels["tenant"] == slug) == 15

        await wait_for(flushed, timeout=15, interval=0.3)
        requests = parsed["atp_http_requests"]
        mine = {(s.labels["route"], s.labels["status"]): s.value for s in requests.samples
                if s.labels["tenant"] == slug}
        assert mine[("/v1/me", "200")] == statuses.count(200)
        assert mine[("/v1/me", "429")] == statuses.count(429)
        if missing.status_code == 404:
            assert mine[("/v1/bots/{bot_id}", "404")] == 1
            assert sample_value(parsed["atp_http_errors"], "atp_http_errors_total", tenant=slug,
                                route="/v1/bots/{bot_id}", code="not_found") == 1
        assert not any(s.labels["route"] == "/metrics" for s in requests.samples)
        assert any(s.labels == {"tenant": "", "route": "unmatched", "method": "GET",
                                "status": "404"} for s in requests.samples)
        assert any(s.labels == {"tenant": "", "route": "/v1/me", "method": "GET",
                                "status": "401"} for s in requests.samples)
        assert sample_value(parsed["atp_rate_limited"], "atp_rate_limited_total",
                            tenant=slug) == limited
        assert sample_value(parsed["atp_http_request_duration_seconds"],
                            "atp_http_request_duration_seconds_count", tenant=slug,
                            route="/v1/me") == 14

        async def quota_seen() -> bool:  # the gauges are cached for a few seconds
            parsed.update(families((await http.get("/metrics", headers=scrape)).content))
            return sample_value(parsed["atp_tenant_quota_used_ratio"],
                                "atp_tenant_quota_used_ratio", tenant=slug,
                                resource="api_calls") == admitted / 10_000

        await wait_for(quota_seen, timeout=15, interval=0.5)
        assert sample_value(parsed["atp_tenant_over_quota"], "atp_tenant_over_quota",
                            tenant=slug, resource="api_calls") == 0
        assert sample_value(parsed["atp_agent_connections"], "atp_agent_connections",
                            tenant=slug) == 0
        assert sample_value(parsed["atp_metrics_source_up"], "atp_metrics_source_up",
                            source="redis") == 1


@contextlib.asynccontextmanager
async def _silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and never answers: every Redis call waits for its timeout."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_redis_down_neither_fails_nor_slows_requests(settings: Settings,
                                                           db: Database) -> None:
    async with _silent_server() as port:
        broken = _with_token(settings, redis_url=f"redis://127.0.0.1:{port}/0",
                             redis_timeout_seconds=0.5)
        async with _gateway(broken) as http:
            started = time.monotonic()
            for _ in range(10):
                assert (await http.get("/healthz")).status_code == 200
            assert time.monotonic() - started < 2.5  # not 10 x 0.5 s
            response = await http.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert response.status_code == 200
            parsed = families(response.content)
            assert sample_value(parsed["atp_metrics_source_up"], "atp_metrics_source_up",
                                source="redis") == 0
            assert sample_value(parsed["atp_metrics_source_up"], "atp_metrics_source_up",
                                source="postgres") == 1
            assert "atp_tenant_over_quota" in parsed and "atp_http_requests" not in parsed
