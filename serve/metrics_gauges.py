"""Per-tenant gauges and usage counters for ``/metrics``, read for all tenants at once.

A read costs a fixed handful of queries whatever the number of tenants: live tenants with
their plan limits; the last metering window; this month's API calls; the usage ledger's
totals; invoice totals; which tenant schemas hold ``bots`` and ``agents``; and one
``UNION ALL`` over those schemas (in chunks of `SCHEMAS_PER_QUERY`) for running bots and
agents. Plus one Redis ``MGET`` of the monthly call counters the rate limiter enforces.
Every statement runs under a `STATEMENT_TIMEOUT`; `GaugeCache` keeps a read for a few
seconds so two Prometheus servers scraping the same moment cost one read.

What each quota figure is (``used / allowed`` of the tenant's plan; a plan's unlimited
resource has no ratio and is never over):

* ``bots``: bots starting or running (their status in the tenant schema) / ``max_bots``;
  over when above it.
* ``cpu``: CPU-seconds the metering collector measured in its last window / the window's
  length / the plan's CPUs; over when above 1, as the runtime quota watch judges it. Left
  out while metering is stale (no window in the last three intervals).
* ``memory``: the window's GB-seconds of resident memory / its length / the plan's memory;
  over when above it. Stale like ``cpu``.
* ``api_calls``: calls this calendar month (UTC; the larger of the Redis counter and
  PostgreSQL) / ``api_calls_per_month``; over once the allowance is used up, when the
  gateway refuses calls.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.ledger import GB
from billing.meter import RUNTIME_SOURCE
from serve.agent_hub import STALE_AFTER_BEATS
from serve.limits import month_key
from tenancy.db import Database
from tenancy.identifiers import quote_ident, tenant_schema

RESOURCES = ("bots", "cpu", "memory", "api_calls")
USAGE_METERS = ("cpu_seconds", "memory_gb_seconds", "api_calls")
SCHEMAS_PER_QUERY = 200
STATEMENT_TIMEOUT = "5s"
STALE_WINDOWS = 3
GAUGE_CACHE_SECONDS = 5.0
_WINDOW_LOOKBACK = timedelta(days=1)


@dataclass(frozen=True)
class Quota:
    tenant: str
    resource: str
    used: float | None  # None: not known now (metering stale)
    allowed: float | None  # None: unlimited
    over: bool

    @property
    def ratio(self) -> float | None:
        if self.used is None or self.allowed is None:
            return None
        if self.allowed == 0:
            return 0.0 if self.used == 0 else math.inf
        return self.used / self.allowed


@dataclass
class Gauges:
    """One read of the per-tenant figures (tenants by slug)."""

    quotas: list[Quota] = field(default_factory=list)
    agent_connections: dict[str, int] = field(default_factory=dict)
    agent_last_seen: dict[tuple[str, str], float] = field(default_factory=dict)  # Unix time
    usage: dict[tuple[str, str], Decimal] = field(default_factory=dict)  # (tenant, meter)
    invoices: dict[tuple[str, str], int] = field(default_factory=dict)  # (tenant, status)


@dataclass(frozen=True)
class _Tenant:
    id: uuid.UUID
    slug: str
    max_bots: int | None
    cpu: Decimal | None
    memory_bytes: int | None
    api_calls_per_month: int | None


async def read_gauges(db: Database, redis: Redis | None, *, metering_interval: float,
                      now: datetime | None = None) -> Gauges:
    """Read every tenant's gauges (see the module docstring)."""
    now = now or datetime.now(UTC)
    month_start = now.date().replace(day=1)
    async with db.platform() as uow:
        conn = uow.conn
        await conn.execute(text(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'"))
        tenants = [_Tenant(*r) for r in await conn.execute(text(
            "SELECT t.id, t.slug, p.max_bots, p.cpu, p.memory_bytes, p.api_calls_per_month"
            " FROM platform.tenants t JOIN platform.plans p ON p.code = t.plan"
            " WHERE t.status <> 'deleted' ORDER BY t.slug"))]
        ids = [t.id for t in tenants]
        load = await _runtime_load(conn, ids, now, metering_interval)
        calls = {r.tenant_id: int(r.calls) for r in await conn.execute(text(
            "SELECT tenant_id, sum(calls) AS calls FROM platform.api_usage"
            " WHERE tenant_id = ANY(:t) AND day >= :m GROUP BY tenant_id"),
            {"t": ids, "m": month_start})}
        usage = {(r.tenant_id, r.meter): r.quantity for r in await conn.execute(text(
            "SELECT tenant_id, meter, sum(quantity) AS quantity FROM platform.usage_daily"
            " WHERE tenant_id = ANY(:t) AND meter = ANY(:m) GROUP BY tenant_id, meter"),
            {"t": ids, "m": list(USAGE_METERS)})}
        invoices = {(r.tenant_id, r.status): int(r.cents) for r in await conn.execute(text(
            "SELECT tenant_id, status, sum(total_cents) AS cents FROM platform.invoices"
            " WHERE tenant_id = ANY(:t) GROUP BY tenant_id, status"), {"t": ids})}
        bots, agents = await _tenant_schemas(conn, [t.slug for t in tenants])
    if redis is not None:
        calls = await _with_month_counters(redis, tenants, calls, now)
    gauges = Gauges()
    for t in tenants:
        cpu_rate, rss_bytes = load.get(t.id, (0.0, 0.0)) if load is not None else (None, None)
        running = bots.get(t.slug, 0)
        used_calls = calls.get(t.id, 0)
        gauges.quotas += [
            _quota(t.slug, "bots", running, t.max_bots),
            _quota(t.slug, "cpu", cpu_rate, t.cpu),
            _quota(t.slug, "memory", rss_bytes, t.memory_bytes),
            _quota(t.slug, "api_calls", used_calls, t.api_calls_per_month, at_limit_is_over=True),
        ]
        gauges.agent_connections[t.slug] = 0
        for meter in USAGE_METERS:
            gauges.usage[(t.slug, meter)] = usage.get((t.id, meter), Decimal(0))
    slugs = {t.id: t.slug for t in tenants}
    for (tenant_id, status), cents in invoices.items():
        gauges.invoices[(slugs[tenant_id], status)] = cents
    for slug, agent, last_seen, online in agents:
        gauges.agent_last_seen[(slug, agent)] = last_seen
        gauges.agent_connections[slug] += int(online)
    return gauges


def _quota(tenant: str, resource: str, used: float | None, allowed: Any, *,
           at_limit_is_over: bool = False) -> Quota:
    limit = None if allowed is None else float(allowed)
    if used is None or limit is None:
        return Quota(tenant, resource, used, limit, over=False)
    over = used >= limit if at_limit_is_over else used > limit
    return Quota(tenant, resource, float(used), limit, over)


async def _runtime_load(conn: AsyncConnection, ids: list[uuid.UUID], now: datetime,
                        interval: float) -> dict[uuid.UUID, tuple[float, float]] | None:
    """(CPUs, RSS bytes) per tenant over the collector's last window; None when stale."""
    last_end = (await conn.execute(text(
        "SELECT last_window_end FROM platform.meter_state WHERE id = 1"))).scalar()
    if last_end is None or now - last_end > timedelta(seconds=STALE_WINDOWS * interval):
        return None
    rows = await conn.execute(text(
        "SELECT tenant_id, meter, sum(quantity) AS quantity,"
        " extract(epoch FROM max(window_end - window_start)) AS seconds"
        " FROM platform.usage_events WHERE tenant_id = ANY(:t) AND window_start >= :since"
        " AND window_end = :end AND source = :src"
        " AND meter IN ('cpu_seconds', 'memory_gb_seconds') GROUP BY tenant_id, meter"),
        {"t": ids, "since": last_end - _WINDOW_LOOKBACK, "end": last_end, "src": RUNTIME_SOURCE})
    load: dict[uuid.UUID, tuple[float, float]] = {}
    for r in rows:
        seconds = float(r.seconds)
        if seconds <= 0:
            continue
        cpu, rss = load.get(r.tenant_id, (0.0, 0.0))
        if r.meter == "cpu_seconds":
            cpu = float(r.quantity) / seconds
        else:
            rss = float(r.quantity * GB) / seconds
        load[r.tenant_id] = (cpu, rss)
    return load


async def _tenant_schemas(conn: AsyncConnection, slugs: Sequence[str]
                          ) -> tuple[dict[str, int], list[tuple[str, str, float, bool]]]:
    """Running bots per tenant, and (tenant, agent id, last seen, online) per agent."""
    schemas = {tenant_schema(s): s for s in slugs}
    tables = {(r.schemaname, r.tablename) for r in await conn.execute(text(
        "SELECT schemaname, tablename FROM pg_tables WHERE schemaname = ANY(:s)"
        " AND tablename IN ('bots', 'agents')"), {"s": list(schemas)})}
    per_schema: list[list[str]] = []  # each schema's selects stay in one query
    params: dict[str, Any] = {}
    for schema, slug in schemas.items():
        name, ident = f"s{len(params)}", quote_ident(schema)
        parts: list[str] = []
        per_schema.append(parts)
        if (schema, "bots") in tables:
            parts.append(f"SELECT CAST(:{name} AS text) AS slug, NULL::text AS agent,"
                         f" count(*)::float8 AS value, NULL::boolean AS online FROM {ident}.bots"
                         " WHERE status IN ('starting', 'running')")
        if (schema, "agents") in tables:
            parts.append(f"SELECT CAST(:{name} AS text), a.id::text,"
                         " extract(epoch FROM a.last_seen_at)::float8, a.connected AND"
                         f" a.last_seen_at > now() - (a.heartbeat_seconds * {STALE_AFTER_BEATS})"
                         f"::float8 * interval '1 second' FROM {ident}.agents a")
        params[name] = slug
    bots: dict[str, int] = {}
    agents: list[tuple[str, str, float, bool]] = []
    for start in range(0, len(per_schema), SCHEMAS_PER_QUERY):
        chunk = [part for parts in per_schema[start:start + SCHEMAS_PER_QUERY] for part in parts]
        if not chunk:
            continue
        for r in await conn.execute(text(" UNION ALL ".join(chunk)), params):
            if r.agent is None:
                bots[r.slug] = int(r.value)
            else:
                agents.append((r.slug, r.agent, float(r.value), bool(r.online)))
    return bots, agents


async def _with_month_counters(redis: Redis, tenants: Sequence[_Tenant],
                               calls: dict[uuid.UUID, int], now: datetime
                               ) -> dict[uuid.UUID, int]:
    """This month's calls: the larger of PostgreSQL's and the limiter's Redis counter
    (which leads PostgreSQL by up to one usage flush). Redis down: PostgreSQL's."""
    if not tenants:
        return calls
    month = now.strftime("%Y-%m")
    try:
        values = await redis.mget([month_key(t.id, month) for t in tenants])
    except Exception:
        return calls
    merged = dict(calls)
    for t, value in zip(tenants, values, strict=True):
        if value is not None:
            merged[t.id] = max(merged.get(t.id, 0), int(value))
    return merged


class GaugeCache:
    """Keeps the last read for `ttl` seconds; concurrent scrapes share one read.

    Keep `ttl` below the scrape interval: then a later scrape never sees older usage
    counters than an earlier one, whichever replica answers it."""

    def __init__(self, ttl: float = GAUGE_CACHE_SECONDS) -> None:
        self._ttl = ttl
        self._value: tuple[float, Gauges] | None = None
        self._lock = asyncio.Lock()

    async def get(self, read: Callable[[], Awaitable[Gauges]]) -> Gauges:
        async with self._lock:
            if self._value is not None and time.monotonic() - self._value[0] < self._ttl:
                return self._value[1]
            gauges = await read()
            self._value = (time.monotonic(), gauges)
            return gauges
