"""The connection pool on real PostgreSQL: a connection that died while idle is replaced."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from sqlalchemy import text

from tenancy import db as dbmod
from tenancy.db import Database


async def _backend_pid(db: Database) -> int:
    async with db.platform() as uow:
        return int((await uow.conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_an_idle_connection_killed_by_the_server_is_pinged_and_replaced(
        db: Database) -> None:
    url = db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    own = Database.from_url(db.engine.url.render_as_string(hide_password=False), pool_size=1)
    try:
        first = await _backend_pid(own)
        assert await _backend_pid(own) == first  # reused at once: no ping, the same backend
        admin = await asyncpg.connect(url)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", first)
        finally:
            await admin.close()
        await asyncio.sleep(dbmod.PING_AFTER_IDLE_SECONDS + 0.2)  # idle past the window
        second = await _backend_pid(own)  # the ping fails; a new connection serves it
        assert second != first
    finally:
        await own.dispose()


async def test_a_connection_back_within_the_window_is_not_pinged(db: Database) -> None:
    own = Database.from_url(db.engine.url.render_as_string(hide_password=False), pool_size=1)
    pings = 0
    dialect = own.engine.sync_engine.dialect
    original = dialect.do_ping

    def counting(dbapi: Any) -> bool:
        nonlocal pings
        pings += 1
        return bool(original(dbapi))

    dialect.do_ping = counting  # type: ignore[method-assign,assignment]
    try:
        for _ in range(5):
            await _backend_pid(own)
        assert pings == 0
        await asyncio.sleep(dbmod.PING_AFTER_IDLE_SECONDS + 0.2)
        await _backend_pid(own)
        assert pings == 1
    finally:
        await own.dispose()
