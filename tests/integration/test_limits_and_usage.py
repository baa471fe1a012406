"""Rate limits, monthly quota and exactly-once usage flushing, on real Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import redis.asyncio as aioredis
from sqlalchemy import text

from serve.limits import PENDING_KEY, Limiter, month_key
from serve.usage import BATCHES_SET, UsageFlusher, apply_batch
from tenancy.auth import TenantContext
from tenancy.db import Database
from tests.conftest import TenantFactory
from trading.errors import QuotaExceeded, RateLimited


def _ctx(tenant_id: uuid.UUID, *, rate: float | None = 5, burst: int | None = 10,
         calls: int | None = 10_000, plan: str = "starter") -> TenantContext:
    return TenantContext(tenant_id, "t-x", "X", plan, "active",
                         Decimal(str(rate)) if rate else None, burst, calls)


async def _calls_in_db(db: Database, tenant_id: uuid.UUID) -> int:
    async with db.platform() as uow:
        return int((await uow.conn.execute(text(
            "SELECT coalesce(sum(calls), 0) FROM platform.api_usage WHERE tenant_id = :t"),
            {"t": tenant_id})).scalar_one())


async def test_token_bucket_allows_the_burst_then_limits(redis_client: aioredis.Redis) -> None:
    limiter = Limiter(redis_client)
    ctx = _ctx(uuid.uuid4(), rate=5, burst=10)
    admitted, refused = 0, []
    for _ in range(15):
        try:
            await limiter.admit(ctx)
            admitted += 1
        except RateLimited as exc:
            refused.append(exc)
    assert 10 <= admitted <= 11  # the burst, plus at most one token refilled meanwhile
    assert refused and all(0 < e.retry_after <= 0.2 + 1e-9 for e in refused)
    await asyncio.sleep(0.45)  # 5/s refills two tokens in 0.4 s
    await limiter.admit(ctx)
    await limiter.admit(ctx)


async def test_limits_are_shared_between_replicas(redis_client: aioredis.Redis) -> None:
    replicas = [Limiter(redis_client), Limiter(redis_client)]
    ctx = _ctx(uuid.uuid4(), rate=1, burst=4)
    outcomes = []
    for i in range(8):
        try:
            await replicas[i % 2].admit(ctx)
            outcomes.append(True)
        except RateLimited:
            outcomes.append(False)
    assert outcomes.count(True) == 4


async def test_monthly_quota(redis_client: aioredis.Redis) -> None:
    limiter = Limiter(redis_client)
    ctx = _ctx(uuid.uuid4(), rate=1000, burst=1000, calls=3)
    for _ in range(3):
        await limiter.admit(ctx)
    with pytest.raises(QuotaExceeded) as info:
        await limiter.admit(ctx)
    assert info.value.code == "quota_exceeded"
    month = datetime.now(UTC).strftime("%Y-%m")
    assert int(await redis_client.get(month_key(ctx.id, month))) == 3


async def test_unlimited_plans_are_counted_but_never_refused(redis_client: aioredis.Redis) -> None:
    limiter = Limiter(redis_client)
    ctx = _ctx(uuid.uuid4(), rate=None, burst=None, calls=None, plan="enterprise")
    for _ in range(50):
        await limiter.admit(ctx)
    assert await limiter.push() == 50
    assert await limiter.push() == 0
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    assert int(await redis_client.hget(PENDING_KEY, f"{ctx.id}|{day}")) == 50


async def test_flush_moves_counts_to_postgres_exactly_once(
        db: Database, redis_client: aioredis.Redis, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    limiter = Limiter(redis_client)
    flushers = [UsageFlusher(db, redis_client, Limiter(redis_client)) for _ in range(2)]
    flushers.append(UsageFlusher(db, redis_client, limiter))
    ctx = _ctx(t.id, rate=None, burst=None, calls=None)
    for _ in range(25):
        await limiter.admit(ctx)
    # Three replicas flush at once: the calls land once.
    await asyncio.gather(*(f.flush() for f in flushers))
    assert await _calls_in_db(db, t.id) == 25
    for _ in range(5):
        await limiter.admit(ctx)
    await flushers[2].flush()  # the replica that counted them pushes and flushes
    await flushers[0].flush()
    assert await _calls_in_db(db, t.id) == 30
    assert await redis_client.scard(BATCHES_SET) == 0


async def test_a_batch_applied_before_a_crash_is_not_applied_again(
        db: Database, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    assert await apply_batch(db, "crash-test-" + t.slug, {(t.id, day): 7})
    assert not await apply_batch(db, "crash-test-" + t.slug, {(t.id, day): 7})
    assert await _calls_in_db(db, t.id) == 7


async def test_month_counter_is_reseeded_from_postgres_after_redis_loses_it(
        db: Database, redis_client: aioredis.Redis, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    limiter = Limiter(redis_client)
    flusher = UsageFlusher(db, redis_client, limiter)
    ctx = _ctx(t.id, rate=None, burst=None, calls=5)
    for _ in range(4):
        await limiter.admit(ctx)
    await flusher.flush()
    month = datetime.now(UTC).strftime("%Y-%m")
    await redis_client.delete(month_key(t.id, month))  # Redis restarted without its data
    await limiter.admit(ctx)  # counter restarts at 1...
    await flusher.flush()  # ...and the flush raises it back to what PostgreSQL holds
    assert int(await redis_client.get(month_key(t.id, month))) == 5
    with pytest.raises(QuotaExceeded):
        await limiter.admit(ctx)


async def test_redis_down_keeps_serving_with_local_limits_and_counts(
        db: Database, make_tenant: TenantFactory) -> None:
    t = (await make_tenant()).tenant
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2,
                          socket_timeout=0.2)
    limiter = Limiter(dead, retry_seconds=60)
    ctx = _ctx(t.id, rate=2, burst=3, calls=1000)
    outcomes = []
    for _ in range(6):
        try:
            await limiter.admit(ctx)
            outcomes.append(True)
        except RateLimited:
            outcomes.append(False)
    assert limiter.degraded
    assert outcomes[:3] == [True, True, True] and outcomes.count(True) <= 4
    flusher = UsageFlusher(db, dead, limiter)
    recorded = await flusher.flush()
    assert recorded == outcomes.count(True)
    assert await _calls_in_db(db, t.id) == outcomes.count(True)
    await dead.aclose()


async def test_leases_never_exceed_the_shared_bucket(redis_client: aioredis.Redis) -> None:
    """Busy plans take tokens in leases; across replicas the bucket still bounds them."""
    replicas = [Limiter(redis_client, lease_seconds=0.05) for _ in range(3)]
    ctx = _ctx(uuid.uuid4(), rate=400, burst=40, calls=None)  # leases of 20 tokens
    admitted = 0
    started = asyncio.get_running_loop().time()
    for i in range(300):
        try:
            await replicas[i % 3].admit(ctx)
            admitted += 1
        except RateLimited:
            pass
    elapsed = asyncio.get_running_loop().time() - started
    assert admitted <= 40 + 400 * elapsed + 1
    assert admitted >= 40  # the burst is usable


async def test_leased_calls_are_pushed_once_even_when_a_push_is_retried(
        redis_client: aioredis.Redis) -> None:
    limiter = Limiter(redis_client)
    ctx = _ctx(uuid.uuid4(), rate=10_000, burst=10_000, calls=None)
    for _ in range(30):
        await limiter.admit(ctx)
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    field = f"{ctx.id}|{day}"
    assert await redis_client.hget(PENDING_KEY, field) is None  # counted in process so far
    batch = dict(limiter._to_push)
    limiter._push_retry = ("retried-" + ctx.id.hex, batch)
    limiter._to_push.clear()
    await limiter.push()
    limiter._push_retry = ("retried-" + ctx.id.hex, batch)  # as if the reply had been lost
    await limiter.push()
    assert int(await redis_client.hget(PENDING_KEY, field)) == 30
    month = datetime.now(UTC).strftime("%Y-%m")
    assert int(await redis_client.get(month_key(ctx.id, month))) == 30


async def test_quota_is_exact_near_the_limit_with_leases(redis_client: aioredis.Redis) -> None:
    limiter = Limiter(redis_client, exact_margin=10)
    ctx = _ctx(uuid.uuid4(), rate=10_000, burst=10_000, calls=50)
    admitted = 0
    for _ in range(70):
        try:
            await limiter.admit(ctx)
            admitted += 1
        except QuotaExceeded:
            pass
        if admitted % 7 == 0:
            await limiter.push()
    assert admitted == 50
