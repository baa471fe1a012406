"""API calls reach PostgreSQL; with Redis down the gateway keeps serving."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text

from tenancy.db import Database
from tenancy.settings import Settings
from tests.conftest import TenantFactory, wait_for


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _calls(db: Database, tenant_id: object) -> int:
    async with db.platform() as uow:
        return int((await uow.conn.execute(text(
            "SELECT coalesce(sum(calls), 0) FROM platform.api_usage WHERE tenant_id = :t"),
            {"t": tenant_id})).scalar_one())


async def test_api_calls_are_flushed_to_postgres(http: httpx.AsyncClient, db: Database,
                                                 make_tenant: TenantFactory) -> None:
    created = await make_tenant(plan="unmetered")
    for _ in range(7):
        assert (await http.get("/v1/me", headers=bearer(created.api_key))).status_code == 200

    async def flushed() -> bool:
        return await _calls(db, created.tenant.id) == 7

    await wait_for(flushed, timeout=15, interval=0.2)


@pytest.fixture(scope="module")
def no_redis_prefix(gateway_url: str, settings: Settings) -> Iterator[str]:
    """A second gateway app whose Redis is unreachable (a closed port)."""
    from ray import serve

    from serve.app import build_app

    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0",
                                         "redis_timeout_seconds": 0.2})
    serve.run(build_app(broken, num_cpus=0.1), name="gateway-no-redis",
              route_prefix="/no-redis")
    yield "/no-redis"
    serve.delete("gateway-no-redis")


async def test_redis_down_reads_keep_working_and_limits_fall_back(
        http: httpx.AsyncClient, db: Database, make_tenant: TenantFactory,
        no_redis_prefix: str) -> None:
    ready = await http.get(f"{no_redis_prefix}/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "degraded"
    assert ready.json()["checks"]["redis"].startswith("down")

    created = await make_tenant(plan="starter")  # 5/s, burst 10: now enforced per replica
    statuses = [(await http.get(f"{no_redis_prefix}/v1/me",
                                headers=bearer(created.api_key))).status_code
                for _ in range(14)]
    assert statuses[:10] == [200] * 10
    assert 429 in statuses

    ok = statuses.count(200)

    async def counted() -> bool:  # counted in process, written to PostgreSQL directly
        return await _calls(db, created.tenant.id) == ok

    await wait_for(counted, timeout=15, interval=0.2)
