"""Test fixtures: one real PostgreSQL database, Redis and (for e2e) one Ray + Serve session.

Set ``ATP_TEST_DATABASE_URL`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``;
the suite drops and creates its own database, ``ATP_TEST_DB`` or ``atp_test``) and ``ATP_TEST_REDIS_URL``
(default ``redis://127.0.0.1:6379/13``, flushed at the start).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
import redis.asyncio as aioredis
from sqlalchemy import text

from tenancy.db import Database
from tenancy.migrate import migrate_all
from tenancy.settings import Settings, load_settings
from tenancy.tenants import ProvisionedTenant, provision

ADMIN_URL = os.environ.get("ATP_TEST_DATABASE_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
TEST_DB = os.environ.get("ATP_TEST_DB", "atp_test")
REDIS_URL = os.environ.get("ATP_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
ROLE_PREFIX = "tenant_t"  # every test tenant slug starts with "t"


def _url(database: str, driver: str = "postgresql") -> str:
    parts = urllib.parse.urlsplit(ADMIN_URL)
    return urllib.parse.urlunsplit(parts._replace(scheme=driver, path="/" + database))


TEST_DB_URL = _url(TEST_DB)


def random_slug(prefix: str = "t") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


async def _recreate_database() -> None:
    conn = await asyncpg.connect(_url("postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEST_DB}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{TEST_DB}"')
        # Roles are cluster-wide and outlive the dropped database: remove ours.
        for (role,) in await conn.fetch(
                "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", ROLE_PREFIX):
            try:
                await conn.execute(f'DROP ROLE IF EXISTS "{role}"')
            except asyncpg.DependentObjectsStillExistError:
                pass  # belongs to another database on this server
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="atp-test-"))


@pytest.fixture(scope="session")
def settings(data_dir: Path) -> Settings:
    return load_settings(dev_mode=True, data_dir=data_dir, database_url=TEST_DB_URL,
                         redis_url=REDIS_URL, usage_flush_seconds=1.0, auth_cache_seconds=5.0,
                         ray_include_dashboard=False,
                         strategy_modules=("tests.e2e.exploding_strategy",))


@pytest_asyncio.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[Database]:
    await _recreate_database()
    database = Database.from_url(settings.database_url or "", pool_size=5)
    reports = await migrate_all(database)
    assert all(r.error is None for r in reports), reports
    async with database.platform() as uow:
        # Test plans: a tiny monthly allowance, and a generous rate for load.
        await uow.conn.execute(text(
            "INSERT INTO platform.plans (code, name, rate_per_second, burst,"
            " api_calls_per_month) VALUES ('tiny', 'Tiny', 1000, 1000, 3),"
            " ('unmetered', 'Unmetered', 100000, 100000, 1000000000)"))
        await uow.commit()
    yield database
    await database.dispose()


@pytest_asyncio.fixture(scope="session")
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test run (started on first use)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import socket

    import ray

    with socket.socket() as sock:  # the dashboard serves Ray's state API (quota admission)
        sock.bind(("127.0.0.1", 0))
        dashboard_port = int(sock.getsockname()[1])
    ray.init(address="local", num_cpus=4, include_dashboard=True, dashboard_port=dashboard_port,
             log_to_driver=False, _temp_dir=tempfile.mkdtemp(prefix="atpray", dir="/tmp"),
             # workers import test-only strategies (ATP_STRATEGY_MODULES) from the checkout
             runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
    try:
        yield
    finally:
        ray.shutdown()


TenantFactory = Callable[..., Awaitable[ProvisionedTenant]]


@pytest.fixture(scope="session")
def make_tenant(db: Database, settings: Settings) -> TenantFactory:
    """Provision a tenant with a random ``t-…`` slug (override with keyword arguments)."""

    async def factory(**kwargs: object) -> ProvisionedTenant:
        slug = str(kwargs.pop("slug", random_slug()))
        params: dict[str, object] = {"name": f"Tenant {slug}", "plan": "professional",
                                     "email": f"owner-{secrets.token_hex(4)}@example.com", "slug": slug,
                                     "password": "correct horse battery"}
        params.update(kwargs)
        return await provision(db, settings.master_key_bytes, **params)  # type: ignore[arg-type]

    return factory


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0,
                   interval: float = 0.05) -> None:
    """Poll an async predicate until it holds (instead of sleeping a fixed time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await predicate():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


@pytest.fixture(scope="session")
def localstripe() -> Iterator[str]:
    """One localstripe (the Stripe API emulator) for the session; yields its API base URL."""
    from tests.stripe_emulator import LocalStripe

    emulator = LocalStripe().start()
    try:
        yield emulator.url
    finally:
        emulator.stop()
