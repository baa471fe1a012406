"""Flush API-call counts from Redis (and from a replica's local fallback) to PostgreSQL.

Exactly once: the pending hash is atomically renamed to a batch with a fresh id; the
batch is added to ``platform.api_usage`` in one transaction that also records its id in
``platform.usage_batches``, so a batch applied twice (a crash between the commit and the
Redis delete, or two replicas flushing at once) is recognised and skipped. After a flush
the month counters in Redis are raised to at least what PostgreSQL holds, which reseeds
them after Redis lost its data.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from datetime import date

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text

from serve.limits import MONTH_TTL_SECONDS, PENDING_KEY, Limiter, month_key
from tenancy.db import Database

log = logging.getLogger(__name__)

BATCHES_SET = "atp:calls:batches"
_BATCH_PREFIX = "atp:calls:batch:"

_SEAL = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('SADD', KEYS[3], ARGV[1])
  return 1
end
return 0
"""

_RAISE_MONTH = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
return 0
"""

Counts = dict[tuple[uuid.UUID, str], int]


async def apply_batch(db: Database, batch_id: str, counts: Counts) -> bool:
    """Add a batch of (tenant, day) → calls to PostgreSQL once; False if already applied."""
    async with db.platform() as uow:
        inserted = (await uow.conn.execute(
            text("INSERT INTO platform.usage_batches (batch_id) VALUES (:b)"
                 " ON CONFLICT DO NOTHING RETURNING batch_id"), {"b": batch_id})).first()
        if inserted is None:
            return False
        for (tenant_id, day), calls in sorted(counts.items()):
            await uow.conn.execute(
                text("INSERT INTO platform.api_usage (tenant_id, day, calls)"
                     " VALUES (:t, :d, :c) ON CONFLICT (tenant_id, day)"
                     " DO UPDATE SET calls = platform.api_usage.calls + EXCLUDED.calls"),
                {"t": tenant_id, "d": date.fromisoformat(day), "c": calls})
        await uow.commit()
    return True


async def month_totals(db: Database, tenant_ids: set[uuid.UUID]) -> dict[tuple[uuid.UUID, str], int]:
    """Calls per (tenant, 'YYYY-MM') in PostgreSQL for the given tenants."""
    async with db.platform() as uow:
        rows = await uow.conn.execute(text(
            "SELECT tenant_id, to_char(day, 'YYYY-MM') AS month, sum(calls) AS calls"
            " FROM platform.api_usage WHERE tenant_id = ANY(:t)"
            " AND day >= date_trunc('month', now() - interval '1 month')"
            " GROUP BY tenant_id, month"), {"t": list(tenant_ids)})
        return {(r.tenant_id, r.month): int(r.calls) for r in rows}


class UsageFlusher:
    """Moves counted calls into PostgreSQL; one per gateway replica, safe to run in many."""

    def __init__(self, db: Database, redis: Redis, limiter: Limiter) -> None:
        self._db = db
        self._redis = redis
        self._limiter = limiter
        self._local = limiter.local_usage
        self._seal = redis.register_script(_SEAL)
        self._raise_month = redis.register_script(_RAISE_MONTH)
        self._replica = uuid.uuid4().hex
        self._local_seq = 0
        self._local_pending: tuple[str, Counts] | None = None

    async def flush(self) -> int:
        """Flush everything pending; return the number of calls newly recorded."""
        recorded, touched = await self._flush_local()
        try:
            await self._limiter.push()
            from_redis, touched_redis = await self._flush_redis()
            await self._reconcile(touched | touched_redis)
        except RedisError as exc:
            log.warning("usage flush from redis skipped: %s", type(exc).__name__)
            return recorded
        return recorded + from_redis

    async def _flush_local(self) -> tuple[int, set[uuid.UUID]]:
        if self._local_pending is None:
            counts = self._local.take()
            if not counts:
                return 0, set()
            self._local_seq += 1
            self._local_pending = (f"local:{self._replica}:{self._local_seq}", counts)
        batch_id, counts = self._local_pending
        applied = await apply_batch(self._db, batch_id, counts)  # a failure retries this id
        self._local_pending = None
        return (sum(counts.values()) if applied else 0), {t for t, _ in counts}

    async def _reconcile(self, tenants: set[uuid.UUID]) -> None:
        if not tenants:
            return
        for (tenant_id, month), calls in (await month_totals(self._db, tenants)).items():
            await self._raise_month(keys=[month_key(tenant_id, month)],
                                    args=[calls, MONTH_TTL_SECONDS])

    async def _flush_redis(self) -> tuple[int, set[uuid.UUID]]:
        batch_id = uuid.uuid4().hex
        await self._seal(keys=[PENDING_KEY, _BATCH_PREFIX + batch_id, BATCHES_SET],
                         args=[batch_id])
        recorded = 0
        touched: set[uuid.UUID] = set()
        for raw_id in await self._redis.smembers(BATCHES_SET):
            bid = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
            raw = await self._redis.hgetall(_BATCH_PREFIX + bid)
            counts: Counts = defaultdict(int)
            for key, value in raw.items():
                tenant, day = (key.decode() if isinstance(key, bytes) else key).split("|")
                counts[(uuid.UUID(tenant), day)] += int(value)
            if counts and await apply_batch(self._db, bid, dict(counts)):
                recorded += sum(counts.values())
            touched.update(t for t, _ in counts)
            await self._redis.delete(_BATCH_PREFIX + bid)
            await self._redis.srem(BATCHES_SET, bid)
        return recorded, touched
