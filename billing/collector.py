"""The metering collector: every `interval` seconds, one window of usage into the ledger.

Where it runs: one detached system actor, ``metering-collector`` in namespace
``atp-system`` (`get_or_create_collector`), restarted by Ray when it dies. A system actor
rather than a gateway task, because the gateway has several replicas and the collector
must be one: windows are claimed in PostgreSQL (``platform.meter_state`` row lock), so
even two collectors could not record a window twice.

One tick, for the window ``[last end, now floored to the interval)``:

1. read the runtime (`billing.ray_source`): alive tenant actors and job drivers, and the
   reporters' per-process figures; turn them into samples (`billing.meter.measure`). When
   the runtime cannot be read (no dashboard, so no state API), the window gets no runtime
   samples and the CPU cursors stay as they were: the next good reading counts the CPU of
   the gap (memory and GPU of the gap are not known and not billed);
2. API calls: the gateway's exact per-tenant, per-day counters (``platform.api_usage``)
   minus what the ledger already holds for those days become samples (source
   ``gateway``); a count flushed late for an earlier day lands in that day;
3. storage: the size of each tenant schema times the window (``storage_gb_seconds``);
4. write the samples (`billing.ledger.record`), the new CPU cursors and the window's end
   in ONE transaction, so a crash repeats a window whole or not at all;
5. the runtime quota watch: a tenant whose measured memory (RSS of its processes) or CPU
   (CPU-seconds per second) exceeds its plan for `quota_samples` windows in a row gets an
   audit entry ``quota.exceeded`` and a ``quota`` event on its stream; with the plan's
   policy ``stop_bots`` the bot using the most of the exceeded resource is stopped. The
   count restarts after each action (and after a collector restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing import ledger
from billing.ledger import GB, Sample
from billing.meter import Proc, ProcStat, TenantLoad, measure
from tenancy import audit
from tenancy.db import Database
from tenancy.identifiers import tenant_schema
from tenancy.models import Plan
from tenancy.settings import Settings
from trading.errors import Invalid, Unavailable

log = logging.getLogger(__name__)

COLLECTOR_NAME = "metering-collector"
COLLECTOR_NAMESPACE = "atp-system"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
GATEWAY_SOURCE = "gateway"
STORAGE_SOURCE = "postgres"
API_LOOKBACK = timedelta(days=3)
STRATEGY_PREFIX = "strategy-"
TENANTS_TTL = 60.0


class RuntimeSource(Protocol):
    async def processes(self, tenants: dict[str, uuid.UUID]) -> list[Proc]: ...

    async def node_stats(self, node_ids: set[str]) -> dict[tuple[str, int], ProcStat]: ...


Publish = Callable[[uuid.UUID, dict[str, Any]], Awaitable[None]]
StopBot = Callable[[uuid.UUID, str, str, str], Awaitable[None]]  # tenant, slug, bot id, reason


async def _no_publish(_tenant: uuid.UUID, _event: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class TenantInfo:
    id: uuid.UUID
    slug: str
    plan: Plan


@dataclass
class TickReport:
    window_start: datetime
    window_end: datetime
    processes: int
    unseen: int
    accepted: int
    duplicates: int
    rejected: int
    quota_actions: list[dict[str, Any]] = field(default_factory=list)


def align(ts: datetime, interval: timedelta) -> datetime:
    return EPOCH + ((ts - EPOCH) // interval) * interval


def collector_options(*, interval: float = 15.0, quota_samples: int = 3) -> tuple[float, int]:
    """Validate the options; each error names its option."""
    if isinstance(interval, bool) or not isinstance(interval, int | float) \
            or not 0.5 <= interval <= 3600:
        raise Invalid("interval must be between 0.5 and 3600 seconds", field="interval")
    if isinstance(quota_samples, bool) or not isinstance(quota_samples, int) \
            or not 1 <= quota_samples <= 1000:
        raise Invalid("quota_samples must be an integer from 1 to 1000", field="quota_samples")
    return float(interval), quota_samples


class Collector:
    """One tick at a time (see the module docstring); Ray-free apart from its source."""

    def __init__(self, db: Database, source: RuntimeSource, *, interval: float = 15.0,
                 quota_samples: int = 3, publish: Publish = _no_publish,
                 stop_bot: StopBot | None = None,
                 after_tick: Callable[[], Awaitable[Any]] | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        seconds, self.quota_samples = collector_options(interval=interval,
                                                        quota_samples=quota_samples)
        self.interval = timedelta(seconds=seconds)
        self.max_gap = 2 * self.interval
        self._db, self._source = db, source
        self._publish, self._stop_bot, self._now = publish, stop_bot, now
        self._after_tick = after_tick
        self._streaks: dict[uuid.UUID, int] = {}
        self._tenant_cache: tuple[float, dict[uuid.UUID, TenantInfo]] | None = None
        self.ticks = 0
        self.errors = 0
        self.runtime_errors = 0
        self.last_report: TickReport | None = None
        self.work_seconds = 0.0  # CPU seconds spent in ticks (this process)

    async def tick(self) -> TickReport | None:
        """Record the window that ended last, unless it is recorded already."""
        started = time.process_time()
        try:
            return await self._tick()
        finally:
            self.work_seconds += time.process_time() - started

    async def _tick(self) -> TickReport | None:
        window_end = align(self._now(), self.interval)
        async with self._db.platform() as uow:
            last = await _last_window_end(uow.conn)
            tenants = await self._tenants(uow.conn)
            cursors = {r.key: r.cpu_seconds for r in await uow.conn.execute(text(
                "SELECT key, cpu_seconds FROM platform.meter_cursors"))}
        if last is not None and window_end <= last:
            return None
        window_start = last if last is not None else window_end - self.interval
        try:
            procs = await self._source.processes({t.slug: t.id for t in tenants.values()})
            if getattr(self._source, "unknown_tenants", None):  # a tenant newer than the cache
                async with self._db.platform() as uow:
                    self._tenant_cache = None
                    tenants = await self._tenants(uow.conn)
                procs = await self._source.processes({t.slug: t.id for t in tenants.values()})
            stats = await self._source.node_stats({p.node_id for p in procs}) if procs else {}
            runtime_ok = True
        except Exception as exc:  # no state API or dashboard: API calls and storage go on
            self.runtime_errors += 1
            (log.warning if self.runtime_errors == 1 else log.debug)(
                "reading the Ray runtime failed (%s: %s); windows get no runtime samples "
                "until it works, CPU stays in the cursors", type(exc).__name__, exc)
            procs, stats, runtime_ok = [], {}, False
        measured = measure(procs, stats, cursors, window_start=window_start,
                           window_end=window_end, max_gap=self.max_gap,
                           watching=last is not None)
        async with self._db.platform() as uow:
            conn = uow.conn
            if await _last_window_end(conn, lock=True) != last:
                return None  # another collector recorded it meanwhile
            samples = measured.samples
            samples += await _api_call_samples(conn, window_start, window_end)
            samples += await _storage_samples(conn, tenants, window_start, window_end,
                                              self.max_gap)
            result = await ledger.record(conn, samples, now=self._now())
            if runtime_ok:  # else the old cursors stay: the next reading counts the gap
                await _save_cursors(conn, measured.cursors)
            await conn.execute(text(
                "UPDATE platform.meter_state SET last_window_end = :e WHERE id = 1"),
                {"e": window_end})
            await uow.commit()
        report = TickReport(window_start, window_end, len(procs), len(measured.unseen),
                            result.accepted, result.duplicates, len(result.rejected))
        report.quota_actions = await self._watch(measured.loads, tenants)
        self.ticks += 1
        self.last_report = report
        return report

    async def _tenants(self, conn: AsyncConnection) -> dict[uuid.UUID, TenantInfo]:
        """Tenants and their plans, read again at most every `TENANTS_TTL` (a new tenant's
        processes are then counted from their start: they were not alive at a reading)."""
        now = time.monotonic()
        if self._tenant_cache is None or now - self._tenant_cache[0] > TENANTS_TTL:
            self._tenant_cache = (now, await _tenants(conn))
        return self._tenant_cache[1]

    # -- the runtime quota watch -------------------------------------------------------------

    async def _watch(self, loads: dict[uuid.UUID, TenantLoad],
                     tenants: dict[uuid.UUID, TenantInfo]) -> list[dict[str, Any]]:
        actions = []
        for tenant_id, info in tenants.items():
            over = _over_plan(info.plan, loads.get(tenant_id))
            if not over:
                self._streaks.pop(tenant_id, None)
                continue
            streak = self._streaks[tenant_id] = self._streaks.get(tenant_id, 0) + 1
            if streak < self.quota_samples:
                continue
            self._streaks[tenant_id] = 0
            actions.append(await self._act(info, over, loads[tenant_id]))
        return actions

    async def _act(self, info: TenantInfo, over: list[dict[str, Any]],
                   load: TenantLoad) -> dict[str, Any]:
        policy = info.plan.quota_policy
        stopped: str | None = None
        if policy == "stop_bots" and self._stop_bot is not None:
            stopped = _heaviest_bot(load, memory=over[0]["limit"] == "memory")
            if stopped is not None:
                reason = (f"stopped by the quota watch: {over[0]['limit']} over the plan for "
                          f"{self.quota_samples} samples")
                try:
                    await self._stop_bot(info.id, info.slug, stopped, reason)
                except Exception:
                    log.exception("the quota watch could not stop bot %s", stopped)
                    stopped = None
        detail = {"over": over, "samples": self.quota_samples, "policy": policy,
                  "stopped_bot": stopped}
        async with self._db.platform() as uow:
            await audit.record(uow.conn, info.id, actor="metering", action="quota.exceeded",
                               target=",".join(o["limit"] for o in over), detail=detail)
            await uow.commit()
        event = {"type": "quota", **detail}
        with contextlib.suppress(Exception):  # the stream is best effort; the audit is truth
            await self._publish(info.id, json.loads(json.dumps(event, default=str)))
        log.warning("tenant %s over its plan: %s", info.slug, detail)
        return {"tenant": info.slug, **detail}

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick at every interval boundary (plus a little) until cancelled."""
        while True:
            now = self._now()
            next_end = align(now, self.interval) + self.interval
            await asyncio.sleep(max(0.0, (next_end - now).total_seconds()) + 0.2)
            try:
                await self.tick()
                if self._after_tick is not None:
                    await self._after_tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                self.errors += 1
                log.exception("metering tick failed; the next one covers the window")

    def stats(self) -> dict[str, Any]:
        report = self.last_report
        return {"ticks": self.ticks, "errors": self.errors, "runtime_errors": self.runtime_errors,
                "work_seconds": self.work_seconds,
                "interval": self.interval.total_seconds(),
                "last": None if report is None else {
                    "window_start": report.window_start.isoformat(),
                    "window_end": report.window_end.isoformat(), "processes": report.processes,
                    "unseen": report.unseen, "accepted": report.accepted,
                    "duplicates": report.duplicates, "rejected": report.rejected,
                    "quota_actions": report.quota_actions}}


def _over_plan(plan: Plan, load: TenantLoad | None) -> list[dict[str, Any]]:
    if load is None:
        return []
    over = []
    if plan.memory_bytes is not None and load.rss_bytes > plan.memory_bytes:
        over.append({"limit": "memory", "used": load.rss_bytes, "allowed": plan.memory_bytes})
    if plan.cpu is not None and load.cpu_rate > Decimal(plan.cpu):
        over.append({"limit": "cpu", "used": str(round(load.cpu_rate, 3)),
                     "allowed": str(plan.cpu)})
    return over


def _heaviest_bot(load: TenantLoad, *, memory: bool) -> str | None:
    """The bot id whose strategy process uses the most of the resource, if any."""
    bots = {name: use for name, use in load.by_process.items()
            if name.startswith(STRATEGY_PREFIX)}
    if not bots:
        return None
    name = max(bots, key=lambda n: (bots[n][1] if memory else bots[n][0], n))
    return name[len(STRATEGY_PREFIX):]


# -- the database side ---------------------------------------------------------------------------

async def _last_window_end(conn: AsyncConnection, *, lock: bool = False) -> datetime | None:
    row = (await conn.execute(text(
        "SELECT last_window_end FROM platform.meter_state WHERE id = 1"
        + (" FOR UPDATE" if lock else "")))).one()
    value: datetime | None = row.last_window_end
    return value


async def _tenants(conn: AsyncConnection) -> dict[uuid.UUID, TenantInfo]:
    from tenancy.plans import list_plans

    plans = {p.code: p for p in await list_plans(conn)}
    rows = await conn.execute(text(
        "SELECT id, slug, plan FROM platform.tenants WHERE status <> 'deleted'"))
    return {r.id: TenantInfo(r.id, r.slug, plans[r.plan]) for r in rows}


async def _save_cursors(conn: AsyncConnection,
                        cursors: dict[str, tuple[uuid.UUID, Decimal]]) -> None:
    await conn.execute(text("DELETE FROM platform.meter_cursors"))
    if not cursors:
        return
    keys = sorted(cursors)
    await conn.execute(text(
        "INSERT INTO platform.meter_cursors (key, tenant_id, cpu_seconds, sampled_at)"
        " SELECT k, t, c, now() FROM unnest(CAST(:k AS text[]), CAST(:t AS uuid[]),"
        " CAST(:c AS numeric[])) AS u(k, t, c)"),
        {"k": keys, "t": [cursors[k][0] for k in keys], "c": [cursors[k][1] for k in keys]})


async def _api_call_samples(conn: AsyncConnection, window_start: datetime,
                            window_end: datetime) -> list[Sample]:
    """The gateway's flushed counts not yet in the ledger, per tenant and day."""
    rows = await conn.execute(text(
        "SELECT a.tenant_id, a.day, a.calls - coalesce(d.quantity, 0) AS delta"
        " FROM platform.api_usage a LEFT JOIN platform.usage_daily d"
        "   ON d.tenant_id = a.tenant_id AND d.meter = 'api_calls' AND d.day = a.day"
        " WHERE a.day >= :since AND a.calls > coalesce(d.quantity, 0)"
        "   AND NOT EXISTS (SELECT 1 FROM platform.invoices i WHERE i.tenant_id = a.tenant_id"
        "     AND i.period = date_trunc('month', a.day)::date AND i.status <> 'void')"),
        {"since": (window_end - API_LOOKBACK).date()})
    samples = []
    for r in rows:
        day_start = datetime(r.day.year, r.day.month, r.day.day, tzinfo=UTC)
        day_end = day_start + timedelta(days=1)
        start, end = max(window_start, day_start), min(window_end, day_end)
        source = GATEWAY_SOURCE
        if end <= start:  # flushed late for a day outside this window: the day's last second
            start, end = day_end - timedelta(seconds=1), day_end
            source = f"{GATEWAY_SOURCE}@{window_end:%Y%m%dT%H%M%S}"
        samples.append(Sample(r.tenant_id, "api_calls", start, end, source, Decimal(r.delta)))
    return samples


async def _storage_samples(conn: AsyncConnection, tenants: dict[uuid.UUID, TenantInfo],
                           window_start: datetime, window_end: datetime,
                           max_gap: timedelta) -> list[Sample]:
    if not tenants:
        return []
    by_schema = {tenant_schema(t.slug): t.id for t in tenants.values()}
    rows = await conn.execute(text(
        "SELECT n.nspname AS schema, sum(pg_total_relation_size(c.oid)) AS bytes"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = ANY(:s) AND c.relkind IN ('r', 'm') GROUP BY n.nspname"),
        {"s": list(by_schema)})
    seconds = Decimal(str(min(window_end - window_start, max_gap).total_seconds()))
    return [Sample(by_schema[r.schema], "storage_gb_seconds", window_start, window_end,
                   STORAGE_SOURCE, Decimal(int(r.bytes)) / GB * seconds)
            for r in rows if r.bytes]


# -- the Ray actor -----------------------------------------------------------------------------

class MeteringCollector:
    """The collector as a detached Ray actor (wrapped by `get_or_create_collector`)."""

    def __init__(self, settings: Settings, interval: float = 15.0, quota_samples: int = 3,
                 autostart: bool = True) -> None:
        from redis.asyncio import Redis

        from billing.ray_source import RayRuntime

        self._settings = settings
        assert settings.database_url is not None
        self._db = Database.from_url(settings.database_url, pool_size=2)
        self._redis = Redis.from_url(settings.redis_url or "",
                                     socket_timeout=settings.redis_timeout_seconds)
        self.collector = Collector(self._db, RayRuntime(), interval=interval,
                                   quota_samples=quota_samples, publish=self._publish_event,
                                   stop_bot=self._stop_bot, after_tick=self.enforce_grace)
        self._task: asyncio.Task[None] | None = None
        if autostart:
            import ray

            # Queued behind the constructor: runs once the actor is up (again).
            ray.get_runtime_context().current_actor.start.remote()

    async def start(self) -> None:
        """Start the loop (no-op when it runs)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.collector.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _publish_event(self, tenant_id: uuid.UUID, event: dict[str, Any]) -> None:
        from actors.tenant_runtime import events_channel

        await self._redis.publish(events_channel(tenant_id), json.dumps(event, default=str))

    async def _stop_bot(self, tenant_id: uuid.UUID, slug: str, bot_id: str, reason: str) -> None:
        from actors.supervisor import stop_bot

        await stop_bot(self._settings, self._db, tenant_id, slug, bot_id, status="stopped",
                       error=reason)

    async def enforce_grace(self) -> list[str]:
        """Suspend tenants past due beyond the grace period; stop their bots and jobs."""
        from actors.jobs import RayJobs
        from actors.research import ResearchStore, stop_unfinished_jobs
        from actors.supervisor import stop_all_bots
        from billing.payments import enforce_grace

        grace = timedelta(days=self._settings.billing_grace_days)
        suspended = await enforce_grace(self._db, grace)
        reason = "suspended: payment overdue beyond the grace period"
        for tenant_id, slug in suspended:
            await stop_all_bots(self._settings, tenant_id, slug, reason=reason)
            await stop_unfinished_jobs(ResearchStore(self._db, tenant_id, slug), RayJobs(), reason)
        return [slug for _, slug in suspended]

    async def tick(self) -> dict[str, Any] | None:
        """Run one tick now (tests, the demo); the loop goes on as it was."""
        report = await self.collector.tick()
        return None if report is None else self.collector.stats()["last"]

    async def stats(self) -> dict[str, Any]:
        import os

        return {**self.collector.stats(), "pid": os.getpid(),
                "running": self._task is not None and not self._task.done()}


def get_or_create_collector(settings: Settings, *, interval: float = 15.0,
                            quota_samples: int = 3, autostart: bool = True) -> Any:
    """The collector actor's handle, creating it (detached, restarted forever) when absent.

    The options apply only when the actor is created here; Ray must be initialised.
    """
    import ray

    if not ray.is_initialized():
        raise Unavailable("Ray is not initialised", code="ray_unavailable")
    interval, quota_samples = collector_options(interval=interval, quota_samples=quota_samples)
    actor = ray.remote(MeteringCollector).options(
        name=COLLECTOR_NAME, namespace=COLLECTOR_NAMESPACE, lifetime="detached",
        get_if_exists=True, num_cpus=0, max_restarts=-1, max_concurrency=16,
        resources=settings.system_resources or None)
    return actor.remote(settings, interval, quota_samples, autostart)
