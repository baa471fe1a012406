"""A per-replica cache of authenticated credentials, invalidated by PostgreSQL NOTIFY.

Checking a credential costs a database round trip; the gateway answers most requests
from this cache instead. Correctness comes from the database: every change that can
withdraw access (revoking a key, suspending, re-planning or deleting a tenant) sends
``pg_notify('atp_auth', <tenant id>)`` in its own transaction, so every replica drops
that tenant's entries the moment the change commits. A result read from the database
while an invalidation arrived is not cached (per-tenant generations), and entries
expire after `ttl_seconds` regardless, which bounds staleness if the listening
connection is down (while it is down, nothing is cached at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import urllib.parse
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import asyncpg

from tenancy.auth import AUTH_CHANNEL, OPERATOR, Authenticator, Principal
from tenancy.db import Database

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    principal: Principal
    expires: float


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """Turn a ``postgresql+asyncpg://`` URL into a plain DSN for asyncpg."""
    parts = urllib.parse.urlsplit(sqlalchemy_url)
    return urllib.parse.urlunsplit(("postgresql", *parts[1:]))


class AuthCache:
    """Wraps an `Authenticator`; one per replica."""

    def __init__(self, inner: Authenticator, db: Database, dsn: str, *,
                 ttl_seconds: float = 5.0, max_entries: int = 10_000) -> None:
        self._inner = inner
        self._db = db
        self._dsn = dsn
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._generation: dict[uuid.UUID, int] = {}
        self._listening = False
        self._task: asyncio.Task[None] | None = None

    @property
    def listening(self) -> bool:
        return self._listening

    async def authenticate(self, credential: str) -> Principal:
        if credential and self._inner.is_operator(credential):
            return OPERATOR
        key = hashlib.sha256(credential.encode()).digest()
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is not None and entry.expires > now:
            return entry.principal
        listening = self._listening
        generations = dict(self._generation)
        async with self._db.platform() as uow:
            principal = await self._inner.authenticate(uow.conn, credential)
            await uow.commit()
        tenant_id = principal.tenant.id if principal.tenant else None
        if (listening and self._listening and tenant_id is not None
                and self._generation.get(tenant_id, 0) == generations.get(tenant_id, 0)):
            self._entries[key] = _Entry(principal, now + self._ttl)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
        return principal

    def invalidate(self, tenant_id: uuid.UUID | None = None) -> None:
        """Forget one tenant's entries (or all of them)."""
        if tenant_id is None:
            self._entries.clear()
            for t in self._generation:
                self._generation[t] += 1
            return
        self._generation[tenant_id] = self._generation.get(tenant_id, 0) + 1
        for key in [k for k, e in self._entries.items()
                    if e.principal.tenant and e.principal.tenant.id == tenant_id]:
            del self._entries[key]

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            self.invalidate(uuid.UUID(payload))
        except ValueError:
            self.invalidate()

    async def _listen_forever(self) -> None:
        delay = 0.5
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(AUTH_CHANNEL, self._on_notify)
                self._listening, delay = True, 0.5
                while not lost.is_set() and not conn.is_closed():
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5.0)
                    if not conn.is_closed():
                        await conn.execute("SELECT 1")  # notice a dead socket
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("auth invalidation listener down (%s); retrying",
                            type(exc).__name__)
            finally:
                self._listening = False
                self.invalidate()
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
