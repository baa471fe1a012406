"""Per-tenant request rate limits and the monthly API-call quota.

Normal path: one atomic Lua script in Redis checks the monthly allowance, takes a token
from the tenant's bucket (refilled at the plan's rate, holding up to its burst) and counts
the call, in one round trip.

While Redis cannot be reached the gateway keeps serving (reads and writes) and degrades:

* rate limits fall back to an in-process token bucket per replica with the plan's rate,
  so the cluster-wide limit becomes at most ``replicas × rate`` (it fails *partly* open);
* the monthly quota is checked against the last count this replica saw plus its own
  calls since, so it may be overrun by calls made through other replicas;
* calls are counted in process and written to PostgreSQL directly by the usage flusher,
  so none go unbilled.

After a Redis error the limiter stays on the fallback for `retry_seconds` before trying
Redis again, so an outage does not add a timeout to every request.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis.asyncio import Redis
from redis.exceptions import RedisError

from tenancy.auth import TenantContext
from trading.errors import QuotaExceeded, RateLimited

log = logging.getLogger(__name__)

PENDING_KEY = "atp:calls:pending"
MONTH_TTL_SECONDS = 40 * 86_400

_ADMIT = """
local limit = tonumber(ARGV[3])
if limit >= 0 then
  local used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if used >= limit then return {2, 0, used} end
end
local rate = tonumber(ARGV[1])
if rate > 0 then
  local burst = tonumber(ARGV[2])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  local tokens = tonumber(b[1]) or burst
  local ts = tonumber(b[2]) or now
  tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
  local ttl = math.ceil(burst * 1000 / rate) + 1000
  if tokens < 1 then
    redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
    redis.call('PEXPIRE', KEYS[1], ttl)
    return {1, math.ceil((1 - tokens) * 1000 / rate), 0}
  end
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'ts', now)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local used = redis.call('INCR', KEYS[2])
if used == 1 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
return {0, 0, used}
"""


def month_key(tenant_id: uuid.UUID, month: str) -> str:
    return f"atp:calls:month:{tenant_id}:{month}"


def bucket_key(tenant_id: uuid.UUID) -> str:
    return f"atp:rl:{tenant_id}"


@dataclass
class _LocalBucket:
    tokens: float
    stamp: float


@dataclass
class LocalUsage:
    """Calls counted in process while Redis was unreachable, keyed (tenant, day)."""

    counts: Counter[tuple[uuid.UUID, str]] = field(default_factory=Counter)

    def add(self, tenant_id: uuid.UUID, day: str) -> None:
        self.counts[(tenant_id, day)] += 1

    def take(self) -> dict[tuple[uuid.UUID, str], int]:
        taken, self.counts = dict(self.counts), Counter()
        return taken


class Limiter:
    """Admits or refuses one tenant request and counts it (see the module docstring)."""

    def __init__(self, redis: Redis, *, retry_seconds: float = 1.0) -> None:
        self._redis = redis
        self._admit = redis.register_script(_ADMIT)
        self._retry_seconds = retry_seconds
        self._redis_down_until = 0.0
        self._buckets: dict[uuid.UUID, _LocalBucket] = {}
        self._month_seen: dict[tuple[uuid.UUID, str], int] = {}
        self.local_usage = LocalUsage()

    @property
    def degraded(self) -> bool:
        return time.monotonic() < self._redis_down_until

    async def admit(self, tenant: TenantContext) -> None:
        """Raise `RateLimited` or `QuotaExceeded`, or count the call and return."""
        now = datetime.now(UTC)
        month, day = now.strftime("%Y-%m"), now.strftime("%Y-%m-%d")
        if not self.degraded:
            try:
                await self._admit_redis(tenant, month, day)
                return
            except RedisError as exc:
                log.warning("redis unavailable for rate limits (%s); using local limits",
                            type(exc).__name__)
                self._redis_down_until = time.monotonic() + self._retry_seconds
        self._admit_local(tenant, month, day)

    async def _admit_redis(self, tenant: TenantContext, month: str, day: str) -> None:
        rate = float(tenant.rate_per_second or 0)
        limit = tenant.api_calls_per_month if tenant.api_calls_per_month is not None else -1
        outcome, wait_ms, used = await self._admit(
            keys=[bucket_key(tenant.id), month_key(tenant.id, month), PENDING_KEY],
            args=[rate, tenant.burst or max(1, int(rate)), limit, f"{tenant.id}|{day}",
                  MONTH_TTL_SECONDS])
        if outcome == 2:
            self._month_seen[(tenant.id, month)] = int(used)
            raise _quota(tenant, limit)
        if outcome == 1:
            raise _rate(tenant, int(wait_ms) / 1000)
        self._month_seen[(tenant.id, month)] = int(used)

    def _admit_local(self, tenant: TenantContext, month: str, day: str) -> None:
        limit = tenant.api_calls_per_month
        seen_key = (tenant.id, month)
        used = self._month_seen.get(seen_key, 0)
        if limit is not None and used >= limit:
            raise _quota(tenant, limit)
        if tenant.rate_per_second:
            rate = float(tenant.rate_per_second)
            burst = float(tenant.burst or max(1, int(rate)))
            now = time.monotonic()
            bucket = self._buckets.setdefault(tenant.id, _LocalBucket(burst, now))
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens < 1:
                raise _rate(tenant, (1 - bucket.tokens) / rate)
            bucket.tokens -= 1
        self._month_seen[seen_key] = used + 1
        self.local_usage.add(tenant.id, day)


def _quota(tenant: TenantContext, limit: int) -> QuotaExceeded:
    return QuotaExceeded(f"the {tenant.plan} plan's {limit} API calls for this month are used "
                         "up", code="quota_exceeded")


def _rate(tenant: TenantContext, retry_after: float) -> RateLimited:
    return RateLimited(f"more than {tenant.rate_per_second} requests per second for the "
                       f"{tenant.plan} plan", retry_after=retry_after)
