"""`atp cluster-start`: what a new cluster runs (the RayJob in k8s/templates), as a separate
driver against the session's Ray: the collector, and bots restarted from PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import ray

from actors import supervisor
from actors.bots import BotSpec, BotStore
from actors.tenant_runtime import tenant_namespace
from billing.collector import COLLECTOR_NAME, COLLECTOR_NAMESPACE
from tenancy.db import Database
from tenancy.settings import Settings
from tests.conftest import REDIS_URL, TEST_DB_URL, TenantFactory

pytestmark = pytest.mark.timeout(300)


def _cli(settings: Settings, *args: str, ray_address: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATP_", "RAY_ADDRESS"))}
    env.update({"ATP_DATABASE_URL": TEST_DB_URL, "ATP_REDIS_URL": REDIS_URL, "ATP_DEV_MODE": "1",
                "ATP_DATA_DIR": str(settings.data_dir), "COLUMNS": "200", "RAY_USAGE_STATS_ENABLED": "0"})
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.run([sys.executable, "-m", "serve.cli", "cluster-start", *args], env=env,
                          capture_output=True, text=True, timeout=240)


def _alive(name: str, namespace: str) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return False
    return True


async def test_cluster_start_restarts_a_tenants_bots_and_starts_the_collector(
        gateway_url: str, settings: Settings, db: Database, make_tenant: TenantFactory) -> None:
    created = await make_tenant()
    tenant, slug = created.tenant, created.tenant.slug
    store = BotStore(db, tenant.id, slug)
    bot = await store.create(BotSpec.validate({
        "name": "lost", "strategy": "sma_crossover", "symbols": ["BTC-USD"], "capital": "1000",
        "resources": {"num_cpus": 0.1, "memory_mb": 256}}))
    await store.set_status(bot.id, "running")  # as the store says after its cluster went away
    actor = supervisor.strategy_actor_name(bot.id)
    assert not _alive(actor, tenant_namespace(slug))
    had_collector = _alive(COLLECTOR_NAME, COLLECTOR_NAMESPACE)
    address: Any = ray.get_runtime_context().gcs_address
    try:
        done = _cli(settings, "--tenant", slug, ray_address=address)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"bot {slug}/lost: restarted" in done.stdout, done.stdout
        assert "1 bot(s) restarted" in done.stdout
        assert _alive(actor, tenant_namespace(slug)) and _alive(COLLECTOR_NAME, COLLECTOR_NAMESPACE)
        assert (await store.get(bot.id)).status == "running"
        again = _cli(settings, "--tenant", slug, ray_address=address)  # idempotent
        assert again.returncode == 0 and "0 bot(s) restarted, 0 touched" in again.stdout, again.stdout
        unknown = _cli(settings, "--tenant", "t-nope", ray_address=address)
        assert unknown.returncode == 1 and "--tenant" in unknown.stderr and "t-nope" in unknown.stderr
        nowhere = _cli(settings, ray_address=None)
        assert nowhere.returncode == 2 and "RAY_ADDRESS" in nowhere.stderr, nowhere
    finally:
        await supervisor.stop_bot(settings, db, tenant.id, slug, bot.id)
        if not had_collector and _alive(COLLECTOR_NAME, COLLECTOR_NAMESPACE):
            ray.kill(ray.get_actor(COLLECTOR_NAME, namespace=COLLECTOR_NAMESPACE))  # others make their own
