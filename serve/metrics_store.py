"""Request metrics in Redis: every replica adds its deltas, any replica reads the totals.

Five hashes hold the cluster-wide counters, one field per label set (label values joined
by `serve.metrics.SEP`); histogram buckets are stored per bucket, not cumulatively.
`MetricsFlusher.flush` adds one replica's deltas with one script call. Each batch carries
the replica's id and a sequence number, and the script skips a sequence it has applied
already, so a batch retried after a lost reply is counted once.

Redis down: the batch stays with the flusher and is retried at the next interval while
the recorder keeps counting (bounded by its `max_series`; what does not fit is counted
as dropped). A batch Redis refuses (an error reply, not a lost connection) is dropped
and counted. Nothing here runs on a request's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from serve.metrics import Deltas, MetricsRecorder, labels_of

log = logging.getLogger(__name__)

PREFIX = "atp:metrics:"
REQUESTS_KEY = PREFIX + "requests"
BUCKETS_KEY = PREFIX + "duration:buckets"
SUMS_KEY = PREFIX + "duration:sum"
ERRORS_KEY = PREFIX + "errors"
RATE_LIMITED_KEY = PREFIX + "rate_limited"
DROPPED_KEY = PREFIX + "dropped"
DROPPED_FIELD = "observations"
SEQ_TTL_SECONDS = 86_400
CLOSE_SECONDS = 2.0
HASHES = (REQUESTS_KEY, BUCKETS_KEY, SUMS_KEY, ERRORS_KEY, RATE_LIMITED_KEY, DROPPED_KEY)

# KEYS: the replica's sequence marker, then the hashes.
# ARGV: sequence, marker ttl, then triples (hash index into KEYS, field, increment).
# Returns 1, or 0 when this sequence was applied before.
_APPLY = """
local seq = tonumber(ARGV[1])
if seq <= tonumber(redis.call('GET', KEYS[1]) or '0') then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
for i = 3, #ARGV, 3 do
  local key = KEYS[tonumber(ARGV[i])]
  if string.find(ARGV[i + 2], '[.eE]') then
    redis.call('HINCRBYFLOAT', key, ARGV[i + 1], ARGV[i + 2])
  else
    redis.call('HINCRBY', key, ARGV[i + 1], ARGV[i + 2])
  end
end
return 1
"""


def _args(deltas: Deltas) -> list[str | int]:
    args: list[str | int] = []
    maps: tuple[Mapping[str, int | float], ...] = (
        deltas.requests, deltas.buckets, deltas.sums, deltas.errors, deltas.rate_limited,
        {DROPPED_FIELD: deltas.dropped} if deltas.dropped else {})
    for index, values in enumerate(maps, start=2):  # KEYS[1] is the sequence marker
        for name, value in values.items():
            args += [index, name, repr(float(value)) if isinstance(value, float) else int(value)]
    return args


class MetricsFlusher:
    """Adds one replica's recorded metrics to Redis (see the module docstring)."""

    def __init__(self, redis: Redis, recorder: MetricsRecorder) -> None:
        self._redis = redis
        self._recorder = recorder
        self._apply = redis.register_script(_APPLY)
        self._marker = f"{PREFIX}seq:{uuid.uuid4().hex}"
        self._seq = 0
        self._batch: tuple[int, Deltas] | None = None
        self._lock = asyncio.Lock()
        self._failing_since: float | None = None

    @property
    def waiting(self) -> bool:
        """A batch is waiting for Redis."""
        return self._batch is not None

    async def flush(self) -> int:
        """Add the waiting batch, or else what was recorded since, to Redis; return how many
        requests it held. Raises `RedisError` when Redis cannot be reached (kept for later)."""
        async with self._lock:
            if self._batch is None:
                deltas = self._recorder.take()
                if not deltas:
                    return 0
                self._seq += 1
                self._batch = (self._seq, deltas)
            seq, deltas = self._batch
            try:
                await self._apply(keys=[self._marker, *HASHES],
                                  args=[seq, SEQ_TTL_SECONDS, *_args(deltas)])
            except ResponseError:
                self._batch = None  # refused as it is: retrying would not help
                self._recorder.drop(deltas.observations() + deltas.dropped)
                log.exception("redis refused a metrics batch; %d requests dropped",
                              deltas.observations())
                return 0
            self._batch = None
            return deltas.observations()

    async def flush_all(self) -> int:
        """Flush until nothing waits (the waiting batch, then what was recorded since)."""
        total = await self.flush()
        if total:
            total += await self.flush()
        return total

    async def run(self, interval: float) -> None:
        """Flush every `interval` seconds until cancelled; Redis errors wait for the next."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush_all()
            except Exception as exc:  # Redis down, mostly: the batch waits for the next try
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                    log.warning("metrics flush to redis failed (%s); retrying every %.1f s",
                                type(exc).__name__, interval)
                continue
            if self._failing_since is not None:
                log.info("metrics flush to redis works again after %.0f s",
                         time.monotonic() - self._failing_since)
                self._failing_since = None

    async def close(self) -> None:
        """A last flush at shutdown, bounded by `CLOSE_SECONDS`; what does not make it is lost."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush_all(), CLOSE_SECONDS)


@dataclass
class Counters:
    """The cluster-wide request metrics as Redis holds them, keyed by label tuples."""

    requests: dict[tuple[str, ...], int] = field(default_factory=dict)
    buckets: dict[tuple[str, ...], int] = field(default_factory=dict)
    sums: dict[tuple[str, ...], float] = field(default_factory=dict)
    errors: dict[tuple[str, ...], int] = field(default_factory=dict)
    rate_limited: dict[tuple[str, ...], int] = field(default_factory=dict)
    dropped: int = 0


def _decoded(raw: Mapping[bytes | str, bytes | str]) -> dict[tuple[str, ...], str]:
    out = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        out[tuple(labels_of(name))] = value.decode() if isinstance(value, bytes) else value
    return out


async def read_counters(redis: Redis) -> Counters:
    """Every counter in one consistent read (a MULTI/EXEC of HGETALLs)."""
    async with redis.pipeline(transaction=True) as pipe:
        for key in HASHES:
            pipe.hgetall(key)
        requests, buckets, sums, errors, limited, dropped = await pipe.execute()
    return Counters(
        requests={k: int(v) for k, v in _decoded(requests).items()},
        buckets={k: int(v) for k, v in _decoded(buckets).items()},
        sums={k: float(v) for k, v in _decoded(sums).items()},
        errors={k: int(v) for k, v in _decoded(errors).items()},
        rate_limited={k: int(v) for k, v in _decoded(limited).items()},
        dropped=int(_decoded(dropped).get((DROPPED_FIELD,), 0)))
