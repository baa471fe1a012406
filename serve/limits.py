"""Per-tenant request rate limits and the monthly API-call quota.

The token bucket of each tenant lives in Redis and is changed only by one atomic Lua
script (`_ADMIT`), which checks the monthly allowance and takes tokens.

**Leases.** A replica may take several tokens at once (a *lease*) and spend them
locally, so requests of busy tenants need no Redis round trip. A lease starts at one
token, doubles while leases are used up and halves while they go to waste, up to 5% of a
second's worth at the plan's rate (never more than the bucket holds); one lease request
per tenant is in flight at a time. Tokens are taken from the
shared bucket before they are spent, so a tenant can never exceed its rate; a lease
that is not used within `lease_seconds` is dropped (the rate is under-used, never
over-used). Plans slow enough that a lease would be one token (starter: 5/s) go to Redis
on every request, which is exact.

**Counting.** Leased calls are counted in process and pushed to Redis every
`push_seconds` by an idempotent script (a retried push is recognised by its id), so
Redis counts lag by at most that interval. Calls admitted one by one are counted by the
admission script itself. Near the monthly allowance (`exact_margin` calls left) every
call goes through Redis, so the quota is exact when it matters.

**Redis down.** The gateway keeps serving, reads and writes alike, and degrades:

* rate limits fall back to an in-process token bucket per replica with the plan's rate,
  so the cluster-wide limit becomes at most ``replicas x rate`` (it fails *partly* open);
* the monthly quota is checked against the last count this replica saw plus its own
  calls since, so calls through other replicas may overrun it;
* calls are counted in process and written to PostgreSQL directly by the usage flusher,
  so none go unbilled. (Calls already counted for a push that failed are kept and
  retried to Redis only: at most one push interval of calls is lost if Redis never
  returns before the replica stops.)

After a Redis error the limiter stays on the fallback for `retry_seconds`.
"""

from __future__ import annotations

import asyncio
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
PUSH_DEDUPE_SECONDS = 86_400

# KEYS: bucket, month counter, pending hash.
# ARGV: rate, burst, month limit (-1: none), pending field, month ttl, tokens wanted,
#       count (1: count this call here; 0: the caller counts leased calls itself).
# Returns {0, granted, used} | {1, retry_ms, 0} (rate) | {2, 0, used} (quota).
_ADMIT = """
local limit = tonumber(ARGV[3])
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if limit >= 0 and used >= limit then return {2, 0, used} end
local want = tonumber(ARGV[6])
local granted = want
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
  granted = math.min(want, math.floor(tokens))
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - granted), 'ts', now)
  redis.call('PEXPIRE', KEYS[1], ttl)
end
if ARGV[7] == '1' then
  used = redis.call('INCR', KEYS[2])
  if used == 1 then redis.call('EXPIRE', KEYS[2], ARGV[5]) end
  redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
end
return {0, granted, used}
"""

# KEYS: dedupe marker, pending hash, then one month counter per entry.
# ARGV: dedupe ttl, month ttl, then per entry: pending field, calls.
# Returns the month counters after the push (or {} when the batch was already pushed).
_PUSH = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return {} end
local out = {}
for i = 3, #KEYS do
  local field = ARGV[(i - 3) * 2 + 3]
  local n = tonumber(ARGV[(i - 3) * 2 + 4])
  redis.call('HINCRBY', KEYS[2], field, n)
  local used = redis.call('INCRBY', KEYS[i], n)
  redis.call('EXPIRE', KEYS[i], ARGV[2])
  out[#out + 1] = used
end
return out
"""


def month_key(tenant_id: uuid.UUID, month: str) -> str:
    return f"atp:calls:month:{tenant_id}:{month}"


def bucket_key(tenant_id: uuid.UUID) -> str:
    return f"atp:rl:{tenant_id}"


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class _Lease:
    size: int
    tokens: int
    expires: float

    def next_size(self, cap: int) -> int:
        """Grow the next lease while leases are used up; shrink it while they go to waste."""
        used = self.size - self.tokens
        if used >= self.size:
            return min(cap, self.size * 2)
        if used * 4 < self.size:
            return max(1, self.size // 2)
        return self.size


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

    def __init__(self, redis: Redis, *, retry_seconds: float = 1.0,
                 lease_seconds: float = 0.05, exact_margin: int = 100) -> None:
        self._redis = redis
        self._admit_script = redis.register_script(_ADMIT)
        self._push_script = redis.register_script(_PUSH)
        self._retry_seconds = retry_seconds
        self._lease_seconds = lease_seconds
        self._exact_margin = exact_margin
        self._redis_down_until = 0.0
        self._leases: dict[uuid.UUID, _Lease] = {}
        self._lease_locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._buckets: dict[uuid.UUID, _Bucket] = {}
        # The month counter as Redis last reported it, and calls counted here since.
        self._month_seen: dict[tuple[uuid.UUID, str], int] = {}
        self._month_local: Counter[tuple[uuid.UUID, str]] = Counter()
        self._to_push: Counter[tuple[uuid.UUID, str]] = Counter()
        self._push_retry: tuple[str, dict[tuple[uuid.UUID, str], int]] | None = None
        self._push_lock = asyncio.Lock()
        self.local_usage = LocalUsage()

    @property
    def degraded(self) -> bool:
        return time.monotonic() < self._redis_down_until

    def _lease_cap(self, tenant: TenantContext) -> int | None:
        """The largest lease for the plan; None when the plan has no rate limit."""
        if not tenant.rate_per_second:
            return None
        rate = float(tenant.rate_per_second)
        return max(1, min(int(rate * self._lease_seconds), tenant.burst or 1))

    async def admit(self, tenant: TenantContext) -> None:
        """Raise `RateLimited` or `QuotaExceeded`, or count the call and return."""
        now = datetime.now(UTC)
        month, day = now.strftime("%Y-%m"), now.strftime("%Y-%m-%d")
        mkey = (tenant.id, month)
        limit = tenant.api_calls_per_month
        used = self._month_seen.get(mkey, 0) + self._month_local[mkey]
        if limit is not None and used >= limit:
            raise _quota(tenant, limit)
        near_limit = limit is not None and limit - used <= self._exact_margin
        cap = self._lease_cap(tenant)
        if not near_limit and not self.degraded:
            if cap is None:
                self._count_leased(tenant.id, month, day)
                return
            if cap > 1:
                if self._spend_lease(tenant.id, month, day):
                    return
                # One lease request in flight per tenant; the others wait and share it.
                lock = self._lease_locks.setdefault(tenant.id, asyncio.Lock())
                async with lock:
                    if self._spend_lease(tenant.id, month, day):
                        return
                    try:
                        previous = self._leases.get(tenant.id)
                        want = previous.next_size(cap) if previous else 1
                        await self._admit_redis(tenant, month, day, exact=False, want=want)
                        return
                    except RedisError as exc:
                        self._redis_failed(exc)
        if not self.degraded:
            try:
                await self._admit_redis(tenant, month, day, exact=True, want=1)
                return
            except RedisError as exc:
                self._redis_failed(exc)
        self._admit_local(tenant, month, day)

    def _redis_failed(self, exc: RedisError) -> None:
        log.warning("redis unavailable for rate limits (%s); using local limits",
                    type(exc).__name__)
        self._redis_down_until = time.monotonic() + self._retry_seconds

    def _spend_lease(self, tenant_id: uuid.UUID, month: str, day: str) -> bool:
        lease = self._leases.get(tenant_id)
        if lease is None or lease.tokens <= 0 or lease.expires <= time.monotonic():
            return False
        lease.tokens -= 1
        self._count_leased(tenant_id, month, day)
        return True

    def _count_leased(self, tenant_id: uuid.UUID, month: str, day: str) -> None:
        self._to_push[(tenant_id, day)] += 1
        self._month_local[(tenant_id, month)] += 1

    async def _admit_redis(self, tenant: TenantContext, month: str, day: str, *,
                           exact: bool, want: int) -> None:
        rate = float(tenant.rate_per_second or 0)
        limit = tenant.api_calls_per_month if tenant.api_calls_per_month is not None else -1
        started = time.monotonic()
        outcome, value, used = await self._admit_script(
            keys=[bucket_key(tenant.id), month_key(tenant.id, month), PENDING_KEY],
            args=[rate, tenant.burst or max(1, int(rate)), limit, f"{tenant.id}|{day}",
                  MONTH_TTL_SECONDS, want, 1 if exact else 0])
        mkey = (tenant.id, month)
        self._month_seen[mkey] = max(self._month_seen.get(mkey, 0), int(used))
        if outcome == 2:
            raise _quota(tenant, limit)
        if outcome == 1:
            raise _rate(tenant, int(value) / 1000)
        if not exact:
            granted = int(value)
            self._leases[tenant.id] = _Lease(max(granted, want), granted - 1,
                                             started + self._lease_seconds)
            self._count_leased(tenant.id, month, day)

    def _admit_local(self, tenant: TenantContext, month: str, day: str) -> None:
        if tenant.rate_per_second:
            rate = float(tenant.rate_per_second)
            burst = float(tenant.burst or max(1, int(rate)))
            now = time.monotonic()
            bucket = self._buckets.setdefault(tenant.id, _Bucket(burst, now))
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens < 1:
                raise _rate(tenant, (1 - bucket.tokens) / rate)
            bucket.tokens -= 1
        self._month_local[(tenant.id, month)] += 1
        self.local_usage.add(tenant.id, day)

    async def push(self) -> int:
        """Add calls counted in process to Redis, exactly once; return how many."""
        async with self._push_lock:
            return await self._push()

    async def _push(self) -> int:
        if self._push_retry is None:
            if not self._to_push:
                return 0
            self._push_retry = (uuid.uuid4().hex, dict(self._to_push))
            self._to_push = Counter()
        batch_id, counts = self._push_retry
        entries = sorted(counts.items())
        keys = [f"atp:calls:pushed:{batch_id}", PENDING_KEY]
        args: list[str | int] = [PUSH_DEDUPE_SECONDS, MONTH_TTL_SECONDS]
        for (tenant_id, day), n in entries:
            keys.append(month_key(tenant_id, day[:7]))
            args += [f"{tenant_id}|{day}", n]
        totals = await self._push_script(keys=keys, args=args)  # failures retry this batch
        self._push_retry = None
        for i, ((tenant_id, day), n) in enumerate(entries):
            mkey = (tenant_id, day[:7])
            self._month_local[mkey] = max(0, self._month_local[mkey] - n)
            if totals:
                self._month_seen[mkey] = max(self._month_seen.get(mkey, 0), int(totals[i]))
            else:  # already pushed before: Redis's counter includes these calls
                self._month_seen[mkey] = self._month_seen.get(mkey, 0) + n
        return sum(counts.values())


def _quota(tenant: TenantContext, limit: int) -> QuotaExceeded:
    return QuotaExceeded(f"the {tenant.plan} plan's {limit} API calls for this month are used "
                         "up", code="quota_exceeded")


def _rate(tenant: TenantContext, retry_after: float) -> RateLimited:
    return RateLimited(f"more than {tenant.rate_per_second} requests per second for the "
                       f"{tenant.plan} plan", retry_after=max(retry_after, 0.001))
