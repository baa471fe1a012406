"""Throttle password guessing: too many failed sign-ins for one email → 429 for a while.

Counts failures per email (hashed) in Redis for `window_seconds`; at `max_failures` the
address is refused, correct password or not, until the window ends. A success clears the
count. While Redis is down the guard lets sign-ins through (argon2 still makes each guess
cost tens of milliseconds).
"""

from __future__ import annotations

import hashlib
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from trading.errors import RateLimited

log = logging.getLogger(__name__)


class LoginGuard:
    def __init__(self, redis: Redis, *, max_failures: int = 10, window_seconds: int = 900) -> None:
        self._redis = redis
        self._max = max_failures
        self._window = window_seconds

    @staticmethod
    def _key(email: str) -> str:
        return "atp:login:fail:" + hashlib.sha256(email.encode()).hexdigest()

    async def check(self, email: str) -> None:
        """Raise `RateLimited` while this email is locked out."""
        try:
            key = self._key(email)
            failures = int(await self._redis.get(key) or 0)
            if failures >= self._max:
                ttl = await self._redis.ttl(key)
                raise RateLimited("too many failed sign-ins for this email; try again later",
                                  retry_after=max(1, ttl), code="too_many_login_attempts")
        except RedisError as exc:
            log.warning("login guard unavailable (%s)", type(exc).__name__)

    async def failed(self, email: str) -> None:
        try:
            key = self._key(email)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, self._window, nx=True)
                await pipe.execute()
        except RedisError as exc:
            log.warning("login guard unavailable (%s)", type(exc).__name__)

    async def succeeded(self, email: str) -> None:
        try:
            await self._redis.delete(self._key(email))
        except RedisError as exc:
            log.warning("login guard unavailable (%s)", type(exc).__name__)
