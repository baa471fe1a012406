"""Database engine and units of work.

Two kinds of unit of work, both one transaction that rolls back unless committed:

* `Database.platform()` runs as the platform's own role (master schema, provisioning).
* `Database.tenant(tenant_id, slug)` begins by setting, for the transaction only, the
  tenant's role, ``search_path`` and ``atp.tenant_id``, so PostgreSQL itself refuses any
  other tenant's schema and row-level security hides other tenants' shared rows.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from tenancy.identifiers import quote_ident, tenant_schema
from trading.errors import Unavailable

PING_AFTER_IDLE_SECONDS = 0.5


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """Create the async engine (asyncpg) for `url`, pinging connections that sat idle."""
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": "atp"}},
    )
    _ping_when_idle(engine, PING_AFTER_IDLE_SECONDS)
    return engine


def _ping_when_idle(engine: AsyncEngine, after: float) -> None:
    """Ping a pooled connection on checkout unless it was checked in less than `after` s ago.

    SQLAlchemy's ``pool_pre_ping`` costs a round trip before every unit of work, which on
    a busy path (an order and its fill are two units) is one in four or five. A connection
    returned a moment ago was alive a moment ago, so it is handed out without a ping, as
    HikariCP does within its 500 ms ``aliveBypassWindowMs``. One that fails the ping is
    replaced (`DisconnectionError` makes the pool reconnect and retry).
    """
    sync = engine.sync_engine

    @event.listens_for(sync, "checkin")
    def _checked_in(_dbapi: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(sync, "checkout")
    def _checked_out(dbapi: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < after:
            return  # a new connection, or one in use a moment ago
        try:
            sync.dialect.do_ping(dbapi)
        except Exception as exc:
            raise DisconnectionError(f"the pooled connection is gone: {exc}") from exc


@dataclass
class DriverWork:
    """One tenant transaction on asyncpg's own connection (`Database.tenant_driver`).

    Statements are asyncpg's (``$1`` parameters, prepared once per connection and cached);
    call `commit()` to keep the writes, anything else rolls back.
    """

    conn: asyncpg.Connection
    committed: bool = False

    async def commit(self) -> None:
        await self.conn.execute("COMMIT")
        self.committed = True


@dataclass
class UnitOfWork:
    """One transaction. Call `commit()` to keep its writes; anything else rolls back."""

    conn: AsyncConnection
    committed: bool = False

    async def commit(self) -> None:
        await self.conn.commit()
        self.committed = True


class Database:
    """The platform's PostgreSQL: an engine plus the two kinds of unit of work."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str, *, pool_size: int = 10) -> Database:
        return cls(make_engine(url, pool_size=pool_size))

    async def dispose(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def platform(self) -> AsyncIterator[UnitOfWork]:
        """A transaction as the platform role."""
        async with self._connect() as conn:
            uow = UnitOfWork(conn)
            await conn.begin()
            try:
                yield uow
            finally:
                if not uow.committed and conn.in_transaction():
                    await conn.rollback()

    @asynccontextmanager
    async def tenant(self, tenant_id: uuid.UUID, slug: str) -> AsyncIterator[UnitOfWork]:
        """A transaction confined to one tenant's role, schema and shared rows."""
        role = tenant_schema(slug)  # validated: lower-case letters, digits, underscores
        tid = str(uuid.UUID(str(tenant_id)))
        async with self._connect() as conn:
            uow = UnitOfWork(conn)
            await conn.begin()
            try:
                # set_config(..., true) is SET LOCAL (``role`` included: the same membership
                # check as SET ROLE); one round trip for the three settings, none of which
                # depends on another.
                await conn.execute(
                    text("SELECT set_config('role', :r, true), set_config('search_path', :p, true),"
                         " set_config('atp.tenant_id', :t, true)"),
                    {"r": role, "p": quote_ident(role), "t": tid})
                yield uow
            finally:
                if not uow.committed and conn.in_transaction():
                    await conn.rollback()

    @asynccontextmanager
    async def tenant_driver(self, tenant_id: uuid.UUID, slug: str) -> AsyncIterator[DriverWork]:
        """`tenant`'s transaction, confined the same way, on the driver's connection.

        For the trading hot path (an order, a fill): ``BEGIN`` and the three settings go
        in one round trip (the simple query protocol takes several statements; the values
        are literals of a validated role name and a parsed UUID), and each statement skips
        SQLAlchemy's layer. Used where a few statements run per transaction, many times
        a second; everything else uses `tenant`.
        """
        role = tenant_schema(slug)
        begin = ("BEGIN; SELECT set_config('role', " + _literal(role) + ", true),"
                 " set_config('search_path', " + _literal(quote_ident(role)) + ", true),"
                 " set_config('atp.tenant_id', " + _literal(str(uuid.UUID(str(tenant_id))))
                 + ", true)")
        async with self._connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")  # no BEGIN of its own
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None
            work = DriverWork(raw)
            try:
                await raw.execute(begin)
                yield work
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
                raise Unavailable("the database connection failed",
                                  code="database_unavailable") from exc
            finally:
                if not work.committed:
                    try:
                        await raw.execute("ROLLBACK")
                    except Exception:  # never hand a connection in an unknown state back
                        await conn.invalidate()

    @asynccontextmanager
    async def _connect(self) -> AsyncIterator[AsyncConnection]:
        conn = self.engine.connect()
        try:
            await conn.start()
        except (OperationalError, OSError, DBAPIError) as exc:
            raise Unavailable("the database cannot be reached", code="database_unavailable") \
                from exc
        try:
            yield conn
        finally:
            await conn.close()

    async def ping(self) -> None:
        """Raise `Unavailable` unless a trivial query succeeds."""
        async with self._connect() as conn:
            await conn.execute(text("SELECT 1"))
            await conn.rollback()


def _literal(value: str) -> str:
    """A SQL string literal (for values already validated: a role name, a UUID)."""
    return "'" + value.replace("'", "''") + "'"


@asynccontextmanager
async def short_lived(url: str | None, *, pool_size: int = 2) -> AsyncIterator[Database]:
    """A database for one command or start-up step, disposed when the block ends."""
    if not url:
        raise Unavailable("no database URL resolved", code="database_unavailable")
    db = Database.from_url(url, pool_size=pool_size)
    try:
        yield db
    finally:
        await db.dispose()


class TenantScoped:
    """Base of repositories that work in one tenant's units of work."""

    def __init__(self, db: Database, tenant_id: uuid.UUID, slug: str) -> None:
        self._db = db
        self._tenant_id = tenant_id
        self._slug = slug

    def _uow(self) -> AbstractAsyncContextManager[UnitOfWork]:
        return self._db.tenant(self._tenant_id, self._slug)
