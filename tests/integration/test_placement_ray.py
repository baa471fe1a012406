"""A plan's worker group on the real session Ray and PostgreSQL: validated by the database,
and a bot whose group has no node fails after a bounded wait instead of hanging."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
import ray
import sqlalchemy.exc
from sqlalchemy import text

from actors.bots import BotSpec, BotStore
from actors.supervisor import start_bot, tenant_usage
from tenancy.db import Database
from tenancy.plans import get_plan
from tenancy.settings import Settings
from tests.conftest import TenantFactory
from trading.errors import Unavailable


async def test_worker_group_column_is_nullable_and_checked(db: Database) -> None:
    async with db.platform() as uow:
        starter = await get_plan(uow.conn, "starter")
    assert starter.worker_group is None
    with pytest.raises(sqlalchemy.exc.IntegrityError, match="plans_worker_group_identifier"):
        async with db.platform() as uow:
            await uow.conn.execute(text(
                "UPDATE platform.plans SET worker_group = 'Bad-Group' WHERE code = 'starter'"))


async def test_a_bot_of_a_group_without_nodes_fails_with_503_and_leaves_no_actor(
        ray_session: None, db: Database, settings: Settings, make_tenant: TenantFactory) -> None:
    async with db.platform() as uow:
        await uow.conn.execute(text(
            "INSERT INTO platform.plans (code, name, max_bots, cpu, memory_bytes, worker_group)"
            " VALUES ('placed-test', 'Placed', 2, 2, 4294967296, 'nowhere')"
            " ON CONFLICT (code) DO NOTHING"))
        await uow.commit()
        plan = await get_plan(uow.conn, "placed-test")
    assert plan.worker_group == "nowhere"
    t = (await make_tenant(plan="placed-test")).tenant
    store = BotStore(db, t.id, t.slug)
    bot = await store.create(BotSpec(name="placed", strategy="sma_crossover", symbols=("BTC-USD",),
                                     capital=Decimal(10_000), num_cpus=0.1, memory_mb=128))
    quick = settings.model_copy(update={"actor_start_seconds": 3.0})
    started = time.monotonic()
    with pytest.raises(Unavailable) as exc:
        await start_bot(quick, db, t.id, t.slug, plan, bot.id)
    assert time.monotonic() - started < 30
    assert exc.value.code == "placement_unavailable"
    assert "dedicated_nowhere" in exc.value.message
    assert (await store.get(bot.id)).status == "error"
    assert "dedicated_nowhere" not in ray.cluster_resources()
    usage = await tenant_usage(t.slug, store)
    assert usage.actors == ()  # nothing left pending or alive for the tenant
